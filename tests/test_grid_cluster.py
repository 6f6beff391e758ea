"""A real two-node Ray cluster on this machine: a head (`ray start --head`) and a second node joining it, each
with one CPU. The grid's driver runs as a separate process connected to the head. Every Ray process a test
starts lives in its own session and is SIGKILLed by session id at the end, whatever happened."""
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import pandas as pd
import pytest

from ablate.results import ResultStore
from tests.grid_helpers import Session, free_port, grid_command, wait_for, write_spec

RAY = str(Path(sys.executable).with_name("ray"))
# token authentication stays on, with a token this test owns (not ~/.ray/auth_token)
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex}
FAST_FAILURE_DETECTION = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
                          "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "500"}


def _node(args: list[str], log: Path) -> Session:
    return Session([RAY, "start", "--block", "--num-cpus", "1", "--disable-usage-stats", *args], log,
                   env={**FAST_FAILURE_DETECTION, **AUTH})


@pytest.fixture
def cluster(tmp_path):
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths have a length limit
    head = _node(["--head", "--port", str(port), "--temp-dir", str(temp), "--include-dashboard=false",
                  "--resources", '{"head_node": 1}'], tmp_path / "head.log")
    worker = None
    try:
        address = f"127.0.0.1:{port}"
        wait_for(lambda: "Ray runtime started" in (tmp_path / "head.log").read_text(), 60, "the head node")
        worker = _node(["--address", address, "--resources", '{"second_node": 1}'], tmp_path / "worker.log")
        wait_for(lambda: "Ray runtime started" in (tmp_path / "worker.log").read_text(), 60, "the second node")
        yield {"address": address, "head": head, "worker": worker, "logs": tmp_path}
    finally:
        if worker is not None:
            worker.kill()
        head.kill()
        shutil.rmtree(temp, ignore_errors=True)


def _driver(cluster, spec: Path, results: Path) -> Session:
    return Session(grid_command(spec, results, "--address", cluster["address"]), cluster["logs"] / "driver.log",
                   env={"WANDB_MODE": "disabled", **AUTH})


def _rows(results: Path) -> pd.DataFrame:
    return ResultStore(results).read()


def test_two_node_grid_uses_both_nodes_and_writes_every_row(cluster, tmp_path):
    spec = write_spec(tmp_path / "g.yaml", train={"epochs": 30, "patience": 30, "batch_size": 128, "ks": [10, 20]})
    results = tmp_path / "results"
    driver = _driver(cluster, spec, results)
    try:
        code = driver.wait(timeout=240)
    finally:
        driver.kill()
    log = (cluster["logs"] / "driver.log").read_text()
    assert code == 0, log[-3000:]
    rows = _rows(results)
    assert len(rows) == 8 and rows["key"].is_unique  # BPR: 2 baselines; VBPR: 3 conditions x 2 seeds
    assert rows["ray_node"].nunique() == 2, rows["ray_node"].tolist()
    assert "grid: 8 cells, 0 already done, 8 ran, 0 failed" in log


def test_killing_the_second_node_mid_grid_still_gives_every_row(cluster, tmp_path):
    spec = write_spec(tmp_path / "g.yaml", train={"epochs": 40, "patience": 40, "batch_size": 128, "ks": [10, 20]},
                      max_failures=3)
    results = tmp_path / "results"
    driver = _driver(cluster, spec, results)
    try:
        worker = cluster["worker"]

        def training_on_worker():  # a Tune trial is executing on the second node
            return any("ImplicitFunc.train" in " ".join(p.cmdline()) for p in worker.members()
                       if _alive(p))

        wait_for(training_on_worker, 120, "a trial running on the second node", every=0.2)
        worker.kill()
        code = driver.wait(timeout=300)
    finally:
        driver.kill()
    log = (cluster["logs"] / "driver.log").read_text()
    assert code == 0, log[-3000:]
    rows = _rows(results)
    assert len(rows) == 8 and rows["key"].is_unique and (rows["status"] == "finished").all()
    assert "retried" in log and not any(" 0 retried" in line for line in log.splitlines()[-40:]
                                        if line.startswith("[grid]") and "8/8 done" in line), log[-3000:]


def _alive(p) -> bool:
    try:
        p.cmdline()
        return True
    except Exception:
        return False
