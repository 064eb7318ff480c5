"""Two Ray nodes on one machine (loopback): preprocessing work lands on both, output equals a local run.

One input is a 5-row-group parquet file larger than ``unit_bytes``: its units are scored on both nodes at once,
and their output, joined in unit order, equals processing the file whole."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import ray
    from ray.cluster_utils import Cluster
    from pipeline.dataset.manifest import Manifest
    from pipeline.dataset.manifest import Manifest
    from pipeline.preprocess.config import PreprocessConfig
    from pipeline.preprocess.driver import run_preprocess

    inputs, output, model, unit_bytes = sys.argv[1:5]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address)
    # Each actor asks for 2 CPUs, so the two actors must sit on different nodes.
    manifest = run_preprocess(PreprocessConfig(inputs=inputs, output=output, entropy_model=model, span=64,
                                               num_workers=2, cpus_per_worker=2, unit_bytes=int(unit_bytes)))
    print(json.dumps({key: r.worker for key, r in manifest.shards.items()}))
    ray.shutdown()
    cluster.shutdown()
    """
)


@pytest.mark.timeout(420)
def test_two_nodes_share_the_work_and_match_a_local_run(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object

    from pipeline.dataset.layout import input_url_of
    from pipeline.dataset.manifest import Manifest
    from pipeline.dataset.shards import iter_batches
    from pipeline.io.storage import join
    from pipeline.preprocess.config import PreprocessConfig
    from pipeline.preprocess.driver import run_preprocess

    (tmp_path / "raw").mkdir()
    for shard in range(4):
        write_object(str(tmp_path / "raw" / f"s{shard}.jsonl"), jsonl_bytes(make_docs(shard, 30)))
    book = str(tmp_path / "raw" / "a-book.parquet")  # listed first: its units are the first ones dealt out
    pq.write_table(pa.Table.from_pylist(make_docs(9, 100)), book, row_group_size=20)
    meta = pq.ParquetFile(book).metadata  # units are cut by stored (compressed) row-group bytes
    unit_bytes = min(sum(meta.row_group(g).column(c).total_compressed_size for c in range(meta.num_columns))
                     for g in range(meta.num_row_groups))  # one row group per unit; the jsonl files split too
    save_tiny_entropy_model(str(tmp_path / "em"))
    inputs = str(tmp_path / "raw" / "*")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, inputs, str(tmp_path / "cluster"), str(tmp_path / "em"), str(unit_bytes)],
        capture_output=True, text=True, timeout=360, env={**__import__("os").environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    workers = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(set(workers.values())) == 2
    def units_of(url: str) -> list[str]:  # unit keys of one input, in file order
        keys = [k for k in workers if input_url_of(k) == url]
        return sorted(keys, key=lambda k: int(re.search(r"#(?:rg|b)(\d+)-", k).group(1)) if k != url else 0)

    book_units = units_of(book)
    assert len(book_units) == 5 and len({workers[k] for k in book_units}) == 2  # one file, scored on both nodes
    # Whole files, in this process: the same documents and entropies.
    local = run_preprocess(PreprocessConfig(inputs=inputs, output=str(tmp_path / "local"),
                                            entropy_model=str(tmp_path / "em"), span=64, use_ray=False))
    cluster = str(tmp_path / "cluster")

    def rows(root: str, keys: list[str], records) -> dict:
        out: dict = {"doc_id": [], "bytes": [], "entropies": []}
        for key in keys:
            for batch in iter_batches(join(root, records[key].output), "entropies"):
                for name in out:
                    out[name] += batch.column(name).to_pylist()
        return out

    stored = Manifest.load(cluster).shards
    for key in local.shards:
        whole = rows(str(tmp_path / "local"), [key], local.shards)
        split = rows(cluster, units_of(key), stored)
        assert split["doc_id"] == whole["doc_id"] and split["bytes"] == whole["bytes"]
        for a, b in zip(split["entropies"], whole["entropies"]):
            assert max(abs(x - y) for x, y in zip(a, b)) < 2e-3  # float16 storage of one computation order
