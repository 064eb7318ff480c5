"""``blt eval``: bits per byte equals HF BltForCausalLM's loss and the training loop's validation; the lm-eval
``blt`` model's log-likelihoods equal sums of HF logits on local task files (offline)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ["HF_DATASETS_OFFLINE"] = "1"  # lm-eval reads the local task files only; never the hub
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="hfds"))

pytest.importorskip("transformers")
from corpus import jsonl_bytes, make_docs, write_object  # noqa: E402
from hf_reference import random_hf_config, random_hf_model  # noqa: E402
from transformers.models.blt.modeling_blt import BltPatcher  # noqa: E402

from jobs.eval import main as eval_main  # noqa: E402
from pipeline.dataset.model_store import save_entropy_model  # noqa: E402
from pipeline.preprocess.config import PreprocessConfig  # noqa: E402
from pipeline.preprocess.driver import run_preprocess  # noqa: E402
from pipeline.stream.blocks import hash_unit  # noqa: E402
from training.evaluate import load  # noqa: E402
from training.scoring import (  # noqa: E402
    DOC_START,
    Document,
    EvalResult,
    Totals,
    as_stored,
    patch_on_the_fly,
    score_documents,
)

REPO = Path(__file__).resolve().parent.parent
TASKS = REPO / "tests" / "data" / "eval_tasks"
SEQ_LEN = 64


def _text() -> bytes:
    for path in (Path("/usr/lib/python3.11/textwrap.py"), Path(os.__file__).parent / "textwrap.py"):
        if path.exists():
            return path.read_bytes()
    raise FileNotFoundError("textwrap.py")


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """(HF BltForCausalLM, its saved directory): random weights, threshold at the median entropy of real text
    (so patches have many lengths)."""
    cfg = random_hf_config(1, cross_attn_k=2)
    hf = random_hf_model(cfg, 1)
    ids = torch.tensor(list(_text()[:2000]), dtype=torch.long)[None] + 4
    with torch.no_grad():
        entropies = hf.model.patcher(ids, patch_size=4, threshold=1.0)[0]
    hf.config.patching_threshold = float(entropies.median())
    path = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(path)
    return hf, str(path)


def hf_doc_lengths(hf, data: bytes) -> torch.Tensor:
    """HF BltPatcher's patch lengths of a document's bytes alone, HF's threshold rule on stored (fp16) scores."""
    if not data:
        return torch.zeros(0, dtype=torch.long)
    ids = torch.tensor(list(data), dtype=torch.long)[None] + 4
    with torch.no_grad():
        entropies = hf.model.patcher(ids, patch_size=4, threshold=1.0)[0]
    lengths = BltPatcher.patch_lengths_from_entropies(as_stored(entropies), ids.shape[1], patch_size=4,
                                                      threshold=hf.config.patching_threshold)[0]
    return lengths[lengths > 0]


@torch.no_grad()
def hf_nats(hf, tokens: torch.Tensor, starts: torch.Tensor, first_target: int, seq_len: int = SEQ_LEN) -> float:
    """-sum log p(tokens[first_target:]) from HF logits, over windows of seq_len + 1 tokens overlapping by one,
    each window given to HF alone with patch lengths from its starts (positions 0 and 1 start patches)."""
    total = 0.0
    for a in range(0, len(tokens) - 1, seq_len):
        w = tokens[a : a + seq_len + 1]
        s = starts[a : a + len(w)].clone()
        s[:2] = True
        first = torch.nonzero(s)[:, 0]
        lengths = torch.diff(first, append=torch.tensor([len(w)]))
        logits = hf(w[None], patch_lengths=lengths[None], use_cache=False).logits[0, :-1].double()
        logp = logits.log_softmax(-1)[torch.arange(len(w) - 1), w[1:]]
        keep = torch.arange(a + 1, a + len(w)) >= first_target
        total -= float(logp[keep].sum())
    return total


def hf_document_nats(hf, data: bytes) -> float:
    lengths = hf_doc_lengths(hf, data)
    tokens = torch.tensor([DOC_START, *[b + 4 for b in data], 2])
    starts = torch.zeros(len(tokens), dtype=torch.bool)
    starts[[0, -1]] = True
    starts[1 + torch.cumsum(lengths, 0) - lengths] = True
    return hf_nats(hf, tokens, starts, 1)


def test_bits_per_byte_equals_hf_loss(hf_model):
    """Whole documents (empty, one byte, several windows long), batched with padding: the per-window sums
    equal HF's; patches equal HF BltPatcher's threshold rule."""
    hf, path = hf_model
    loaded = load(path)
    text = _text()
    docs = [text[i * 500 : i * 500 + n] for i, n in enumerate([0, 1, 7, 63, 64, 65, 150, 300, 33])]
    datas = [np.frombuffer(d, dtype=np.uint8) for d in docs]
    lengths = patch_on_the_fly(loaded.patcher, loaded.patching, datas)
    for data, ours in zip(docs, lengths):
        assert ours.tolist() == hf_doc_lengths(hf, data).tolist()
    result = score_documents(loaded.model, [Document("src", d, lens) for d, lens in zip(datas, lengths)], SEQ_LEN,
                             batch_size=3)
    ref_nats = sum(hf_document_nats(hf, d) for d in docs)
    totals = result.sources["src"]
    assert (totals.documents, totals.bytes, totals.targets) == (len(docs), sum(map(len, docs)),
                                                                 sum(map(len, docs)) + len(docs))
    assert totals.patches == sum(len(x) for x in lengths)
    ref_bpb = ref_nats / math.log(2) / totals.targets
    assert abs(totals.bits_per_byte - ref_bpb) < 1e-4, (totals.bits_per_byte, ref_bpb)
    # The model's loss on one window equals HF BltForCausalLM's own loss (labels shifted inside HF).
    window = torch.tensor([DOC_START, *[b + 4 for b in docs[3]], 2])
    alone = score_documents(loaded.model, [Document("one", datas[3], lengths[3])], SEQ_LEN).sources["one"]
    doc_l = torch.as_tensor(lengths[3], dtype=torch.long)
    hf_loss = hf(window[None], patch_lengths=torch.cat([torch.tensor([1]), doc_l, torch.tensor([1])])[None],
                 labels=window[None], use_cache=False).loss
    assert abs(alone.nats / alone.targets - float(hf_loss.detach())) < 1e-4


def test_results_add_exactly():
    a = EvalResult({"x": Totals(3 << 32, 10, 9, 1, 4), "y": Totals(5, 2, 1, 1, 1)})
    b = EvalResult({"x": Totals(1, 4, 3, 1, 1)})
    total = a + b
    assert total.sources["x"] == Totals((3 << 32) + 1, 14, 12, 2, 5)
    assert total.overall == Totals((3 << 32) + 6, 16, 13, 3, 6)
    assert (a + b).to_dict() == (b + a).to_dict()


@pytest.fixture(scope="module")
def dataset(hf_model, tmp_path_factory):
    """Raw jsonl shards, and the dataset preprocessing makes of them with the model's own patcher and rule."""
    _, path = hf_model
    loaded = load(path)
    root = tmp_path_factory.mktemp("evalds")
    (root / "raw").mkdir()
    records = make_docs(3, 25) + [{"id": "long", "text": _text()[:700].decode()}]
    write_object(f"{root}/raw/a.jsonl", jsonl_bytes(records[:13]))
    write_object(f"{root}/raw/b.jsonl", jsonl_bytes(records[13:]))
    save_entropy_model(loaded.patcher, f"{root}/em")
    run_preprocess(PreprocessConfig(inputs=f"{root}/raw/*.jsonl", output=f"{root}/ds", entropy_model=f"{root}/em",
                                    patching=loaded.patching, use_ray=False))
    return str(root), records


def _eval(argv: list[str], capsys) -> dict:
    capsys.readouterr()
    assert eval_main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_blt_eval_dataset_equals_raw_inputs_patched_on_the_fly(hf_model, dataset, tmp_path, capsys):
    """The stored patch set and on-the-fly patching of the raw files give the same documents, patches and
    bits/byte; --validation-fraction scores exactly the documents the stream's hash holds out."""
    _, path = hf_model
    root, records = dataset
    common = ["--no-ray", "--seq-len", str(SEQ_LEN), "--output", str(tmp_path / "r.json")]
    stored = _eval([path, "--dataset", f"{root}/ds", *common], capsys)["bits_per_byte"]["overall"]
    raw = _eval([path, "--inputs", f"{root}/raw/*.jsonl", *common], capsys)["bits_per_byte"]["overall"]
    for key in ("documents", "bytes", "targets", "patches"):
        assert stored[key] == raw[key]
    assert stored["documents"] == len(records)
    assert abs(stored["bits_per_byte"] - raw["bits_per_byte"]) < 1e-6
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["bits_per_byte"]["overall"] == raw
    held = [r for r in records if hash_unit(7, r["id"]) < 0.4]
    assert 0 < len(held) < len(records)
    part = _eval([path, "--dataset", f"{root}/ds", "--validation-fraction", "0.4", "--validation-seed", "7",
                  *common], capsys)["bits_per_byte"]["overall"]
    assert part["documents"] == len(held)
    assert part["bytes"] == sum(len(r["text"].encode()) for r in held)


def test_val_shards_validation_equals_blt_eval_of_those_shards(hf_model, dataset, tmp_path, capsys):
    """The training loop's ``--val-shards`` figure is the scorer's on the held-out shard's documents."""
    import contextlib

    from pipeline.dataset.manifest import Manifest
    from training.config import TrainConfig
    from training.evaluate import held_out_shards_result

    _, path = hf_model
    root, _ = dataset
    last = sorted(Manifest.load(f"{root}/ds").shards)[-1]
    cfg = TrainConfig(dataset=f"{root}/ds", output=str(tmp_path), seq_len=SEQ_LEN, batch_size=4,
                      eval={"batches": 1000})
    overall = held_out_shards_result(load(path).model, cfg, [last], contextlib.nullcontext).overall
    nats_per_target = overall.nats / overall.targets
    report = _eval([path, "--dataset", f"{root}/ds#{last}", "--no-ray", "--seq-len", str(SEQ_LEN), "--output",
                    str(tmp_path / "r.json")], capsys)["bits_per_byte"]["overall"]
    assert 0 < report["documents"] < 26
    assert abs(nats_per_target / math.log(2) - report["bits_per_byte"]) < 1e-6


def test_blt_eval_wrong_arguments_fail_in_one_line(capsys):
    for argv in ([], ["m"], ["m", "--dataset", "d", "--validation-fraction", "1.5"], ["m", "--seq-len", "x"],
                 ["m", "--tasks", "t", "--limit", "0"]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            eval_main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("blt eval: error:") and "\n" not in err


# ---- lm-eval harness ---------------------------------------------------------------------------------------
def _hf_pair_nats(hf, context: str, continuation: str) -> float:
    data = (context + continuation).encode()
    lengths = hf_doc_lengths(hf, data)
    tokens = torch.tensor([DOC_START, *[b + 4 for b in data]])
    starts = torch.zeros(len(tokens), dtype=torch.bool)
    starts[0] = True
    starts[1 + torch.cumsum(lengths, 0) - lengths] = True
    return hf_nats(hf, tokens, starts, 1 + len(context.encode()))


@torch.no_grad()
def _hf_greedy(hf, prompt: str, steps: int, until: str) -> str:
    """Greedy bytes by full recompute from HF logits over the prompt's bytes (the generator's convention: no
    document-start token), HF's patcher and threshold rule patching the text at each step."""
    data = prompt.encode()
    for _ in range(steps):
        ids = torch.tensor(list(data))[None] + 4
        entropies = hf.model.patcher(ids, patch_size=4, threshold=1.0)[0]
        lengths = BltPatcher.patch_lengths_from_entropies(entropies, ids.shape[1], patch_size=4,
                                                          threshold=hf.config.patching_threshold)
        logits = hf(ids, patch_lengths=lengths, use_cache=False).logits[0, -1].clone()
        logits[:4] = float("-inf")  # the generator produces bytes only
        data += bytes([int(logits.argmax()) - 4])
    return data[len(prompt.encode()):].decode(errors="replace").split(until)[0]


@pytest.mark.timeout(240)
def test_harness_loglikelihoods_equal_hf(hf_model, monkeypatch):
    """lm-eval runs local tasks (multiple choice, rolling log-likelihood, generation) on the ``blt`` model,
    offline; every log-likelihood equals the sum from HF BltForCausalLM's logits."""
    from training.harness import BltLM, run_tasks

    hf, path = hf_model
    monkeypatch.chdir(REPO)  # the task files name their data relative to the repository
    lm = BltLM(loaded=load(path), seq_len=SEQ_LEN, batch_size=4)
    out = run_tasks(lm, ["blt_local_mc", "blt_local_ppl", "blt_local_gen"], str(TASKS), log_samples=True,
                    builtin_tasks=False)
    samples = out["samples"]
    diffs = []
    for sample in samples["blt_local_mc"]:
        for args, resp in zip(sample["arguments"], sample["resps"]):
            context, continuation = args[0], args[1]
            diffs.append(abs(-resp[0][0] - _hf_pair_nats(hf, context, continuation)))
    assert len(diffs) == 13
    for sample in samples["blt_local_ppl"]:
        text = sample["arguments"][0][0]
        data = text.encode()
        lengths = hf_doc_lengths(hf, data)
        tokens = torch.tensor([DOC_START, *[b + 4 for b in data]])
        starts = torch.zeros(len(tokens), dtype=torch.bool)
        starts[0] = True
        starts[1 + torch.cumsum(lengths, 0) - lengths] = True
        diffs.append(abs(-sample["resps"][0][0] - hf_nats(hf, tokens, starts, 1)))
    print(f"harness loglikelihood vs HF: max |diff| = {max(diffs):.3g} nats over {len(diffs)} requests")
    assert max(diffs) < 1e-4
    assert "acc,none" in out["results"]["blt_local_mc"]
    assert "bits_per_byte,none" in out["results"]["blt_local_ppl"]
    for sample in samples["blt_local_gen"]:
        prompt, kwargs = sample["arguments"][0]
        assert sample["resps"][0][0] == _hf_greedy(hf, prompt, kwargs["max_gen_toks"], "\n")


@pytest.mark.timeout(300)
def test_blt_eval_of_a_run_equals_its_training_validation(dataset, tmp_path, capsys, ray_cluster):
    """A briefly trained run: ``blt eval RUN --dataset DS --validation-fraction F`` (Ray, one task per shard)
    reports the run's own final val_bits_per_byte, per source and overall; --no-ray sums to the same."""
    from training.blt_loop import run_training
    from training.config import TrainConfig
    from training.metrics import read_metrics

    root, _ = dataset
    run = str(tmp_path / "run")
    run_training(TrainConfig(dataset=f"{root}/ds", output=run, steps=6, seq_len=SEQ_LEN, batch_size=4, log={"every": 3},
                             eval={"every": 6, "batches": 1000, "validation_fraction": 0.4},
                             cluster={"num_workers": 1}, export_hf=False, checkpoint={"every": 6},
                             stream={"validation_seed": 7}),
                 use_ray=False)
    final = read_metrics(run)[-1]
    argv = [run, "--dataset", f"{root}/ds", "--validation-fraction", "0.4", "--validation-seed", "7",
            "--output", str(tmp_path / "r.json")]  # the window length is the run's own
    on_ray = _eval(argv, capsys)["bits_per_byte"]
    in_process = _eval([*argv, "--no-ray"], capsys)["bits_per_byte"]
    print(f"blt eval {on_ray['overall']['bits_per_byte']:.6f} bits/byte vs training validation "
          f"{final['val_bits_per_byte']:.6f} (step {final['step']}, loss {final['loss']:.4f})")
    assert abs(on_ray["overall"]["bits_per_byte"] - final["val_bits_per_byte"]) < 1e-5
    for name, totals in on_ray["sources"].items():
        assert abs(totals["bits_per_byte"] - final[f"val_bits_per_byte/{name}"]) < 1e-5
    for key in ("documents", "bytes", "targets", "patches"):
        assert on_ray["overall"][key] == in_process["overall"][key]
    assert abs(on_ray["overall"]["bits_per_byte"] - in_process["overall"]["bits_per_byte"]) < 1e-9
