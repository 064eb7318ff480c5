"""Record batches read by byte range from the IPC footer: equal to pyarrow's reads, and on S3 each batch the
stream needs is fetched once (bytes fetched at a proxy in front of moto / bytes pyarrow needs <= 1.1)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from fault_proxy import FaultProxy
from patched_datasets import corpus, write_dataset

from pipeline.io.storage import filesystem
from pipeline.stream import blocks
from pipeline.stream.loader import LoaderConfig, PatchedWindowLoader
from pipeline.stream.mixing import StreamConfig
from pipeline.stream.ranged import BatchRequest, IpcFile, read_batches

SCHEMA = pa.schema([("id", pa.string()), ("skip", pa.large_list(pa.float16())), ("n", pa.int32()),
                    ("blob", pa.large_binary())])


@pytest.mark.parametrize("compression", ["zstd", None])
def test_ranged_batches_equal_pyarrow(tmp_path, compression):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "f.arrow")
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, SCHEMA, options=pa.ipc.IpcWriteOptions(
            compression=compression)) as writer:
        for b in range(120):  # a footer larger than the first tail guess
            rows = int(rng.integers(1, 20))
            writer.write_batch(pa.record_batch([
                pa.array([f"d{b}-{i}" for i in range(rows)]),
                pa.array([rng.random(int(rng.integers(0, 50))).astype(np.float16) for _ in range(rows)],
                         pa.large_list(pa.float16())),
                pa.array(rng.integers(0, 9, rows), pa.int32()),
                pa.array([rng.bytes(int(rng.integers(0, 300))) for _ in range(rows)], pa.large_binary())],
                schema=SCHEMA))
    IpcFile.clear_cache()
    shard = IpcFile.get(path)
    reference = pa.ipc.open_file(path)
    assert shard.num_batches == reference.num_record_batches == 120 and shard.schema.equals(reference.schema)
    fields = ("id", "n", "blob")
    got = read_batches([BatchRequest(shard, i, fields) for i in (0, 7, 119)] + [BatchRequest(shard, 3, None)])
    for batch, i in zip(got[:3], (0, 7, 119)):
        assert batch.equals(reference.get_batch(i).select(list(fields)))
    assert got[3].equals(reference.get_batch(3))
    assert shard.stats.misses == 0  # pyarrow read nothing outside the planned ranges
    assert IpcFile.get(path) is shard  # the footer is read once


class _Asked:
    """Sums the bytes pyarrow asks a file for."""

    def __init__(self, handle) -> None:
        self.handle, self.asked = handle, 0

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def read(self, n=-1):
        data = self.handle.read(n)
        self.asked += len(data)
        return data


def _needed(keys: set) -> int:
    """What pyarrow itself reads to decode the loader's columns of these (entropy, patch, batch) keys."""
    total = 0
    for url_at, columns in ((0, ("doc_id", "part", "bytes")), (1, ("patch_lengths", "continues"))):
        for key in keys:
            fs, path = filesystem(key[url_at])
            with fs.open(path, "rb") as handle:
                asked = _Asked(handle)
                names = pa.ipc.open_file(handle).schema.names
                options = pa.ipc.IpcReadOptions(included_fields=[names.index(c) for c in columns if c in names])
                reader = pa.ipc.open_file(pa.PythonFile(asked, mode="r"), options=options)
                before = asked.asked
                reader.get_batch(key[2])
                total += asked.asked - before
    return total


@pytest.mark.timeout(120)
def test_stream_fetches_each_batch_once_from_s3(bucket, s3_endpoint, monkeypatch):
    import s3fs

    root = f"{bucket}/ds"
    write_dataset(root, corpus("r", 3, 60, seed=4, sizes=(500, 4000)), batch_rows=12)
    decoded, ahead = set(), set()
    batch, read_ahead = blocks.ShardReader.batch, blocks.ShardReader.read_ahead

    def recording_batch(self, files, index):
        decoded.add((files.entropies, files.patches, index))
        return batch(self, files, index)

    def recording_ahead(self, files, start, stop):
        ahead.update((files.entropies, files.patches, i) for i in range(start, stop))
        return read_ahead(self, files, start, stop)

    monkeypatch.setattr(blocks.ShardReader, "batch", recording_batch)
    monkeypatch.setattr(blocks.ShardReader, "read_ahead", recording_ahead)
    with FaultProxy(s3_endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        s3fs.S3FileSystem.clear_instance_cache()
        IpcFile.clear_cache()
        try:
            with PatchedWindowLoader(LoaderConfig(root, seq_len=256, batch_size=4,
                                                  stream=StreamConfig(shuffle_buffer=16, seed=3))) as loader:
                it = iter(loader)
                for _ in range(200):  # about half the epoch: every batch decoded is needed once
                    next(it)
                it.close()
                assert min(loader.epochs().values()) == 0
        finally:
            monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
            s3fs.S3FileSystem.clear_instance_cache()
            IpcFile.clear_cache()
        fetched = sum(n for key, n in proxy.bytes_out.items() if key.endswith(".arrow"))
    needed = _needed(decoded | ahead)  # the next block, read ahead when the loop stopped, is needed next
    assert len(decoded) >= 8
    assert fetched / needed <= 1.1, (fetched, needed)
