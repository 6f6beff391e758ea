"""The grid engine's bookkeeping at scale: N cells of a null trial (it trains nothing and writes a real row)
through the real engine (`ablate.tune.run_grid`: Tune, the results store), with local storage and with S3 (a moto server
on loopback, in its own process, counting the LIST requests it serves).

    python benchmarks/grid_scale.py --cells 250 500 1000 2000 [--storage local s3] [--cpus 2]

Each (N, storage) runs in a fresh driver process. Per cell: the driver's CPU time during the grid (all its
threads; the null trials run in Ray's worker processes, the S3 server in another process), the wall time,
and the listings of the results folder (local: counted in the driver, where every listing happens; the trials
only look up their own file; S3: LIST requests under the results prefix, from every process). Peak RSS is
the driver's. The last line is the largest N, each figure the worse of the storages run:

    cells=N driver_ms_per_cell=X store_lists_per_cell=Y driver_peak_mb=Z
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = "synthetic:n_users=40,n_items=30,text_dim=4,image_dim=4,seed=0"


def null_run_trial(data, cell, **trial_options) -> dict:
    """A finished row for `cell` without training: the bookkeeping's cost alone."""
    import torch

    from ablate.train import FitResult
    from ablate.trial import make_row

    metrics = {f"{m}@{k}": 0.1 for m in ("recall", "ndcg", "precision", "map") for k in cell.train.ks}
    result = FitResult(best_epoch=0, epochs=1, valid=metrics, test=metrics, curve=[{"epoch": 0, "loss": 1.0}])
    return make_row(cell, data, result, torch.device("cpu"), 0.0)


SERVER = r"""
import json, sys
from urllib.parse import parse_qs
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

counts = {}
app = DomainDispatcherApplication(create_backend_app)

def counting(environ, start_response):
    path, query = environ.get("PATH_INFO", ""), parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/__counts":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(counts).encode()]
    if environ["REQUEST_METHOD"] == "GET" and path.strip("/").count("/") == 0 and (
            "list-type" in query or "prefix" in query or "delimiter" in query):
        prefix = query.get("prefix", [""])[0]
        counts[prefix] = counts.get(prefix, 0) + 1
    return app(environ, start_response)

make_server("127.0.0.1", int(sys.argv[1]), counting, threaded=True).serve_forever()
"""


def one(cells: int, storage: str, cpus: int) -> dict:
    """Runs in a fresh process: one grid of `cells` null trials; returns its figures."""
    os.environ["WANDB_MODE"] = "disabled"
    from ablate.grid import GridSpec, HParamSearch
    from ablate.results import ResultStore
    from ablate.tune import run_grid, start_ray

    server = None
    with tempfile.TemporaryDirectory() as tmp:
        if storage == "s3":
            from tests.grid_helpers import free_port

            port = free_port()
            server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            endpoint = f"http://127.0.0.1:{port}"
            os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"{endpoint}/__counts", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            import boto3

            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="scale")
            results, tune_storage = "s3://scale/ablate/results", "s3://scale/ablate/_tune"
        else:
            results, tune_storage = f"{tmp}/results", f"{tmp}/_tune"
        listings = {"n": 0}
        listing = ResultStore.listing

        def counted(self):
            listings["n"] += 1
            return listing(self)

        ResultStore.listing = counted
        start_ray("local", num_cpus=cpus)
        spec = GridSpec(name="scale", datasets=[DATA], models=["BPR"], conditions=["baseline"],
                        seeds=list(range(cells)), train={"epochs": 1, "ks": [10, 20]},
                        resources={"cpu": 0.25, "gpu": 0}, hparams=HParamSearch(search="none"))
        cpu0, wall0 = _cpu(), time.time()
        run = run_grid(spec, results=results, storage=tune_storage, progress_every=1e9, run_trial=null_run_trial)
        cpu, wall = _cpu() - cpu0, time.time() - wall0
        assert run["grid"]["ran"] == cells and run["grid"]["failed"] == 0, run["grid"]
        rows = len(ResultStore(results).read(["key"]))
        if storage == "s3":
            counts = json.loads(urllib.request.urlopen(f"{os.environ['AWS_ENDPOINT_URL']}/__counts").read())
            server.terminate()
            store_lists = sum(n for p, n in counts.items() if p.startswith("ablate/results"))
            tune_lists = sum(n for p, n in counts.items() if p.startswith("ablate/_tune"))
        else:
            store_lists, tune_lists = listings["n"], float("nan")
    return {"cells": cells, "storage": storage, "rows": rows, "driver_ms_per_cell": 1000 * cpu / cells,
            "wall_ms_per_cell": 1000 * wall / cells, "store_lists_per_cell": store_lists / cells,
            "tune_lists_per_cell": tune_lists / cells,
            "driver_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[2000])
    parser.add_argument("--storage", nargs="+", choices=("local", "s3"), default=["local", "s3"])
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (4 null trials per CPU)")
    parser.add_argument("--one", nargs=2, metavar=("CELLS", "STORAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(int(args.one[0]), args.one[1], args.cpus)), flush=True)
        return
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    print(f"{'cells':>6} {'storage':>7} {'rows':>6} {'driver ms/cell':>14} {'wall ms/cell':>12} "
          f"{'store lists/cell':>16} {'tune lists/cell':>15} {'driver peak MB':>14}", flush=True)
    figures = []
    for cells in args.cells:
        for storage in args.storage:
            done = subprocess.run([sys.executable, __file__, "--one", str(cells), storage, "--cpus", str(args.cpus)],
                                  capture_output=True, text=True, env=env, cwd=ROOT)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{cells} cells on {storage} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            r = json.loads(line[len("RESULT "):])
            figures.append(r)
            print(f"{r['cells']:>6} {r['storage']:>7} {r['rows']:>6} {r['driver_ms_per_cell']:>14.1f} "
                  f"{r['wall_ms_per_cell']:>12.1f} {r['store_lists_per_cell']:>16.4f} "
                  f"{r['tune_lists_per_cell']:>15.3f} {r['driver_peak_mb']:>14.0f}", flush=True)
    last = [r for r in figures if r["cells"] == max(args.cells)]
    print(f"cells={max(args.cells)} driver_ms_per_cell={max(r['driver_ms_per_cell'] for r in last):.1f} "
          f"store_lists_per_cell={max(r['store_lists_per_cell'] for r in last):.4f} "
          f"driver_peak_mb={max(r['driver_peak_mb'] for r in last):.0f}")


if __name__ == "__main__":
    main()
