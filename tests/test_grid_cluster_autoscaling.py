"""Autoscaling without a cloud: Ray's fake multi-node provider (what `ray.cluster_utils.AutoscalingCluster`
starts) run by the real autoscaler on this machine. The head has no CPU; GPU workers (min 0, max 2) start when
trials asking for half a GPU queue up, every row arrives through the driver, and idle workers are released.

`AutoscalingCluster.start()` itself runs `ray stop --force` (every Ray on the machine) and needs an example
config the wheel does not ship, so the head is started here the same way, with its own port, temp folder,
session and config. The dataset comes from object storage (moto's S3 server), as on a real cluster."""
import json
import time
from pathlib import Path

import pytest

from ablate.data import make_synthetic, write_mmrec
from ablate.results import ResultStore
from tests.grid_helpers import Session, free_port, wait_for, write_spec
from tests.test_grid_cluster import RAY, RayCluster, bucket_keys, s3  # noqa: F401 (fixture)

pytestmark = pytest.mark.cluster


def fake_cluster_config(gcs_address: str) -> dict:
    return {
        "cluster_name": "ablate-autoscaling-test", "max_workers": 2, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            # like cluster/gpu.yaml's worker types: GPU nodes from 0 (fake GPUs: the trials run on CPU)
            "worker.gpu": {"resources": {"CPU": 2, "GPU": 1, "object_store_memory": 200 * 2**20},
                           "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default", "auth": {}, "docker": {}, "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [], "file_mounts": {},
        "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    }


def raylets(session: Session) -> int:
    count = 0
    for process in session.members():
        try:
            count += Path(process.cmdline()[0]).name == "raylet"
        except Exception:
            pass
    return count


def test_autoscaling_cluster_starts_gpu_workers_writes_every_row_and_releases_them(s3, tmp_path):
    cluster = RayCluster(tmp_path, s3["env"])
    config = tmp_path / "autoscaling.json"
    config.write_text(json.dumps(fake_cluster_config(cluster.address)))
    head = Session([RAY, "start", "--block", "--head", "--port", str(cluster.port), "--num-cpus", "0",
                    "--temp-dir", str(cluster.temp), "--include-dashboard=false", "--disable-usage-stats",
                    f"--autoscaling-config={config}"], tmp_path / "head.log",
                   env={**cluster.env, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"})
    cluster.nodes["head"] = head
    try:
        wait_for(lambda: "Ray runtime started" in (tmp_path / "head.log").read_text(), 90, "the head node")
        data = write_mmrec(make_synthetic(n_users=80, n_items=50, text_dim=8, image_dim=8, seed=0), tmp_path / "tiny")
        for path in data.iterdir():
            s3["client"].upload_file(str(path), "grid", f"data/tiny/{path.name}")
        # 4 trials of half a GPU: two per worker node, so the autoscaler starts both workers
        spec = write_spec(tmp_path / "g.yaml", models=["BPR", "VBPR"], conditions=["baseline", "id_only"], seeds=[0],
                          datasets=["tiny"], resources={"cpu": 1, "gpu": 0.5},
                          train={"epochs": 40, "patience": 40, "eval_every": 1, "batch_size": 128, "ks": [10, 20]})
        results = tmp_path / "results"
        driver = cluster.driver(spec, results, "--storage", "s3://grid/tune", "--data-root", "s3://grid/data",
                                "--device", "cpu", env={"ABLATE_DATA_CACHE": str(tmp_path / "cache")})
        workers = 0  # the most worker nodes (raylets besides the head's) seen while the grid ran
        try:
            deadline = time.time() + 600
            while driver.proc.poll() is None and time.time() < deadline:
                workers = max(workers, raylets(head) - 1)
                time.sleep(0.5)
            code = driver.wait(timeout=60)
        finally:
            driver.kill()
        log = cluster.log()
        assert code == 0, log[-3000:]
        rows = ResultStore(results).read()
        assert len(rows) == 3 and rows["key"].is_unique and (rows["status"] == "finished").all()  # BPR: 1 cell
        print(f"worker nodes started: {workers}; nodes that ran trials: {rows['ray_node'].nunique()}")
        # workers were started for the trials (the head has no CPU: it ran none); a worker released while the
        # queue was briefly empty may be replaced, so only "at least one" is certain
        assert workers >= 1 and rows["ray_node"].nunique() >= 1
        # the driver downloaded the dataset once into its cache; trials got it through the object store
        assert len(list((tmp_path / "cache").iterdir())) == 1
        # idle workers are released (idle_timeout_minutes 0.1)
        wait_for(lambda: raylets(head) == 1, 120, "the idle worker nodes to be released")
    finally:
        cluster.stop()
