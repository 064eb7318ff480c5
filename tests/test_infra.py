"""Cluster specs under infra/ are valid and point at real entry points with flags those entry points accept."""

from __future__ import annotations

import importlib
import operator
import re
import shlex
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parent.parent / "infra"
SECRET = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|secretAccessKey", re.IGNORECASE)


def test_aws_cluster_launcher_config():
    spec = yaml.safe_load((INFRA / "ray/cluster-aws.yaml").read_text())
    for key in ("cluster_name", "provider", "head_node_type", "available_node_types", "setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands", "max_workers"):
        assert key in spec, key
    assert spec["provider"]["type"] == "aws" and spec["provider"]["region"]
    types = spec["available_node_types"]
    assert spec["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) > 0 for t in types.values()), "no GPU group for training"
    assert any(t["resources"].get("CPU", 0) > 0 and not t["resources"].get("GPU") for t in types.values())
    for name, node in types.items():
        assert node["node_config"]["InstanceType"], name
        assert "IamInstanceProfile" in node["node_config"], f"{name}: S3 access must come from an instance role"
    assert any("pip install" in c for c in spec["setup_commands"])
    assert not SECRET.search((INFRA / "ray/cluster-aws.yaml").read_text())


def test_kuberay_cluster():
    spec = yaml.safe_load((INFRA / "k8s/raycluster.yaml").read_text())
    assert spec["apiVersion"] == "ray.io/v1" and spec["kind"] == "RayCluster"
    head = spec["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"]
    groups = {g["groupName"]: g for g in spec["spec"]["workerGroupSpecs"]}
    gpu = [g for g in groups.values()
           if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu and len(groups) >= 2
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


@pytest.mark.parametrize("job", ["preprocess", "repatch", "train", "stats"])
def test_rayjob_manifests_run_real_entry_points(job, tmp_path):
    text = (INFRA / f"k8s/rayjob-{job}.yaml").read_text()
    assert not SECRET.search(text)
    config_map, ray_job = list(yaml.safe_load_all(text))
    assert config_map["kind"] == "ConfigMap" and ray_job["kind"] == "RayJob"
    assert ray_job["apiVersion"] == "ray.io/v1"
    argv = shlex.split(ray_job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "-m"] and argv[2] == f"jobs.{job}"
    module = importlib.import_module(argv[2])
    # The job's flags (a --config file from the ConfigMap, mounted at /etc/blt) parse with the real parser.
    mount = ray_job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]
    assert mount["mountPath"] == "/etc/blt"
    config_file = tmp_path / "job.yaml"
    config_file.write_text(config_map["data"]["job.yaml"])
    args = [str(config_file) if a == "/etc/blt/job.yaml" else a for a in argv[3:]]
    from jobs.common import parse_config, yaml_dest

    parser = module.build_parser()
    parsed, _ = parse_config(parser, module.CONFIG, args)
    for key, value in yaml.safe_load(config_map["data"]["job.yaml"]).items():
        assert operator.attrgetter(yaml_dest(parser, key))(parsed) == value, key


def test_local_stack_scripts_exist_and_are_executable():
    for name in ("up.sh", "down.sh"):
        path = INFRA / "local" / name
        assert path.stat().st_mode & 0o111, f"{name} is not executable"
    assert "127.0.0.1" in (INFRA / "local/up.sh").read_text()
