"""Benchmark: the training stream alone (shuffle + weighted mixing on), from S3 (moto on 127.0.0.1, its own process), as seen by
ranks of a large run, against what a trainer consumes.

Writes two pre-patched datasets of real text straight as Arrow shards (no model): "web", many shards of short
documents cut from prose (/usr/share/doc, man pages), and "code", fewer shards of long ones cut from the Python
standard library's sources; entropies are each byte's bigram surprisal over the corpus (float16, stored like
preprocess stores them) and patches start where it exceeds the quantile that gives ~4.5 bytes per patch. Then runs a sample of the ``--world`` simulated ranks one after another in this
process, each with its own loader (``rank=r, world_size=W``), and prints per rank: time to the first batch
(planning + filling the shuffle buffers) and the steady bytes/s; then the realised mix and a shuffle-quality
figure: the mean distance, in source order, between consecutive training documents of a source, as a fraction
of what a uniformly random order gives (``N/3``): 1.0 = as good as a full random permutation, ~0 = sequential.

Over-read: the same sampled ranks run again (``--read-batches`` batches each, from a fresh process's state: no
cached footers) through a byte-counting HTTP proxy (tests/fault_proxy.py) in front of moto; bytes fetched (response
bodies of the shard objects) / bytes used (what pyarrow itself reads to decode the loader's columns of every
record batch the stream decoded, counted once per batch: metadata message + those columns' buffers). Goal <= 1.1.
Usage: python bench/loader.py [--world 64 --sample 8 --mbytes 48 --seq-len 8192 --batch 4 --seconds 1.5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from entropy import prose_files, read_text, stdlib_dir  # noqa: E402  (bench/entropy.py: the corpus sources)
from fault_proxy import FaultProxy  # noqa: E402

from pipeline.dataset.manifest import Manifest, PatchSetRecord, ShardRecord  # noqa: E402
from pipeline.dataset.shards import ENTROPY_SCHEMA, ShardWriter, entropy_batch, patch_schema  # noqa: E402
from pipeline.io.storage import filesystem, join  # noqa: E402
from pipeline.stream import blocks  # noqa: E402
from pipeline.stream.loader import LoaderConfig, PatchedWindowLoader  # noqa: E402
from pipeline.stream.mixing import SourceSpec, StreamConfig  # noqa: E402

TRAINER_CPU_TINY = 11_000  # bytes/s per worker: bench/train.py, tiny preset on CPU (README / issue notes)
# One H100 (bf16, ~40% of 990 TFLOP/s): ~6 FLOPs per parameter touched per byte. "small" touches ~46M parameters
# per byte (local layers per byte + global layers per 4.5-byte patch) -> ~1.4 MB/s; blt-1b ~2.2 GFLOP/byte
# -> ~0.18 MB/s. Estimates (no GPU here), not measurements.
TRAINER_GPU_SMALL = 1_400_000
TRAINER_GPU_1B = 180_000


def s3_root():
    """moto's S3 server in its own process on 127.0.0.1 (in this process it would compete for the GIL with the
    loader, which real S3 does not)."""
    import socket
    import subprocess

    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and server.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    boto3.client("s3").create_bucket(Bucket="bench")
    return "s3://bench", server


PATCH_BYTES = 4.5  # mean patch size the threshold is chosen for


def real_text(kind: str, total: int) -> bytes:
    """``total`` bytes of prose (/usr/share/doc, man pages) or Python sources, files end to end (<= 256 KB each)."""
    paths = prose_files() if kind == "web" else sorted(stdlib_dir().rglob("*.py"))
    out, size = [], 0
    for path in paths:
        data = read_text(path)[: 256 << 10]
        out.append(data)
        size += len(data)
        if size >= total:
            break
    data = b"".join(out)
    while len(data) < total:  # a small machine: repeat (documents still differ in their cut points)
        data += data
    return data[:total]


def surprisal(data: np.ndarray) -> np.ndarray:
    """Bits of each byte given the previous one (bigram counts over ``data``): a real-text stand-in for the
    entropy model's scores, float16 as stored (``entropies[t]`` scores byte t+1)."""
    pairs = data[:-1].astype(np.int64) * 256 + data[1:]
    counts = np.bincount(pairs, minlength=65536).reshape(256, 256) + 0.01
    probs = counts / counts.sum(axis=1, keepdims=True)
    out = np.zeros(len(data), dtype=np.float32)
    out[:-1] = -np.log2(probs[data[:-1], data[1:]])
    return out.astype(np.float16)


def write_dataset(root: str, name: str, mbytes: float, shards: int, sizes: tuple[int, int], seed: int) -> int:
    """Shards of ~1 MB record batches (as preprocess writes them) of real-text documents, entropies, patches."""
    rng = np.random.default_rng(seed)
    text = np.frombuffer(real_text(name, int(mbytes * 1e6)), dtype=np.uint8)
    scores = surprisal(text)
    threshold = float(np.quantile(scores.astype(np.float32), 1 - 1 / PATCH_BYTES))
    manifest, patch_set, docs_total = Manifest(root=root), PatchSetRecord(params={}), 0
    schema = patch_schema({})
    cursor = 0
    for shard in range(shards):
        lengths = rng.integers(*sizes, size=max(1, int(mbytes * 1e6 / shards / np.mean(sizes))))
        url = f"s3://raw/{name}/{shard:04d}.jsonl"
        ent_rel, pat_rel = f"entropies/{name}-{shard:04d}.arrow", f"patches/p/{name}-{shard:04d}.arrow"
        ent, pat = ShardWriter(join(root, ent_rel), ENTROPY_SCHEMA), ShardWriter(join(root, pat_rel), schema)
        per_batch = max(1, int(1e6 / np.mean(sizes)))
        for first in range(0, len(lengths), per_batch):
            chunk = lengths[first : first + per_batch]
            n = int(chunk.sum())
            if cursor + n > len(text):
                cursor = 0
            raw, ent_raw = text[cursor : cursor + n], scores[cursor : cursor + n]
            cursor += n
            ends = np.cumsum(chunk)
            data = np.split(raw, ends[:-1])
            ids = [f"{name}-{shard}-{first + i}" for i in range(len(chunk))]
            ent.write(entropy_batch(ids, [url] * len(chunk), [0] * len(chunk), [0] * len(chunk),
                                    [d.tobytes() for d in data], ent_raw))
            mask = np.zeros(n + 1, dtype=bool)
            mask[1:] = ent_raw > threshold  # entropies[t] > threshold: byte t+1 starts a patch
            mask[np.concatenate([[0], ends[:-1]])] = True  # documents start patches (bytes 0 and 1)
            mask[np.minimum(np.concatenate([[0], ends[:-1]]) + 1, n)] = True
            mask[ends] = True
            mask[0] = False
            cuts = np.flatnonzero(mask)
            patch_lengths = np.diff(cuts, prepend=0).astype(np.int32)
            per_doc = np.diff(np.searchsorted(cuts, ends, side="right"), prepend=0)
            offsets = np.concatenate([[0], np.cumsum(per_doc)]).astype(np.int64)
            columns = [pa.array(ids, pa.string()), pa.LargeListArray.from_arrays(pa.array(offsets),
                                                                                pa.array(patch_lengths))]
            if "continues" in schema.names:
                columns.append(pa.array(np.zeros(len(chunk), bool)))
            pat.write(pa.record_batch(columns, schema=schema))
        ent.close()
        pat.close()
        nbytes = int(lengths.sum())
        manifest.shards[url] = ShardRecord(url, nbytes, "", ent_rel, len(lengths), nbytes, {}, 0.0)
        patch_set.shards[url] = {"output": pat_rel, "docs": len(lengths), "bytes": nbytes, "patches": 0}
        docs_total += len(lengths)
    manifest.patch_sets["p"] = patch_set
    manifest.default_patch_set = "p"
    manifest.save()
    return docs_total


def fresh_process() -> None:
    """Forget cached footers, as a new rank process starts without them (no-op for a reader without a cache)."""
    ranged = getattr(sys.modules.get("pipeline.stream.ranged"), "IpcFile", None)
    if ranged is not None:
        ranged.clear_cache()


class _Recording:
    """A file wrapper that sums the bytes pyarrow asks for."""

    def __init__(self, handle) -> None:
        self.handle, self.asked = handle, 0

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def read(self, n=-1):
        data = self.handle.read(n)
        self.asked += len(data)
        return data


ENTROPY_COLUMNS, PATCH_COLUMNS = ("doc_id", "part", "bytes"), ("patch_lengths", "continues")


def bytes_used(decoded: set) -> int:
    """What pyarrow reads to decode the loader's columns of each decoded record batch (footer excluded)."""
    total, by_file = 0, {}
    for ent, pat, index in decoded:
        by_file.setdefault(ent, (ENTROPY_COLUMNS, set()))[1].add(index)
        by_file.setdefault(pat, (PATCH_COLUMNS, set()))[1].add(index)
    for url, (columns, indices) in by_file.items():
        fs, path = filesystem(url)
        with fs.open(path, "rb", block_size=1 << 16) as handle:
            recording = _Recording(handle)
            names = pa.ipc.open_file(handle).schema.names
            options = pa.ipc.IpcReadOptions(included_fields=[names.index(c) for c in columns if c in names])
            reader = pa.ipc.open_file(pa.PythonFile(recording, mode="r"), options=options)
            for index in sorted(indices):
                before = recording.asked
                reader.get_batch(index)
                total += recording.asked - before
    return total


def over_read(cfgs: list, batches: int, upstream: str) -> dict:
    """Run each config for ``batches`` batches through a counting proxy; bytes fetched / bytes used."""
    import s3fs

    decoded: set = set()  # of the rank running now (each rank is its own process: counted per rank)
    ahead: set = set()
    per_rank = []
    original, original_ahead = blocks.ShardReader.batch, blocks.ShardReader.read_ahead

    def recording_batch(self, files, index):
        decoded.add((files.entropies, files.patches, index))
        return original(self, files, index)

    def recording_ahead(self, files, start, stop):
        ahead.update((files.entropies, files.patches, i) for i in range(start, stop))
        return original_ahead(self, files, start, stop)

    with FaultProxy(upstream) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        s3fs.S3FileSystem.clear_instance_cache()
        blocks.ShardReader.batch, blocks.ShardReader.read_ahead = recording_batch, recording_ahead
        try:
            for cfg in cfgs:
                fresh_process()
                decoded.clear()
                ahead.clear()
                with PatchedWindowLoader(cfg) as loader:
                    it = iter(loader)
                    for _ in range(batches):
                        next(it)
                    it.close()
                per_rank.append((set(decoded), ahead - decoded))
        finally:
            blocks.ShardReader.batch, blocks.ShardReader.read_ahead = original, original_ahead
            os.environ["AWS_ENDPOINT_URL"] = upstream
            s3fs.S3FileSystem.clear_instance_cache()
        fetched = sum(n for key, n in proxy.bytes_out.items() if key.endswith(".arrow"))
        other = sum(n for key, n in proxy.bytes_out.items() if not key.endswith(".arrow"))
        requests = sum(proxy.requests.values())
    # The rank's next block, read ahead when the run stopped, is needed too (the stream reads it next).
    used = sum(bytes_used(d) for d, _ in per_rank)
    next_block = sum(bytes_used(a) for _, a in per_rank)
    return {"fetched": fetched, "used": used, "next": next_block, "ratio": fetched / max(1, used + next_block),
            "other": other, "requests": requests, "batches": sum(len(d) for d, _ in per_rank)}


def order_index(doc_id: str, per_shard: dict) -> int:
    """Position of a document in its source's sequential (manifest) order."""
    name, shard, row = doc_id.rsplit("-", 2)
    return sum(per_shard[name][: int(shard)]) + int(row)


def run_rank(cfg: LoaderConfig, seconds: float) -> dict:
    fresh_process()
    started = time.perf_counter()
    loader = PatchedWindowLoader(cfg)
    it = iter(loader)
    batch = next(it)
    first = time.perf_counter() - started
    docs = list(zip(batch.doc_sources, batch.doc_ids))
    nbytes, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        batch = next(it)
        nbytes += batch.tokens.numel()
        docs.extend(zip(batch.doc_sources, batch.doc_ids))
    rate = nbytes / (time.perf_counter() - t0)
    it.close()
    return {"first_batch_s": first, "bytes_per_s": rate, "docs": docs, "mix": loader.mix_stats()}


def first_docs(cfg: LoaderConfig, count: int) -> list:
    docs = []
    with PatchedWindowLoader(cfg) as loader:
        for batch in loader:
            docs.extend(zip(batch.doc_sources, batch.doc_ids))
            if len(docs) >= count:
                break
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--world", type=int, default=64)
    parser.add_argument("--sample", type=int, default=8, help="ranks measured (evenly spread over the world)")
    parser.add_argument("--mbytes", type=float, default=48.0)
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=1.5, help="steady-state measurement per rank")
    parser.add_argument("--shuffle-buffer", type=int, default=1024)
    parser.add_argument("--quality-docs", type=int, default=3000)
    parser.add_argument("--local", action="store_true", help="local files instead of moto S3")
    parser.add_argument("--read-batches", type=int, default=60, help="batches per rank in the over-read pass")
    args = parser.parse_args()
    server = None
    with tempfile.TemporaryDirectory() as tmp:
        base = tmp
        if not args.local:
            base, server = s3_root()
        web, code = join(base, "web"), join(base, "code")
        t0 = time.perf_counter()
        web_shards, code_shards = 24, 6
        n_web = write_dataset(web, "web", args.mbytes * 0.75, web_shards, (200, 6000), 1)
        n_code = write_dataset(code, "code", args.mbytes * 0.25, code_shards, (2000, 30000), 2)
        written = time.perf_counter() - t0
        per_shard = {
            "web": [Manifest.load(web).shards[u].docs for u in sorted(Manifest.load(web).shards)],
            "code": [Manifest.load(code).shards[u].docs for u in sorted(Manifest.load(code).shards)],
        }
        stream = StreamConfig(mix=[SourceSpec(web, 0.7, name="web"), SourceSpec(code, 0.3, name="code")],
                              shuffle_buffer=args.shuffle_buffer, seed=1)
        ranks = sorted({int(i * args.world / args.sample) for i in range(args.sample)})
        results = {}
        for rank in ranks:
            cfg = LoaderConfig(None, seq_len=args.seq_len, batch_size=args.batch, rank=rank, world_size=args.world,
                               stream=stream)
            results[rank] = run_rank(cfg, args.seconds)
        reads = None
        if server is not None:
            cfgs = [LoaderConfig(None, seq_len=args.seq_len, batch_size=args.batch, rank=rank,
                                 world_size=args.world, stream=stream) for rank in ranks]
            reads = over_read(cfgs, args.read_batches, os.environ["AWS_ENDPOINT_URL"])
        orders = {}
        for label, shuffle in (("shuffled", True), ("sequential", False)):
            one = LoaderConfig(None, seq_len=args.seq_len, batch_size=args.batch,
                               stream=StreamConfig(mix=stream.mix, shuffle=shuffle, seed=1,
                                                   shuffle_buffer=args.shuffle_buffer))
            orders[label] = first_docs(one, args.quality_docs)
    if server is not None:
        server.terminate()
        server.wait(30)

    def quality(docs: list, name: str, total: int) -> float:
        idx = [order_index(d, per_shard) for s, d in docs if s == name]
        gaps = [abs(a - b) for a, b in zip(idx, idx[1:])]
        return statistics.mean(gaps) / (total / 3) if gaps else float("nan")

    source = "local files" if args.local else "S3 (moto on 127.0.0.1)"
    print(f"stream: 2 real-text datasets (web: prose {n_web} docs / {web_shards} shards, code: stdlib sources {n_code} docs / {code_shards} shards, "
          f"{args.mbytes:.0f} MB, written in {written:.1f}s) from {source}; mix web 0.7 / code 0.3 by bytes; "
          f"shuffle buffer {args.shuffle_buffer} docs/source; batch {args.batch} x {args.seq_len}; "
          f"{len(ranks)} of {args.world} ranks measured one after another")
    print(f"{'rank':>5s} {'first batch':>12s} {'bytes/s':>12s} {'web share (target 0.7)':>23s}")
    for rank, r in results.items():
        print(f"{rank:5d} {r['first_batch_s']:11.2f}s {r['bytes_per_s']:12.0f} {r['mix']['web']['share']:23.3f}")
    print(f"shuffle quality (mean gap between consecutive documents of a source in source order / (N/3); 1.0 = "
          f"random permutation), one rank, first {args.quality_docs} documents:")
    for label, docs in orders.items():
        print(f"  {label:10s} web {quality(docs, 'web', n_web):5.2f}   code {quality(docs, 'code', n_code):5.2f}")
    rates = [r["bytes_per_s"] for r in results.values()]
    slowest = min(rates)
    print(f"slowest rank {slowest / 1e6:.2f} MB/s, median {statistics.median(rates) / 1e6:.2f} MB/s per rank")
    for label, need in (("trainer, tiny preset on CPU (measured, bench/train.py)", TRAINER_CPU_TINY),
                        ("trainer, blt-1b on one H100 (estimate)", TRAINER_GPU_1B),
                        ("trainer, small preset on one H100 (estimate)", TRAINER_GPU_SMALL)):
        print(f"  vs {label:55s} {need / 1e3:8.0f} KB/s: {slowest / need:8.1f}x")
    if reads is not None:
        print(f"over-read ({len(ranks)} ranks x {args.read_batches} batches from a fresh start, counted at a proxy "
              f"in front of moto): {reads['fetched'] / 1e6:.2f} MB of shard bytes fetched / "
              f"({reads['used'] / 1e6:.2f} MB used by {reads['batches']} record-batch pairs decoded + "
              f"{reads['next'] / 1e6:.2f} MB of the next blocks, read ahead) = {reads['ratio']:.3f} "
              f"(goal <= 1.1); {reads['requests']} requests, {reads['other'] / 1e3:.1f} KB of manifests")
    print(json.dumps({"slowest_rank_bytes_per_s": slowest, "median_rank_bytes_per_s": statistics.median(rates),
                      "over_read": reads["ratio"] if reads else None, "vs_cpu_tiny": slowest / TRAINER_CPU_TINY,
                      "vs_h100_blt1b_estimate": slowest / TRAINER_GPU_1B,
                      "vs_h100_small_estimate": slowest / TRAINER_GPU_SMALL}))


if __name__ == "__main__":
    main()
