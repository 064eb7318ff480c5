"""Hold a loopback-only Ray cluster (a head plus N worker nodes) until SIGTERM; used by up.sh.

``ray start`` swaps 127.0.0.1 for the machine's outward IP; with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray keeps
every address on loopback, and ``ray.cluster_utils.Cluster`` can still add worker nodes there.
Usage: python cluster.py STATE_DIR --workers N --cpus N --dashboard-port P
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import threading
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ray.cluster_utils import Cluster  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _agent_ports() -> dict:
    """Every node's agents on their own free ports: another Ray instance on this machine may hold the defaults."""
    return {"dashboard_agent_listen_port": _free_port(), "metrics_export_port": _free_port(),
            "runtime_env_agent_port": _free_port()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("state")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--cpus", type=int, default=4)
    parser.add_argument("--dashboard-port", type=int, required=True)
    parser.add_argument("--temp-dir", required=True)
    args = parser.parse_args()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": args.cpus, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": args.dashboard_port, "temp_dir": args.temp_dir, **_agent_ports(),
    })
    for _ in range(args.workers):
        # Same temp dir on every node: a job supervisor finds its GCS through <temp_dir>/ray_current_cluster,
        # and under the default /tmp/ray that may name another cluster on this machine.
        cluster.add_node(num_cpus=args.cpus, temp_dir=args.temp_dir, **_agent_ports())
    cluster.wait_for_nodes()
    # A job supervisor resolves its own cluster from <temp_dir>/ray_current_cluster; cluster_utils writes that file
    # only under the default /tmp/ray, and without it Ray picks *any* GCS it finds in `ps` (another cluster's).
    Path(args.temp_dir, "ray_current_cluster").write_text(cluster.address)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    Path(args.state, "cluster.json").write_text(json.dumps({"gcs": cluster.address, "nodes": 1 + args.workers}))
    stop.wait()
    cluster.shutdown()


if __name__ == "__main__":
    main()
