"""Throughput of the grid engine on this machine, and what W&B costs the driver.

    python benchmarks/grid.py [--trials 24] [--epochs 5] [--cpus 2] [--what all|throughput|wandb]

throughput: many small trials, trials per minute, and the share of wall time spent outside training (Ray,
Tune, worker start, result writing): 1 - sum(trial wall seconds, from the rows) / (grid wall seconds x CPUs).

wandb: the same grid with W&B off (``disabled``) and on (``offline``: the trials write their runs, the same
work as online without the network), an evaluation reported every epoch. The driver's time per reported
result is the driver process's CPU time (all its threads: Tune's loop, callbacks, Ray's client) over the whole
run divided by the results Tune received (each trial's evaluations and its final report); the line
``wandb on - off`` is W&B's cost to the driver per result.
"""
import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("WANDB_MODE", "disabled")

import psutil  # noqa: E402
import ray  # noqa: E402

from ablate.grid import GridSpec, HParamSearch  # noqa: E402
from ablate.results import ResultStore  # noqa: E402
from ablate.tune import run_grid, start_ray  # noqa: E402


def one(reuse: bool, trials: int, epochs: int, cpus: int) -> dict:
    spec = GridSpec(name=f"bench-{int(reuse)}", datasets=["synthetic:n_users=300,n_items=200,text_dim=16,image_dim=16"],
                    models=["BPR"], conditions=["baseline"], seeds=list(range(trials)),
                    train={"epochs": epochs, "patience": epochs, "batch_size": 1024, "ks": [10, 20]},
                    resources={"cpu": 1, "gpu": 0}, hparams=HParamSearch(search="none"))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.time()
        run_grid(spec, results=f"{tmp}/r", reuse_actors=reuse, progress_every=1e9)
        wall = time.time() - started
        rows = ResultStore(f"{tmp}/r").read()
    inside = float(rows["wall_seconds"].sum())
    return {"wall": wall, "per_min": len(rows) / wall * 60, "outside": 1 - inside / (wall * cpus),
            "trial_s": statistics.median(rows["wall_seconds"])}


def driver_cost(mode: str, trials: int, epochs: int) -> dict:
    spec = GridSpec(name=f"wandb-{mode}", datasets=["synthetic:n_users=300,n_items=200,text_dim=16,image_dim=16"],
                    models=["BPR"], conditions=["baseline"], seeds=list(range(trials)),
                    train={"epochs": epochs, "patience": epochs, "eval_every": 1, "batch_size": 1024, "ks": [10, 20]},
                    resources={"cpu": 1, "gpu": 0}, hparams=HParamSearch(search="none"))
    driver = psutil.Process()
    with tempfile.TemporaryDirectory() as tmp:
        cpu, started = sum(driver.cpu_times()[:2]), time.time()
        run_grid(spec, results=f"{tmp}/r", progress_every=1e9, wandb_mode=mode)
        wall, cpu = time.time() - started, sum(driver.cpu_times()[:2]) - cpu
        rows = ResultStore(f"{tmp}/r").read()
    results = int(sum(len(json.loads(c)) + 1 for c in rows["curve"]))
    return {"results": results, "ms": 1000 * cpu / results, "wall": wall}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--what", choices=("all", "throughput", "wandb"), default="all")
    args = parser.parse_args()
    t = time.time()
    start_ray("local", num_cpus=args.cpus)
    print(f"ray start {time.time() - t:.1f} s; {args.trials} BPR trials x {args.epochs} epochs, "
          f"{args.cpus} CPUs, 1 CPU per trial")
    if args.what in ("all", "throughput"):
        print(f"{'reuse_actors':>12} {'wall s':>8} {'trials/min':>11} {'median trial s':>15} {'outside training':>17}")
        for reuse in (True, False):
            runs = [one(reuse, args.trials, args.epochs, args.cpus) for _ in range(args.repeats)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"{str(reuse):>12} {med['wall']:8.1f} {med['per_min']:11.1f} {med['trial_s']:15.2f} "
                  f"{100 * med['outside']:16.1f}%")
    if args.what in ("all", "wandb"):
        print(f"\n{'W&B':>9} {'results':>8} {'driver ms/result':>17} {'grid wall s':>12}   (median of {args.repeats})")
        driver_cost("disabled", 2, 2)  # warm-up: the driver's first Tuner pays one-time imports and set-up
        runs = {"disabled": [], "offline": []}
        for _ in range(args.repeats):  # side by side, alternating
            for mode in runs:
                runs[mode].append(driver_cost(mode, args.trials, args.epochs))
        cost = {}
        for mode, done in runs.items():
            cost[mode] = {k: statistics.median(r[k] for r in done) for k in done[0]}
            label = "off" if mode == "disabled" else "on"
            print(f"{label:>9} {cost[mode]['results']:8.0f} {cost[mode]['ms']:17.2f} {cost[mode]['wall']:12.1f}")
        print(f"wandb on - off: {cost['offline']['ms'] - cost['disabled']['ms']:+.2f} ms of driver time per result")
    ray.shutdown()


if __name__ == "__main__":
    main()
