"""Weighted mixing of datasets and of input-url subsets within one (realised shares within 1% of the targets),
and the document-level validation split (seeded hash, stable, per-source iteration)."""

from __future__ import annotations

import collections
import itertools

import pytest
from patched_datasets import corpus, write_dataset

from pipeline.stream.blocks import hash_unit
from pipeline.stream.loader import LoaderConfig, PatchedWindowLoader
from pipeline.stream.mixing import SourceSpec, StreamConfig, parse_mix


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("mixing")
    shards = {**corpus("en", 2, 40, seed=4, sizes=(5, 90)), **corpus("code", 2, 15, seed=5, sizes=(80, 500))}
    web = write_dataset(str(base / "web"), shards, batch_rows=7)
    books = write_dataset(str(base / "books"), corpus("b", 1, 12, seed=6, sizes=(200, 900)), batch_rows=4)
    return str(base / "web"), str(base / "books"), {**web, **books}


def mixed(specs, weight_by="bytes", windows=3000, **stream):
    ld = PatchedWindowLoader(LoaderConfig(None, seq_len=32, batch_size=20, rank=1, world_size=2,
                                          stream=StreamConfig(mix=specs, weight_by=weight_by, **stream)))
    batches = list(itertools.islice(iter(ld), windows // 20))
    return ld, batches


@pytest.mark.parametrize("weight_by", ["bytes", "documents", "patches"])
def test_realised_shares_stay_within_one_percent(data, weight_by):
    web, books, docs = data
    specs = [SourceSpec(web, 5, include=["*/en/*"], name="en"), SourceSpec(web, 2, include=["s3://raw/code/"],
                                                                             name="code"),
             SourceSpec(books, 3, name="books")]
    ld, batches = mixed(specs, weight_by)
    unit = {"bytes": lambda d: len(d["data"]), "documents": lambda d: 1, "patches": lambda d: len(d["lengths"])}
    totals = collections.Counter()
    for batch in batches:
        for source, doc_id in zip(batch.doc_sources, batch.doc_ids):
            assert doc_id.startswith({"en": "en", "code": "code", "books": "b"}[source])
            totals[source] += unit[weight_by](docs[doc_id])
    total = sum(totals.values())
    stats = ld.mix_stats()
    for name, target in {"en": 0.5, "code": 0.2, "books": 0.3}.items():
        assert abs(totals[name] / total - target) < 0.01, (name, totals[name] / total)
        assert stats[name]["target"] == pytest.approx(target)
        assert stats[name]["share"] == pytest.approx(totals[name] / total)


def test_parse_mix_and_overlap_refused(data):
    web, books, _ = data
    specs = parse_mix([f"{web}#*/en/*=0.7", f"{books}=0.3"])
    assert [(s.dataset, s.include, s.weight) for s in specs] == [(web, ["*/en/*"], 0.7), (books, None, 0.3)]
    with pytest.raises(ValueError, match="two sources"):
        PatchedWindowLoader(LoaderConfig(None, stream=StreamConfig(mix=[SourceSpec(web, 1, name="x"),
                                                                        SourceSpec(web, 1, ["*/en/*"], name="y")])))


def test_validation_split_by_document(data):
    web, books, docs = data
    stream = StreamConfig(mix=[SourceSpec(web, 1, name="web"), SourceSpec(books, 1, name="books")],
                          validation_fraction=0.25, validation_seed=11, shuffle_buffer=4)
    ld = PatchedWindowLoader(LoaderConfig(None, seq_len=32, batch_size=4, stream=stream))
    expected = {d for d in docs if hash_unit(11, d) < 0.25}
    assert 0.15 < len(expected) / len(docs) < 0.35
    trained = set()
    it = iter(ld)
    while min(ld.epochs().values()) < 1:
        trained.update(next(it).doc_ids)
    it.close()
    assert trained.isdisjoint(expected) and trained | expected == set(docs)
    per_source = {}
    for name in ld.validation_sources():
        batches = list(ld.validation(name, batch_size=2))
        per_source[name] = {d for b in batches for d in b.doc_ids}
        assert all(s == name for b in batches for s in b.doc_sources)
        again = list(PatchedWindowLoader(LoaderConfig(None, seq_len=32, batch_size=4, stream=stream))
                     .validation(name, batch_size=2))
        assert [b.tokens.tolist() for b in again] == [b.tokens.tolist() for b in batches]  # stable
    assert per_source["books"] and per_source["web"]
    assert per_source["books"] | per_source["web"] <= expected
    for name, prefix in (("web", ("en", "code")), ("books", ("b",))):
        missing = {d for d in expected if d.startswith(prefix)} - per_source[name]
        assert sum(len(docs[d]["data"]) + 1 for d in missing) <= 33  # only the dropped last partial window
