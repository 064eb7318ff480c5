"""Objects the credentials may not read (S3 403 AccessDenied, through a proxy that denies GET/HEAD on chosen keys).

One denied object is a counted ``access_denied`` skip with its URL and the job finishes (and a re-run retries it);
every object denied stops the job with one line naming the location and the credential source, never the secret.
"""

from __future__ import annotations

import os

import pytest
from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object

from jobs.preprocess import main as preprocess_main
from pipeline.dataset.manifest import Manifest
from pipeline.io.storage import StorageError
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.driver import run_preprocess


@pytest.fixture
def denying_proxy(s3_endpoint, bucket, monkeypatch):
    import s3fs
    from fault_proxy import FaultProxy

    for name in ("a", "b", "c"):
        write_object(f"{bucket}/raw/{name}.jsonl", jsonl_bytes(make_docs(ord(name), 6)))
    save_tiny_entropy_model(f"{bucket}/em")
    with FaultProxy(s3_endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        s3fs.S3FileSystem.clear_instance_cache()
        yield proxy
    s3fs.S3FileSystem.clear_instance_cache()


def _cfg(bucket: str, root: str) -> PreprocessConfig:
    return PreprocessConfig(inputs=f"{bucket}/raw/*.jsonl", output=f"{bucket}/{root}", entropy_model=f"{bucket}/em",
                            span=64, use_ray=False)


def test_one_denied_object_is_a_counted_skip(bucket, denying_proxy):
    denying_proxy.deny = ("raw/b.jsonl",)
    manifest = run_preprocess(_cfg(bucket, "ds"))
    assert denying_proxy.denied >= 1
    assert manifest.totals()["skipped"] == {"access_denied": 1}
    record = manifest.shards[f"{bucket}/raw/b.jsonl"]
    assert record.docs == 0
    assert record.skips["examples"][0]["where"] == f"{bucket}/raw/b.jsonl"
    assert "Access Denied" in record.skips["examples"][0]["detail"]
    assert manifest.shards[f"{bucket}/raw/a.jsonl"].docs == 6 and manifest.shards[f"{bucket}/raw/c.jsonl"].docs == 6
    assert set(manifest.patch_sets[manifest.default_patch_set].shards) == set(manifest.shards)

    denying_proxy.deny = ()  # access granted: the re-run reads the denied object, and only it
    denying_proxy.reset_counts()
    again = run_preprocess(_cfg(bucket, "ds"))
    assert again.totals()["skipped"] == {} and again.shards[f"{bucket}/raw/b.jsonl"].docs == 6
    assert not any("raw/a.jsonl" in p or "raw/c.jsonl" in p for p in denying_proxy.paths)
    assert Manifest.load(f"{bucket}/ds").totals()["docs"] == 18


def test_every_object_denied_stops_with_one_line(bucket, denying_proxy, capsys):
    denying_proxy.deny = (".jsonl",)
    with pytest.raises(StorageError, match="access denied to every object read under"):
        run_preprocess(_cfg(bucket, "ds"))
    rc = preprocess_main(["--inputs", f"{bucket}/raw/*.jsonl", "--output", f"{bucket}/ds2", "--entropy-model",
                          f"{bucket}/em", "--span", "64", "--no-ray"])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert rc == 1 and len(errors) == 1 and errors[0] == err[-1], err
    line = errors[0]
    assert "Traceback" not in "\n".join(err)
    assert f"{bucket}/raw/*.jsonl" in line and "credentials: botocore env" in line, line
    assert os.environ["AWS_ACCESS_KEY_ID"] not in line and os.environ["AWS_SECRET_ACCESS_KEY"] not in line
