"""Long documents stay one document: parts share a doc_id, their entropies and patches equal the whole document's.

A document longer than ``max_doc_bytes`` is stored as consecutive rows (same ``doc_id``, ``part`` 0, 1, 2...).
Checked here: entropies equal one-pass scoring of the whole document (context carried across parts and across
flush batches), and patch lengths joined across parts (merging where ``continues``) equal patching the whole
document at once, for every patching mode, in preprocessing and in ``repatch_shard``.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from corpus import WORDS, jsonl_bytes, save_tiny_entropy_model, write_object
from hypothesis import given, settings
from hypothesis import strategies as st

from blt_model.patching import PATCH_MODES, PatchingParams, patch_lengths_flat
from blt_model.tokens import bytes_to_tokens
from pipeline.dataset.shards import (
    ENTROPY_SCHEMA,
    ShardWriter,
    continues_column,
    entropy_batch,
    iter_batches,
    patch_schema,
)
from pipeline.ingest.readers import ReaderConfig
from pipeline.ingest.work_units import WorkUnit
from pipeline.io.storage import join
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.entropy_stage import ShardProcessor
from pipeline.preprocess.patch_stage import repatch_shard

LIMIT = 300  # max_doc_bytes in the preprocessing tests; the tiny model's receptive field is 30 bytes


def params_for(mode: str, max_len: int | None = None) -> PatchingParams:
    threshold = {"monotonic": 0.4, "threshold_add": 1.5, "threshold_or_rise": 2.5}.get(mode, 2.0)
    return PatchingParams(mode=mode, threshold=threshold, threshold_add=0.5, patch_size=3 if mode != "topk" else 4.5,
                          max_patch_length=max_len)


def whole_document_patches(params: PatchingParams, data: bytes, ent: np.ndarray) -> list[int]:
    offsets = torch.tensor([0, len(data)])
    entropies = torch.from_numpy(ent.astype(np.float32))
    byte_values = torch.from_numpy(np.frombuffer(data, np.uint8).astype(np.int64))
    return patch_lengths_flat(params, offsets, entropies, byte_values)[0].tolist()


def documents(ent_url: str, patch_url: str | None = None) -> list[dict]:
    """Rows joined into documents: bytes, entropies and (when given a patch shard) patches merged at borders."""
    docs: list[dict] = []
    patch_rows = []
    if patch_url is not None:
        for batch in iter_batches(patch_url, "patches"):
            patch_rows += zip(batch.column("patch_lengths").to_pylist(), continues_column(batch).tolist())
    row = 0
    for batch in iter_batches(ent_url, "entropies"):
        for doc_id, part, data, ent in zip(batch.column("doc_id").to_pylist(), batch.column("part").to_pylist(),
                                           batch.column("bytes").to_pylist(), batch.column("entropies").to_pylist()):
            lengths, continues = patch_rows[row] if patch_rows else ([len(data)], False)
            assert sum(lengths) == len(data) and min(lengths) >= 1
            if part == 0:
                assert not continues
                docs.append({"id": doc_id, "bytes": data, "ent": list(ent), "patches": list(lengths), "parts": 1})
            else:
                doc = docs[-1]
                assert doc["id"] == doc_id and doc["parts"] == part  # consecutive parts of one document
                doc["bytes"] += data
                doc["ent"] += ent
                doc["parts"] += 1
                if continues:
                    doc["patches"][-1] += lengths[0]
                    lengths = lengths[1:]
                doc["patches"] += lengths
            row += 1
    assert row == len(patch_rows) or not patch_rows
    return docs


def write_entropy_shard(url: str, rows: list[tuple[str, int, bytes, np.ndarray]], batch_sizes: list[int]) -> None:
    writer = ShardWriter(url, ENTROPY_SCHEMA)
    at = 0
    for size in batch_sizes:
        chunk = rows[at : at + size]
        at += size
        if not chunk:
            continue
        ent = np.concatenate([r[3] for r in chunk]) if chunk else np.zeros(0, np.float16)
        writer.write(entropy_batch([r[0] for r in chunk], ["s"] * len(chunk), [0] * len(chunk),
                                   [r[1] for r in chunk], [r[2] for r in chunk], ent))
    writer.close()


ALPHABET = np.frombuffer(b"ab c,\n\xc3\xa9xyz..!  0", dtype=np.uint8)


@st.composite
def split_corpus(draw):
    limit = draw(st.integers(5, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    lengths = draw(st.lists(st.integers(1, 10 * limit + 3), min_size=1, max_size=6))
    rows, whole = [], []
    for d, n in enumerate(lengths):
        data = ALPHABET[rng.integers(0, len(ALPHABET), n)].tobytes()
        ent = rng.choice(np.array([0.1, 0.5, 1.0, 1.6, 2.2, 3.0, 4.0], np.float16), n)
        whole.append((f"d{d % 3}", data, ent))  # ids repeat across documents: parts are told apart by order
        for part, start in enumerate(range(0, n, limit)):
            rows.append((f"d{d % 3}", part, data[start : start + limit], ent[start : start + limit]))
    cuts = draw(st.lists(st.integers(1, 5), min_size=1, max_size=len(rows)))
    return rows, whole, cuts + [len(rows)]


@settings(max_examples=60, deadline=None)
@given(corpus=split_corpus(), mode=st.sampled_from(PATCH_MODES), max_len=st.sampled_from([None, 2, 5]))
def test_repatch_joins_parts_like_whole_documents(tmp_path_factory, corpus, mode, max_len):
    rows, whole, batch_sizes = corpus
    root = str(tmp_path_factory.mktemp("shard"))
    write_entropy_shard(join(root, "entropies/x.arrow"), rows, batch_sizes)
    params = params_for(mode, max_len)
    result = repatch_shard({"input_url": "x", "entropy_output": "entropies/x.arrow"}, root, params.to_dict())
    docs = documents(join(root, "entropies/x.arrow"), join(root, result["output"]))
    assert len(docs) == len(whole) == result["docs"]
    for doc, (doc_id, data, ent) in zip(docs, whole):
        assert doc["id"] == doc_id and doc["bytes"] == data
        assert doc["patches"] == whole_document_patches(params, data, ent.astype(np.float32)), (mode, max_len)
    assert result["patches"] == sum(len(d["patches"]) for d in docs)


def long_corpus(tmp_path) -> tuple[str, dict[str, bytes]]:
    rng = np.random.default_rng(7)

    def text(n: int) -> str:
        words = []
        while sum(len(w) + 1 for w in words) < n:
            words.append(str(rng.choice(WORDS)))
        return " ".join(words).encode()[:n].decode("utf-8", errors="ignore")

    records = [{"id": "short0", "text": text(90)}, {"id": "long25", "text": text(int(2.5 * LIMIT))},
               {"id": "short1", "text": text(40)}, {"id": "long10", "text": text(10 * LIMIT)},
               {"id": "exact", "text": "e" * LIMIT}, {"id": "short2", "text": text(120)}]
    (tmp_path / "raw").mkdir()
    url = str(tmp_path / "raw" / "long.jsonl")
    write_object(url, jsonl_bytes(records))
    return url, {r["id"]: r["text"].encode() for r in records}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("model") / "em")
    model = save_tiny_entropy_model(url)
    return url, model


@pytest.mark.parametrize("mode", ["entropy", "topk"])
def test_preprocess_long_documents(tmp_path, tiny_model, mode):
    torch.set_num_threads(1)
    model_url, model = tiny_model
    url, texts = long_corpus(tmp_path)
    params = params_for(mode)
    cfg = PreprocessConfig(inputs=url, output=str(tmp_path / "ds"), entropy_model=model_url, patching=params,
                           reader=ReaderConfig(max_doc_bytes=LIMIT), span=64, batch_bytes=LIMIT // 2, use_ray=False)
    size = len(open(url, "rb").read())
    result = ShardProcessor(model_url).process(WorkUnit(url, size, "e").to_dict(), cfg)
    assert result["shard"]["docs"] == len(texts)  # a split document counts once
    assert result["shard"]["skips"]["split_documents"] == 2
    docs = documents(join(cfg.output, result["shard"]["output"]), join(cfg.output, result["patches"]["output"]))
    assert [d["id"] for d in docs] == list(texts)
    assert {d["id"]: d["parts"] for d in docs} == {"short0": 1, "long25": 3, "short1": 1, "long10": 10, "exact": 1,
                                                   "short2": 1}
    for doc in docs:
        data = texts[doc["id"]]
        assert doc["bytes"] == data
        with torch.no_grad():
            reference = model.entropies(bytes_to_tokens(data)[None].long())[0].numpy()
        np.testing.assert_allclose(np.array(doc["ent"], np.float32), reference, atol=4e-3, rtol=2e-3)
        ent = np.array(doc["ent"], np.float32)
        assert doc["patches"] == whole_document_patches(params, data, ent)
    assert result["patches"]["patches"] == sum(len(d["patches"]) for d in docs)
    # Without the carried context the first bytes of later parts score differently: the check above has teeth.
    long10 = texts["long10"]
    with torch.no_grad():
        alone = model.entropies(bytes_to_tokens(long10[LIMIT : 2 * LIMIT])[None].long())[0].numpy()
    whole = next(d for d in docs if d["id"] == "long10")["ent"][LIMIT : 2 * LIMIT]
    assert np.abs(np.array(whole, np.float32) - alone).max() > 0.05

    # Re-patching the stored entropies with every mode joins parts the same way.
    for other in PATCH_MODES:
        params = params_for(other, max_len=6 if other == "entropy" else None)
        out = repatch_shard({"input_url": url, "entropy_output": result["shard"]["output"]}, cfg.output,
                            params.to_dict())
        joined = documents(join(cfg.output, result["shard"]["output"]), join(cfg.output, out["output"]))
        for doc in joined:
            assert doc["patches"] == whole_document_patches(params, doc["bytes"], np.array(doc["ent"], np.float32))


def test_txt_file_document_stays_one(tmp_path, tiny_model):
    model_url, model = tiny_model
    data = ("".join(f"line {i} of a long file\n" for i in range(200))).encode()
    (tmp_path / "raw").mkdir()
    url = str(tmp_path / "raw" / "book.txt")
    write_object(url, data)
    cfg = PreprocessConfig(inputs=url, output=str(tmp_path / "ds"), entropy_model=model_url,
                           reader=ReaderConfig(max_doc_bytes=LIMIT), span=64, batch_bytes=2 * LIMIT, use_ray=False)
    result = ShardProcessor(model_url).process(WorkUnit(url, len(data), "e").to_dict(), cfg)
    docs = documents(join(cfg.output, result["shard"]["output"]), join(cfg.output, result["patches"]["output"]))
    assert len(docs) == 1 and docs[0]["bytes"] == data and docs[0]["parts"] == -(-len(data) // LIMIT)
    with torch.no_grad():
        reference = model.entropies(bytes_to_tokens(data)[None].long())[0].numpy()
    np.testing.assert_allclose(np.array(docs[0]["ent"], np.float32), reference, atol=4e-3, rtol=2e-3)
    assert docs[0]["patches"] == whole_document_patches(cfg.patching, data, np.array(docs[0]["ent"], np.float32))


def test_old_patch_shards_read_continues_as_false(tmp_path):
    old = pa.schema([("doc_id", pa.string()), ("patch_lengths", pa.large_list(pa.int32()))],
                    metadata=patch_schema({}).metadata)
    batch = pa.record_batch([pa.array(["a"]), pa.array([[1, 2]], pa.large_list(pa.int32()))], schema=old)
    assert continues_column(batch).tolist() == [False]
    assert json.loads(patch_schema({"mode": "x"}).metadata[b"params"]) == {"mode": "x"}


@settings(max_examples=60, deadline=None)
@given(corpus=split_corpus(), threshold=st.sampled_from([0.05, 0.5, 1.2, 2.5, 3.5]))
def test_calibration_summary_counts_split_documents_as_whole(tmp_path_factory, corpus, threshold):
    """The exact calibration's histogram predicts the patch count of whole-document patching, parts joined."""
    from pipeline.preprocess.calibrate import count_patches, summarize_shard

    rows, whole, batch_sizes = corpus
    url = join(str(tmp_path_factory.mktemp("shard")), "entropies/x.arrow")
    write_entropy_shard(url, rows, batch_sizes)
    params = PatchingParams(mode="entropy", threshold=threshold)
    summary = summarize_shard(url)
    patterns = np.nonzero(summary.histogram)[0].astype(np.uint16)
    above = int(summary.histogram[patterns[patterns.view(np.float16).astype(np.float64) > threshold]].sum())
    expected = sum(len(whole_document_patches(params, data, ent.astype(np.float32))) for _, data, ent in whole)
    assert summary.forced_patches + above == expected
    assert count_patches(url, params) == (sum(len(d) for _, d, _ in whole), expected)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=12), st.lists(st.integers(1, 30), min_size=1, max_size=8))
def test_loader_join_restores_whole_document_patches(patches, sizes):
    """Cutting whole-document patches at part borders and joining them back is the identity, also when a
    patch spans a whole part (that part's row is one continued patch, and the next row continues it again)."""
    from pipeline.preprocess.patch_stage import cut_patches
    from pipeline.stream.blocks import _join

    total = sum(patches)
    bounds = sorted({b for b in np.cumsum(sizes).tolist() if b < total})
    parts = np.diff([0, *bounds, total]).tolist()
    lengths = np.array(patches, dtype=np.int32)
    cut = cut_patches(lengths, parts)
    data = np.zeros(total, dtype=np.uint8)
    datas = np.split(data, np.cumsum(parts)[:-1])
    doc = _join("d", (0, 0), list(datas), [c[0] for c in cut], [c[1] for c in cut])
    assert doc.lengths.tolist() == patches


def test_loader_join_merges_a_patch_spanning_three_parts():
    from pipeline.stream.blocks import _join

    datas = [np.zeros(4, np.uint8)] * 3
    doc = _join("d", (0, 0), datas, [np.array([2, 2]), np.array([4]), np.array([4])], [False, True, True])
    assert doc.lengths.tolist() == [2, 10]


def test_exact_calibration_of_documents_with_only_forced_starts():
    """Documents of one or two bytes have no score that can start a patch: calibration still answers."""
    from pipeline.preprocess.calibrate import ShardEntropySummary, exact_global_threshold

    summary = ShardEntropySummary(np.zeros(1 << 16, dtype=np.int64), forced_patches=5, total_bytes=7)
    threshold, achieved = exact_global_threshold(summary, 2.0)
    assert np.isfinite(threshold) and achieved == 7 / 5
