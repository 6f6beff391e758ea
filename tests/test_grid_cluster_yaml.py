"""cluster/gpu.yaml: valid for the installed Ray's own cluster-config schema (offline), and secure by default."""
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "cluster" / "gpu.yaml"


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load(CONFIG.read_text())


def test_validates_against_rays_schema(config):
    # Ray's validator is a private API of the pinned Ray version; it needs no cloud credentials
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(dict(config)))
    gpu_types = [t for t in config["available_node_types"].values() if t["resources"].get("GPU")]
    assert gpu_types and all(t["min_workers"] == 0 for t in gpu_types)
    assert config["available_node_types"][config["head_node_type"]]["resources"].get("GPU", 0) == 0


def test_a_broken_config_is_rejected(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = dict(config, head_node_type="no.such.type")
    with pytest.raises(ValueError):
        validate_config(prepare_config(broken))


def test_only_ssh_is_open_to_the_world_and_auth_stays_on(config):
    rules = config["provider"]["security_group"]["IpPermissions"]
    for rule in rules:
        world = [r for r in rule.get("IpRanges", []) if r.get("CidrIp") == "0.0.0.0/0"]
        world += [r for r in rule.get("Ipv6Ranges", []) if r.get("CidrIpv6") == "::/0"]
        if world:
            assert (rule["FromPort"], rule["ToPort"], rule["IpProtocol"]) == (22, 22, "tcp"), rule
    commands = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" not in commands and "--dashboard-host=127.0.0.1" in commands
    assert "--ray-client-server-port" not in commands
    text = CONFIG.read_text()
    assert "RAY_AUTH_MODE=disabled" not in text


def test_no_secret_in_the_config():
    text = CONFIG.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # AWS access key ids
    assert not re.search(r"(?i)(wandb_api_key|aws_secret_access_key|aws_session_token)\s*[:=]", text)
    assert not re.search(r"\b[0-9a-f]{40}\b", text)  # W&B API keys are 40 hex characters
