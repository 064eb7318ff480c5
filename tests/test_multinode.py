"""Two Ray nodes on one machine (loopback): preprocessing work lands on both, output equals a local run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import ray
    from ray.cluster_utils import Cluster
    from pipeline.preprocess import PreprocessConfig, run_preprocess

    inputs, output, model = sys.argv[1:4]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address)
    # Each actor asks for 2 CPUs, so the two actors must sit on different nodes.
    manifest = run_preprocess(PreprocessConfig(inputs=inputs, output=output, entropy_model=model, span=64,
                                               num_workers=2, cpus_per_worker=2))
    print(json.dumps(sorted({r.worker for r in manifest.shards.values()})))
    ray.shutdown()
    cluster.shutdown()
    """
)


@pytest.mark.timeout(240)
def test_two_nodes_share_the_work_and_match_a_local_run(tmp_path):
    from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object

    from pipeline.preprocess import PreprocessConfig, run_preprocess
    from pipeline.shards import iter_batches
    from pipeline.storage import join

    (tmp_path / "raw").mkdir()
    for shard in range(4):
        write_object(str(tmp_path / "raw" / f"s{shard}.jsonl"), jsonl_bytes(make_docs(shard, 30)))
    save_tiny_entropy_model(str(tmp_path / "em"))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "raw" / "*.jsonl"), str(tmp_path / "cluster"),
         str(tmp_path / "em")],
        capture_output=True, text=True, timeout=220, env={**__import__("os").environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    workers = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(workers) == 2
    local = run_preprocess(PreprocessConfig(inputs=str(tmp_path / "raw" / "*.jsonl"), output=str(tmp_path / "local"),
                                            entropy_model=str(tmp_path / "em"), span=64, use_ray=False))
    for record in local.shards.values():
        a = [b.to_pydict() for b in iter_batches(join(str(tmp_path / "local"), record.output), "entropies")]
        b = [b.to_pydict() for b in iter_batches(join(str(tmp_path / "cluster"), record.output), "entropies")]
        assert a == b
