"""Storage faults against the real moto S3 server on loopback (never a mocked filesystem).

* a shard write that fails half-way leaves nothing at its final key (the multipart upload is aborted, not
  completed), and an object already at that key stays as it was;
* a whole preprocess + repatch job whose every S3 request goes through ``FaultProxy`` (13% of requests fail:
  10% answered 500/503, 3% connection resets) finishes with output identical to a clean run.
"""

from __future__ import annotations

import fsspec
import pytest
from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object

from blt_model.patching import PatchingParams
from pipeline.dataset.manifest import Manifest
from pipeline.dataset.shards import iter_batches
from pipeline.io.storage import atomic_open, join
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.driver import run_preprocess
from pipeline.preprocess.repatch import RepatchConfig, run_repatch

ERROR_RATE, RESET_RATE = 0.10, 0.03


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("size", [1000, 12 << 20])  # one part, and several 5 MB parts already uploaded
def test_failed_write_leaves_nothing_at_the_key(bucket, size):
    fs = fsspec.filesystem("s3")
    url = f"{bucket}/out/part-{size}.arrow"  # both sizes share a bucket (its name is cut at 40 chars)
    with pytest.raises(Boom):
        with atomic_open(url) as handle:
            handle.write(b"a" * size)
            handle.flush()
            raise Boom()
    fs.invalidate_cache()
    assert not fs.exists(url)
    name = bucket.removeprefix("s3://")
    uploads = fs.call_s3("list_multipart_uploads", Bucket=name).get("Uploads", [])
    assert not [u for u in uploads if u["Key"].endswith(f"part-{size}.arrow")]  # aborted, not left dangling
    # Overwriting an existing object and failing keeps the old object intact.
    with atomic_open(url) as handle:
        handle.write(b"old")
    with pytest.raises(Boom):
        with atomic_open(url) as handle:
            handle.write(b"b" * size)
            raise Boom()
    fs.invalidate_cache()
    assert fs.cat(url) == b"old"


def _content(root: str) -> dict:
    manifest = Manifest.load(root)
    out = {"totals": manifest.totals(), "default": manifest.default_patch_set, "model": manifest.model_id}
    for key, record in sorted(manifest.shards.items()):
        out[key] = [b.to_pydict() for b in iter_batches(join(root, record.output), "entropies")]
    for name, patch_set in sorted(manifest.patch_sets.items()):
        out[name] = {k: [b.to_pydict() for b in iter_batches(join(root, v["output"]), "patches")]
                     for k, v in sorted(patch_set.shards.items())}
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_job_under_injected_faults_equals_clean_run(bucket, s3_endpoint, monkeypatch):
    import s3fs
    from fault_proxy import FaultProxy

    save_tiny_entropy_model(f"{bucket}/em")
    for shard in range(3):
        write_object(f"{bucket}/raw/s{shard}.jsonl", jsonl_bytes(make_docs(shard, 40)))

    def job(root: str) -> dict:
        cfg = PreprocessConfig(inputs=f"{bucket}/raw/*.jsonl", output=root, entropy_model=f"{bucket}/em", span=64,
                               batch_bytes=1500, use_ray=False)
        run_preprocess(cfg)
        run_repatch(RepatchConfig(root, PatchingParams(threshold=2.0), use_ray=False))
        return _content(root)

    clean = job(f"{bucket}/clean")
    proxy = FaultProxy(s3_endpoint, error_rate=ERROR_RATE, reset_rate=RESET_RATE, max_faults=400,
                       stop_after=240, seed=7)
    with proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            faulty = job(f"{bucket}/faulty")
        finally:
            monkeypatch.undo()
            s3fs.S3FileSystem.clear_instance_cache()
    print(f"fault proxy: {proxy.total_requests} requests, faults {dict(proxy.faults)}")
    assert proxy.faults["error"] >= 5 and proxy.faults["reset"] >= 1, (proxy.total_requests, dict(proxy.faults))
    assert sum(proxy.faults.values()) < 400  # the faults never ran out: the whole job ran under them
    assert faulty == clean
