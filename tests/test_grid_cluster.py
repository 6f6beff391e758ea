"""Real multi-node Ray clusters on this machine (`ray start` nodes, each in its own session, SIGKILLed by session
id at the end), set up as cluster/gpu.yaml sets up AWS: token authentication on, the token in ~/.ray/auth_token
of each node (a temporary HOME), Tune's storage in object storage (moto's S3 server on loopback). The grid's
driver runs as a separate process connected to the head, as `ray job submit` runs it."""
import json
import re
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ablate.results import ResultStore
from tests.grid_helpers import Session, free_port, grid_command, text_of_tree, wait_for, write_spec

pytestmark = pytest.mark.cluster

RAY = str(Path(sys.executable).with_name("ray"))
FAST_FAILURE_DETECTION = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
                          "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "500"}
TRAIN = {"eval_every": 1, "batch_size": 128, "ks": [10, 20]}


@pytest.fixture
def s3(tmp_path):
    """An S3 server on loopback with a bucket `grid`; the environment every process of the test gets."""
    pytest.importorskip("moto", reason="moto[server] (dev extra) is needed for the cluster tests' storage")
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket="grid")
    try:
        yield {"env": env, "client": client}
    finally:
        server.stop()


def bucket_bytes(s3) -> bytes:
    blob = bytearray()
    for page in s3["client"].get_paginator("list_objects_v2").paginate(Bucket="grid"):
        for item in page.get("Contents", []):
            blob += s3["client"].get_object(Bucket="grid", Key=item["Key"])["Body"].read()
    return bytes(blob)


def bucket_keys(s3) -> list[str]:
    return [o["Key"] for p in s3["client"].get_paginator("list_objects_v2").paginate(Bucket="grid")
            for o in p.get("Contents", [])]


class RayCluster:
    """A head and worker nodes started with `ray start --block`, all with one HOME holding the Ray token."""

    def __init__(self, root: Path, env: dict):
        self.root, self.port = root, free_port()
        self.home = root / "home"
        (self.home / ".ray").mkdir(parents=True)
        self.token = secrets.token_hex(32)
        (self.home / ".ray" / "auth_token").write_text(self.token)
        self.env = {**env, "HOME": str(self.home), "RAY_AUTH_MODE": "token", "WANDB_MODE": "disabled"}
        self.temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths have a limit
        self.nodes: dict[str, Session] = {}
        self.address = f"127.0.0.1:{self.port}"

    def start(self, name: str, cpus: int, head: bool = False, extra_env: dict | None = None) -> Session:
        where = (["--head", "--port", str(self.port), "--temp-dir", str(self.temp), "--include-dashboard=false"]
                 if head else ["--address", self.address])
        log = self.root / f"{name}.log"
        node = Session([RAY, "start", "--block", "--num-cpus", str(cpus), "--disable-usage-stats", *where,
                        "--resources", json.dumps({f"node_{name}": 1})], log,
                       env={**FAST_FAILURE_DETECTION, **self.env, **(extra_env or {})})
        self.nodes[name] = node
        wait_for(lambda: "Ray runtime started" in log.read_text(), 90, f"node {name}")
        return node

    def driver(self, spec: Path, results, *extra: str, env: dict | None = None) -> Session:
        return Session(grid_command(spec, results, "--address", self.address, *extra), self.root / "driver.log",
                       env={**self.env, **(env or {})})

    def log(self, name: str = "driver") -> str:
        return (self.root / f"{name}.log").read_text()

    def stop(self) -> None:
        for node in reversed(list(self.nodes.values())):
            node.kill()
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path, s3):
    ray_cluster = RayCluster(tmp_path, s3["env"])
    try:
        yield ray_cluster
    finally:
        ray_cluster.stop()


def test_two_node_grid_uses_both_nodes_writes_every_row_and_never_stores_the_token(cluster, s3, tmp_path):
    cluster.start("head", 1, head=True)
    cluster.start("second", 1)  # it joined: the token reached it (a node without it is refused, below)
    # four cells (W&B runs offline on the driver: slow), checkpointed every 5 of their 30 evaluations
    spec = write_spec(tmp_path / "g.yaml", models=["BPR"], conditions=["baseline"], seeds=[0, 1, 2, 3],
                      train={**TRAIN, "epochs": 30, "patience": 30})
    results = tmp_path / "results"
    driver = cluster.driver(spec, results, "--storage", "s3://grid/tune", "--checkpoint-every", "5",
                            env={"WANDB_MODE": "offline"})
    try:
        code = driver.wait(timeout=400)
    finally:
        driver.kill()
    log = cluster.log()
    assert code == 0, log[-3000:]
    rows = ResultStore(results).read()  # written by the driver, from each trial's last report
    assert len(rows) == 4 and rows["key"].is_unique and (rows["status"] == "finished").all()
    assert rows["ray_node"].nunique() == 2, rows["ray_node"].tolist()
    assert (rows["start_epoch"] == 0).all()
    assert "grid: 4 cells, 0 already done, 4 ran, 0 failed" in log
    keys = bucket_keys(s3)
    assert any("/checkpoint_" in k for k in keys) and any(k.endswith("experiment_state.json") or
                                                           "experiment_state" in k for k in keys), keys[:20]
    # the token is in no result, no Tune state (storage), no W&B file (offline runs, config included)
    token, state = cluster.token.encode(), bucket_bytes(s3)
    assert token not in text_of_tree(results) and token not in state
    assert b"ablate_row" not in state and b'"curve"' not in state  # rows went to the results only
    # W&B: each trial's offline run, from its own node, in the storage every node reaches (the results are local)
    assert sum(k.startswith("tune/wandb/offline-run-") and k.endswith(".wandb") for k in keys) == 4, keys[:20]
    assert cluster.token not in (Path(__file__).parents[1] / "cluster" / "gpu.yaml").read_text()


def test_a_node_or_client_without_the_token_is_refused(cluster, tmp_path):
    cluster.start("head", 1, head=True)
    stranger = tmp_path / "stranger"
    (stranger / ".ray").mkdir(parents=True)
    (stranger / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    join = f"import ray; ray.init(address='{cluster.address}'); print('joined')"
    code, text = Session.run([sys.executable, "-c", join], tmp_path / "client.log",
                             env={**cluster.env, "HOME": str(stranger)}, timeout=120)
    assert code != 0 and "joined" not in text, text[-2000:]
    assert "auth" in text.lower() or "token" in text.lower(), text[-2000:]


def test_a_cluster_run_with_local_tune_storage_is_refused_before_any_trial(tmp_path, capsys, monkeypatch):
    from ablate import tune
    from ablate.cli_grid import grid_main

    started = []
    monkeypatch.setattr(tune, "start_ray", lambda *args, **kwargs: started.append(args))
    spec = write_spec(tmp_path / "g.yaml")
    results = tmp_path / "results"
    code = grid_main(["--spec", str(spec), "--results", str(results), "--address", f"127.0.0.1:{free_port()}"])
    text = capsys.readouterr().err
    assert code == 2 and not started, text  # refused before Ray is even reached
    assert "is a local directory" in text and "--storage s3://" in text, text
    assert not results.exists() or not list(results.rglob("*.parquet"))


def test_shared_file_systems_pass_the_storage_check(tmp_path):
    from types import SimpleNamespace

    from ablate.study import StorageError, check_storage

    mounts = [SimpleNamespace(mountpoint="/", fstype="ext4"), SimpleNamespace(mountpoint="/mnt/efs", fstype="nfs4"),
              SimpleNamespace(mountpoint="/mnt/s3", fstype="fuse.mountpoint-s3")]
    for path in ("/mnt/efs/ablate/_tune", "/mnt/s3/ablate"):
        check_storage(path, "auto", mounts)
    check_storage("s3://bucket/ablate/_tune", "auto", mounts)
    check_storage("/home/me/results/_tune", "local", mounts)  # one machine: any directory
    with pytest.raises(StorageError, match="ext4"):
        check_storage("/mnt/efs-not/ablate", "auto", mounts)


def test_preempted_trial_resumes_from_its_checkpoint_with_the_uninterrupted_metrics(cluster, s3, tmp_path):
    """The node running a long trial is killed after the trial's first checkpoints; Tune retries the trial on
    another node, where it continues from its last checkpoint (start epoch > 0) and ends with exactly the
    metrics of the same trial run without interruption."""
    cluster.start("head", 0, head=True)  # no CPU: trials run on the worker nodes only
    workers = [cluster.start("first", 1), cluster.start("second", 1)]
    epochs = 400
    spec = write_spec(tmp_path / "g.yaml", models=["BPR"], conditions=["baseline"], seeds=[0], max_failures=3,
                      train={**TRAIN, "epochs": epochs, "patience": epochs})
    results = tmp_path / "results"
    driver = cluster.driver(spec, results, "--storage", "s3://grid/tune", "--checkpoint-every", "25")
    try:
        def running_on():  # the worker node whose processes include the training trial
            return next((w for w in workers for p in w.members()
                         if "ImplicitFunc.train" in " ".join(_cmdline(p))), None)

        node = wait_for(running_on, 180, "the trial running on a worker node", every=0.2)
        # the second checkpoint is saved after the driver took the report of the first (a trial's report waits for
        # the previous one to be consumed), so Tune knows a checkpoint to restore
        wait_for(lambda: any("/checkpoint_000001/" in k for k in bucket_keys(s3)), 180,
                 "the trial's second checkpoint", every=0.2)
        time.sleep(1.0)
        assert not ResultStore(results).read().shape[0]  # still running
        node.kill()  # the other worker takes the retried trial
        code = driver.wait(timeout=400)
    finally:
        driver.kill()
    log = cluster.log()
    assert code == 0, log[-3000:]
    rows = ResultStore(results).read()
    assert len(rows) == 1 and rows["status"].iloc[0] == "finished"
    row = rows.iloc[0]
    assert 0 < row["start_epoch"] < epochs and row["start_epoch"] % 25 == 0, row["start_epoch"]
    progress = [line for line in log.splitlines() if line.startswith("[grid]")]
    assert row["epochs"] == epochs and re.search(r"\b[1-9]\d* retried", progress[-1]), progress[-1:]
    reference = _uninterrupted(spec)
    metrics = [c for c in reference if c.startswith(("valid_", "test_"))]
    assert {c: row[c] for c in metrics} == {c: reference[c] for c in metrics}
    assert json.loads(row["curve"]) == json.loads(reference["curve"])


def _uninterrupted(spec_path: Path) -> dict:
    """The spec's single trial run here, in one go, with the trial's thread count."""
    import torch

    from ablate.data import load
    from ablate.grid import load_spec
    from ablate.trial import run_trial

    spec = load_spec(spec_path)
    cell = spec.search_cells()[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_trial(load(cell.dataset), cell)
    finally:
        torch.set_num_threads(threads)


def _cmdline(process) -> list[str]:
    try:
        return process.cmdline()
    except Exception:
        return []


def test_the_driver_writes_each_row_once_and_tunes_state_never_holds_it(tiny, tmp_path):
    from ablate.train import TrainConfig
    from ablate.trial import TrialConfig, run_trial
    from ablate.tune import ROW, RowWriter

    row = run_trial(tiny, TrialConfig(model="BPR", train=TrainConfig(epochs=1, ks=(10, 20))))
    writer = RowWriter(str(tmp_path / "results"))
    for attempt in range(2):  # the second: a trial rerun after the driver stopped before saving Tune's state
        result = {"epoch": 0, "done": True, ROW: dict(row)}
        writer.on_trial_result(0, [], None, result)
        assert ROW not in result  # what Tune keeps (last_result, experiment state, loggers) has no row
    rows = ResultStore(tmp_path / "results").read()
    assert len(rows) == 1 and rows["key"].iloc[0] == row["key"]
    assert rows["test_recall@20"].iloc[0] == row["test_recall@20"]
