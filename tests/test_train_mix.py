"""`blt train --mix`: two datasets mixed by weight, document-level validation per source, shares in the metrics."""

from __future__ import annotations

import math

import pytest
from patched_datasets import corpus, write_dataset

from jobs.train import main as train_main
from training.metrics import read_metrics


@pytest.mark.timeout(240)
def test_blt_train_mixes_two_datasets_and_validates_each(tmp_path):
    web, books = str(tmp_path / "web"), str(tmp_path / "books")
    write_dataset(web, corpus("en", 2, 60, seed=4, sizes=(20, 120)), batch_rows=6)
    write_dataset(books, corpus("b", 1, 40, seed=6, sizes=(50, 200)), batch_rows=4)
    out = str(tmp_path / "run")
    assert train_main(["--mix", f"{web}=0.75", "--mix", f"{books}=0.25", "--output", out, "--no-ray",
                       "--preset", "tiny", "--steps", "8", "--seq-len", "64", "--batch-size", "8", "--log-every", "4",
                       "--eval-every", "8", "--eval-batches", "2", "--stream.validation-fraction", "0.2",
                       "--checkpoint.every", "8", "--no-export-hf"]) == 0
    last = read_metrics(out)[-1]
    shares = {k.split("/", 1)[1]: v for k, v in last.items() if k.startswith("mix_share/")}
    assert set(shares) == {"web", "books"}
    # ~4 KB trained; documents of at most 200 bytes: the realised share is within a document or two of the target
    assert shares["web"] == pytest.approx(0.75, abs=0.06) and shares["books"] == pytest.approx(0.25, abs=0.06)
    for name in ("web", "books"):  # per-source validation on held-out documents
        assert math.isfinite(last[f"val_bits_per_byte/{name}"]) and last[f"val_bits_per_byte/{name}"] > 0
    assert min(last["val_bits_per_byte/web"], last["val_bits_per_byte/books"]) <= last["val_bits_per_byte"] \
        <= max(last["val_bits_per_byte/web"], last["val_bits_per_byte/books"])
