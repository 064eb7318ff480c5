"""Shared fixtures: a real S3 server (moto) on loopback, and a local Ray cluster bound to 127.0.0.1."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests import their helpers (hf_reference, corpus) by module name.
sys.path.insert(0, str(Path(__file__).parent))
from ports import free_port  # noqa: E402

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
TEST_KEY_ID = "AKIABLTTESTKEYQ7Z3X9"
TEST_SECRET = "bltTestSecret+Wq8r/Zt5Yv2Np4Lk7Hj1Gf3Dd6Ss9Aa0"
# Keep every Ray address on 127.0.0.1 (Ray otherwise replaces loopback with the machine's outward IP).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1, reached through s3fs exactly as production reaches AWS/MinIO."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({
        # Distinctive values (moto accepts any): tests search everything the jobs wrote for them.
        "AWS_ACCESS_KEY_ID": TEST_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    })
    yield endpoint
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, request):
    """A fresh bucket per test; returns its s3:// URL."""
    import boto3
    import fsspec

    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    fsspec.filesystem("s3").invalidate_cache()
    return f"s3://{name}"


@pytest.fixture(scope="module")
def ray_cluster(s3_endpoint):
    """A local Ray cluster on loopback for one test module, with logical CPUs declared (2 physical cores must not
    starve Ray tasks).

    One per module, not per session: a driver whose Ray Train controller had ended was seen to stop getting actor
    state updates from the GCS (actors it created later never turned ALIVE to it, and their tasks waited forever),
    so no module runs on what an earlier module left behind. A cluster a test started without this fixture (a job
    calling ``ray_runtime.connect``) is shut down first for the same reason."""
    import shutil
    import tempfile

    import ray

    if ray.is_initialized():
        ray.shutdown()
    # Its own temp dir: a cluster under the default /tmp/ray becomes the "auto" address that job supervisors of
    # other local clusters (the infra/local stack) may resolve to.
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    ray.init(num_cpus=8, include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False,
             _temp_dir=temp_dir)
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """The slow tier (``pytest -m 'not slow'`` skips it): tests that need the Ray cluster, and tests that
    declare a timeout of two minutes or more (subprocess jobs, their own clusters)."""
    for item in items:
        timeout = item.get_closest_marker("timeout")
        long_timeout = bool(timeout and timeout.args and timeout.args[0] >= 120)
        if "ray_cluster" in getattr(item, "fixturenames", ()) or long_timeout:
            item.add_marker(pytest.mark.slow)
