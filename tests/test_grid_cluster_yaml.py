"""cluster/gpu.yaml, offline: Ray's own AWS bootstrap (what `ray up` runs first) accepts it against moto's
mocked AWS; it pins an image of the installed Ray, gives every node type an instance profile, opens only SSH to
the world, turns token authentication on with the token reaching every node, and sends only the project."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "cluster" / "gpu.yaml"
IAM = ROOT / "cluster" / "iam"
PY = f"py{sys.version_info.major}{sys.version_info.minor}"


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
    broken = dict(config, head_node_type="no.such.type")
    with pytest.raises(ValueError):
        validate_config(prepare_config(broken))


@pytest.fixture(scope="module")
def bootstrapped(config, tmp_path_factory):
    """Ray's AWS bootstrap of the YAML inside moto's mock_aws; returns (bootstrapped config, ec2 client)."""
    moto = pytest.importorskip("moto", reason="moto (dev extra) is needed to run Ray's AWS bootstrap offline")
    import boto3
    from ray.autoscaler._private.aws import config as aws_config
    from ray.autoscaler._private.util import prepare_config

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))  # the bootstrap writes a key under ~/.ssh
        monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(name, "testing")
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
        monkeypatch.setattr(aws_config.time, "sleep", lambda seconds: None)  # IAM propagation waits
        with moto.mock_aws():
            out = aws_config.bootstrap_aws(prepare_config(dict(config)))
            yield out, boto3.client("ec2", region_name=config["provider"]["region"])


def test_rays_aws_bootstrap_accepts_it(bootstrapped, config):
    out, ec2 = bootstrapped
    groups = {g["GroupId"]: g for g in ec2.describe_security_groups()["SecurityGroups"]}
    ours = [g for g in groups.values() if g["GroupName"] == config["provider"]["security_group"]["GroupName"]]
    assert len(ours) == 1
    for node_type in out["available_node_types"].values():
        assert node_type["node_config"]["SecurityGroupIds"] == [ours[0]["GroupId"]]
    # only SSH is open to the world; everything else is open only inside the group
    world = [(r["IpProtocol"], r.get("FromPort"), r.get("ToPort")) for r in ours[0]["IpPermissions"]
             if any(x["CidrIp"] == "0.0.0.0/0" for x in r.get("IpRanges", []))
             or any(x["CidrIpv6"] == "::/0" for x in r.get("Ipv6Ranges", []))]
    assert world == [("tcp", 22, 22)]
    others = [r for r in ours[0]["IpPermissions"] if r.get("FromPort") != 22]
    assert others and all(not r.get("IpRanges") and r["UserIdGroupPairs"] for r in others)


def test_every_node_type_has_a_pinned_image_and_an_instance_profile(bootstrapped, config):
    from ray.autoscaler._private.aws.config import DEFAULT_AMI

    out, _ = bootstrapped
    docker = config["docker"]
    for image in (docker["head_image"], docker["worker_image"]):
        assert image.startswith(f"rayproject/ray:{ray.__version__}-{PY}-"), image  # the installed Ray's image
    assert docker["head_image"].endswith("-cpu") and docker["worker_image"].endswith("-gpu")
    for name, node_type in out["available_node_types"].items():
        node = node_type["node_config"]
        assert node["ImageId"] not in DEFAULT_AMI.values(), name  # never Ray's Ubuntu 18.04 default
        assert node["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert {t["node_config"]["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1] for t in workers} == {"ablate-worker"}


def test_the_instance_profiles_give_workers_s3_only(tmp_path, monkeypatch, config):
    """The README's IAM steps, run against moto: the policies are valid, workers get S3 on the bucket and
    nothing else, and the head may hand the workers their role."""
    moto = pytest.importorskip("moto", reason="moto (dev extra) is needed for the IAM check")
    import boto3

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    trust = (IAM / "ec2-trust.json").read_text()
    with moto.mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        for role in ("ablate-head", "ablate-worker"):
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust)
            policy = (IAM / f"{role.split('-')[1]}-policy.json").read_text()
            iam.put_role_policy(RoleName=role, PolicyName=role, PolicyDocument=policy)
            iam.create_instance_profile(InstanceProfileName=role)
            iam.add_role_to_instance_profile(InstanceProfileName=role, RoleName=role)
        arns = {p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]}
    used = {t["node_config"]["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1]
            for t in config["available_node_types"].values()}
    assert used == arns
    worker = json.loads((IAM / "worker-policy.json").read_text())
    actions = {a for s in worker["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert actions and all(a.startswith("s3:") for a in actions)
    assert all(s["Resource"].startswith("arn:aws:s3:::YOUR-BUCKET") for s in worker["Statement"])
    head = json.loads((IAM / "head-policy.json").read_text())
    passes = [s for s in head["Statement"] if s["Action"] == "iam:PassRole"]
    assert passes and passes[0]["Resource"].endswith(":role/ablate-worker")


def test_token_auth_is_on_on_every_node_and_the_token_is_a_file_mount(config):
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        starts = [c for c in commands if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "--ray-client-server-port" not in head
    # the token travels from the user's ~/.ray/auth_token to Ray's default token path in each container
    mounts = config["file_mounts"]
    assert mounts["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("test -s ~/.ray/auth_token" in c for c in config["setup_commands"])  # no token: setup stops


def test_no_secret_in_the_config_or_the_policies():
    for path in [CONFIG, *IAM.glob("*.json")]:
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), path  # AWS access key ids
        assert not re.search(r"(?i)(wandb_api_key|aws_secret_access_key|aws_session_token|ray_auth_token)\s*[:=]",
                             text), path
        assert not re.search(r"\b[0-9a-f]{32,}\b", text), path  # W&B keys (40 hex), Ray tokens (32+ hex)


def test_setup_installs_the_cuda_build_of_torch_with_the_images_pip(config):
    setup = config["setup_commands"]
    assert all(not re.match(r"\s*pip3? ", c) for c in setup)  # `python -m pip`: the container's Python
    torch_install = [c for c in setup if '"torch==' in c]
    assert torch_install and "--index-url https://pypi.org/simple" in torch_install[0]
    assert any("torch.version.cuda" in c for c in setup)  # a CPU build would stop the setup
    installed = __import__("torch").__version__.split("+")[0]
    assert f'"torch=={installed}"' in torch_install[0]  # the version the project is tested with here
    assert any(f'"ray[default,tune]=={ray.__version__}"' in c for c in setup)


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed (apt-get install rsync)")
def test_only_the_project_travels(config, tmp_path):
    """rsync with exactly the arguments Ray's command runner builds from the YAML, as a dry run over a
    checkout holding a virtual environment, git history, data, results, a report and W&B files."""
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    source = tmp_path / "checkout"
    shutil.copy(ROOT / ".gitignore", source.mkdir() or source / ".gitignore")
    files = ["ablate/train.py", "cluster/gpu.yaml", "experiments/full_grid.py", "tests/test_x.py", "README.md",
             "pyproject.toml", ".venv/bin/python", ".git/HEAD", "data/baby/baby.inter", "results/part-a.parquet",
             "report/index.html", "wandb/run-1/files", "ablate/__pycache__/train.cpython-311.pyc",
             "ablate.egg-info/PKG-INFO", ".pytest_cache/v/cache"]
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text("x")
    args = SSHCommandRunner._create_rsync_filter_args(None, config)
    listing = subprocess.run(["rsync", "-a", "-n", "--out-format=%n", *args, f"{source}/", str(tmp_path / "to")],
                             capture_output=True, text=True, check=True).stdout.split()
    sent = {name for name in listing if not name.endswith("/")}
    assert sent == {".gitignore", "ablate/train.py", "cluster/gpu.yaml", "experiments/full_grid.py",
                    "tests/test_x.py", "README.md", "pyproject.toml"}


def test_the_readme_cluster_section_matches_the_yaml(config):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Running on a GPU cluster"):readme.index("## Report and feature analysis")]
    docker = config["docker"]
    assert f"`{docker['head_image']}`" in section and "`-gpu` on the workers" in section
    types = config["available_node_types"]
    for name, node_type in types.items():
        assert node_type["node_config"]["InstanceType"] in section, name  # each priced in the cost paragraph
    workers = {n: t for n, t in types.items() if n != config["head_node_type"]}
    assert f"at most {config['max_workers']} in all" in section
    assert f"at most {workers['worker.a10g']['max_workers']} A10G" in section
    assert f"after {config['idle_timeout_minutes']} idle minutes" in section
    assert f"group `{config['provider']['security_group']['GroupName']}`" in section
    from ablate.cli_grid import add_grid_arguments
    import argparse

    defaults = add_grid_arguments(argparse.ArgumentParser()).parse_args([])
    assert f"Every {defaults.checkpoint_every} evaluations\n   (`--checkpoint-every`)" in section
    for role in ("head", "worker"):
        assert f"cluster/iam/$role-policy.json" in section and (IAM / f"{role}-policy.json").exists()
    assert "RAY_AUTH_MODE=token" in section and "ray get-auth-token --generate" in section
