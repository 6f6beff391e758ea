"""The cloud path for real: results and Tune's storage on s3:// against an S3-compatible server on loopback
(moto in server mode), then every row read back."""
import pytest

from ablate.results import ResultStore
from tests.grid_helpers import Session, free_port, grid_command, write_spec

moto = pytest.importorskip("moto", reason="moto[server] (dev extra) is needed for the S3 test")


def test_grid_with_results_and_tune_storage_on_s3(tmp_path, monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "WANDB_MODE": "disabled"}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="grid")
        spec = write_spec(tmp_path / "g.yaml", models=["BPR", "VBPR"], conditions=["baseline", "id_only"], seeds=[0])
        code, log = Session.run(grid_command(spec, "s3://grid/ablate", "--num-cpus", "2"), tmp_path / "driver.log",
                                env=env)
        assert code == 0, log[-3000:]
        rows = ResultStore("s3://grid/ablate").read()
        assert len(rows) == 3 and rows["key"].is_unique and (rows["status"] == "finished").all()
        listing = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).list_objects_v2(
            Bucket="grid", Prefix="ablate/_tune/tiny/")
        names = [o["Key"] for o in listing.get("Contents", [])]
        assert any(n.endswith("experiment_state.json") or "experiment_state" in n for n in names), names[:20]
    finally:
        server.stop()
