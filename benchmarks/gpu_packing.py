"""Trials per hour and memory when N trials of one model share one device: the measurement from which the
presets' `gpu` fraction per trial is chosen (ablate/grid.py, paper/full: {cpu: 1, gpu: 0.25} for most models,
{cpu: 2, gpu: 0.5} for the heavy ones; a fraction of 1/N packs N trials on a GPU).

For each model and each N of `--concurrency`, N trials start together, each in its own spawned process (as Ray
runs the trials of a fractional GPU: separate processes on one device), each through the project's own code
(`ablate.trial.run_trial`, baseline condition, `--epochs` epochs with an evaluation after each, then the test
ranking), seeds `--seed` + 0..N-1. Every process first loads the dataset (and creates its CUDA context); the
clock starts when all have, so "wall s" is the time from the common start until the last of the N trials ends.

    trials/h   N x 3600 / wall s
    trial s    the median of the N trials' own seconds
    slowdown   trial s / trial s of the smallest N measured (N=1 by default)
    host MB    the sum of the N processes' peak resident sets (Linux VmHWM; what Ray's `memory` requests cover)
    device MB  CUDA only: the device's whole used memory while the trials ran (highest of the samples each
               trial process takes every 50 ms with torch.cuda.mem_get_info; CUDA contexts and anything else on
               the device included: run it on an otherwise idle GPU)
    resv MB    CUDA only: the sum of the N processes' torch.cuda.max_memory_reserved

An N is "within memory" when all N trials finished and its memory (device MB on CUDA, host MB on CPU) stays
under the budget: `--memory-gb`, by default the device's total memory (CUDA) or the machine's (CPU); pass the
memory of the cluster's GPU (15 for a T4's 15 GiB) to judge its packing from a larger one. After a group of N
with a trial that did not finish, the larger N of that model are skipped.

Each trial process uses `--threads` torch threads (default: the paper preset's `cpu` request for the model,
which is what the Ray trainable sets). With `--device cpu` (the default where there is no CUDA) the script
measures CPU packing: N trials sharing this machine's cores, no GPU; its header says so.

Data: the Amazon Baby interactions (../shared/data/amazon/baby.inter) by default, with random features of the
paper's widths (image 4096-d, text 384-d); a dataset with its own features (`--data ../shared/data/ml100k-mm`)
keeps them.

    python benchmarks/gpu_packing.py                                  # GPU, LightGCN,VBPR,FREEDOM,LATTICE
    python benchmarks/gpu_packing.py --models BM3 --concurrency 1,2,4,8,16 --memory-gb 15
    python benchmarks/gpu_packing.py --device cpu --data ../shared/data/ml100k-mm --concurrency 1,2 --epochs 1

The last lines name, per model, the N with the most trials per hour within memory; the very last line is
``best_packing=<model>:<N>,<model>:<N>,...`` (N = 0 for a model no N of which finished within memory).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue as queue_module
import statistics
import sys
import threading
import time
from pathlib import Path

from epoch import DEFAULT_DATA, model_names
from trial_memory import _mb, _status_mb, load_dataset, peak_rss_mb, rss_mb

DEFAULT_MODELS = "LightGCN,VBPR,FREEDOM,LATTICE"
FINISHED = ("finished", "collapsed")  # a collapsed trial ran to its end; its metrics are what is degenerate
SAMPLE_SECONDS = 0.05


class DeviceMemorySampler:
    """The highest used memory of a CUDA device (all processes on it), sampled from a thread until `stop`."""

    def __init__(self, device):
        import torch

        self.device, self.peak_mb, self._done = device, 0.0, threading.Event()
        self._mem_get_info = torch.cuda.mem_get_info
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            free, total = self._mem_get_info(self.device)
            self.peak_mb = max(self.peak_mb, (total - free) / 2**20)
            if self._done.wait(SAMPLE_SECONDS):
                return

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.peak_mb


def trial(index: int, name: str, data: str, device: str, seed: int, epochs: int, threads: int, go, queue) -> None:
    """Runs in its own process: loads `data`, says so on `queue`, waits for `go`, runs one trial of `name`,
    reports its seconds, status and memory on `queue`."""
    import torch

    torch.set_num_threads(threads)
    from ablate.train import TrainConfig
    from ablate.trial import TrialConfig, resolve_device, run_trial

    dataset, features = load_dataset(data, 0)  # the same random features in every trial
    target = resolve_device(device)
    config = TrialConfig(dataset=data, model=name, seed=seed, train=TrainConfig(epochs=epochs), device=device)
    ready = {"index": index, "ready": True, "dataset": dataset.name, "features": features, "items": dataset.n_items,
             "users": dataset.n_users, "load_mb": rss_mb(), "device": str(target)}
    if target.type == "cuda":
        free, total = torch.cuda.mem_get_info(target)  # creates the context before the clock starts
        ready.update(device=f"{target} ({torch.cuda.get_device_name(target)})", device_total_mb=total / 2**20)
    queue.put(ready)
    go.wait()
    sampler = DeviceMemorySampler(target) if target.type == "cuda" else None
    start = time.perf_counter()
    try:
        status = run_trial(dataset, config)["status"]
    except Exception as exc:  # torch.cuda.OutOfMemoryError among them: reported as the trial's status
        status = f"error {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}"
    out = {"index": index, "done": True, "seconds": time.perf_counter() - start, "status": status,
           "peak_mb": peak_rss_mb()}
    if sampler is not None:
        out.update(device_mb=sampler.stop(), reserved_mb=torch.cuda.max_memory_reserved(target) / 2**20)
    queue.put(out)


def _wait_for(key: str, queue, procs, infos: list[dict], deadline: float | None, on_message=None) -> None:
    """Reads the trials' messages into `infos` until each trial has sent one holding `key`, has died, or
    `deadline` (time.monotonic) has passed; a trial that has not by then gets a status saying so."""
    waiting = {i for i, info in enumerate(infos) if "status" not in info}
    while waiting:
        try:
            message = queue.get(timeout=0.5)
        except queue_module.Empty:
            dead = [i for i in waiting if not procs[i].is_alive()]
            if dead:
                try:  # a message sent just before its process ended may still be on its way
                    message = queue.get(timeout=2)
                except queue_module.Empty:
                    for i in dead:
                        code = procs[i].exitcode
                        infos[i]["status"] = (f"died (exit code {code}"
                                              + ("; killed, as the out-of-memory killer does)" if code == -9 else ")"))
                        waiting.discard(i)
                    continue
            elif deadline is not None and time.monotonic() > deadline:
                for i in waiting:
                    infos[i]["status"] = "stopped at the timeout" + (" while loading" if key == "ready" else "")
                    infos[i]["peak_mb"] = _status_mb("VmHWM", procs[i].pid)
                return
            else:
                continue
        index = message.pop("index")
        infos[index].update(message)
        if on_message is not None:
            on_message(index, message)
        if key in message:
            waiting.discard(index)


def run_group(name: str, n: int, args, threads: int) -> dict:
    """N concurrent trials of `name`, started together once all have loaded the data; the group's row."""
    context = mp.get_context("spawn")
    queue, go = context.Queue(), context.Event()
    procs = [context.Process(target=trial, args=(i, name, args.data, args.device, args.seed + i, args.epochs, threads,
                                                  go, queue)) for i in range(n)]
    deadline = time.monotonic() + args.timeout if args.timeout else None
    for proc in procs:
        proc.start()
    infos: list[dict] = [{} for _ in range(n)]
    ended: dict[int, float] = {}
    _wait_for("ready", queue, procs, infos, deadline)
    started = time.perf_counter()
    if all("status" not in info for info in infos):
        go.set()
        _wait_for("done", queue, procs, infos, deadline,
                  on_message=lambda i, message: ended.setdefault(i, time.perf_counter()) if "done" in message else None)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
        proc.join()
    statuses = [info.get("status", "not started (another trial of the group did not load)") for info in infos]
    finished = [info for info in infos if info.get("status") in FINISHED]
    row = {"model": name, "n": n, "statuses": statuses, "ok": len(finished) == n,
           "host_mb": sum(info["peak_mb"] for info in infos if info.get("peak_mb") is not None),
           **{k: infos[0][k] for k in ("dataset", "features", "items", "users", "device", "device_total_mb")
              if k in infos[0]}}
    if row["ok"]:
        row["wall"] = max(ended.values()) - started
        row["trial_seconds"] = statistics.median(info["seconds"] for info in finished)
        row["trials_per_hour"] = n * 3600 / row["wall"]
    if any("device_mb" in info for info in infos):
        row["device_mb"] = max(info.get("device_mb", 0.0) for info in infos)
        row["reserved_mb"] = sum(info.get("reserved_mb", 0.0) for info in infos)
    return row


def summarize_status(statuses: list[str]) -> str:
    """The status the N trials share, or each distinct status with its count."""
    counts = {status: statuses.count(status) for status in statuses}
    return statuses[0] if len(counts) == 1 else "; ".join(f"{count}x {status}" for status, count in counts.items())


HEADER = (f"{'model':10s} {'N':>3s} {'wall s':>8s} {'trial s':>8s} {'slowdown':>8s} {'trials/h':>9s} "
          f"{'host MB':>8s} {'device MB':>9s} {'resv MB':>8s}  status")


def format_row(r: dict, base_seconds: float | None) -> str:
    def number(value, digits: int) -> str:
        return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"

    slowdown = r["trial_seconds"] / base_seconds if r.get("trial_seconds") and base_seconds else None
    return (f"{r['model']:10s} {r['n']:3d} {number(r.get('wall'), 1):>8s} {number(r.get('trial_seconds'), 1):>8s} "
            f"{number(slowdown, 2):>8s} {number(r.get('trials_per_hour'), 0):>9s} {_mb(r.get('host_mb')):>8s} "
            f"{_mb(r.get('device_mb')):>9s} {_mb(r.get('reserved_mb')):>8s}  {summarize_status(r['statuses'])}")


def memory_mb(row: dict) -> float:
    """The memory a group of N is judged by: the device's on CUDA, the processes' resident sets on CPU."""
    return row["device_mb"] if "device_mb" in row else row["host_mb"]


def machine_memory_mb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def concurrency_levels(text: str) -> list[int]:
    try:
        levels = sorted({int(part) for part in text.split(",")})
    except ValueError:
        levels = []
    if not levels or levels[0] < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers >= 1, such as 1,2,4,8; got {text!r}")
    return levels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated (default: {DEFAULT_MODELS})")
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="interactions (.inter), a dataset directory, or synthetic:key=value,... "
                             "(default: Amazon Baby)")
    parser.add_argument("--device", help="cuda, cuda:1, cpu ... (default: cuda when present, else cpu)")
    parser.add_argument("--concurrency", type=concurrency_levels, default=[1, 2, 4, 8],
                        help="the numbers N of concurrent trials (default: 1,2,4,8)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of each trial (default: 3)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per trial (default 0: the paper preset's cpu request for the model)")
    parser.add_argument("--memory-gb", type=float,
                        help="the memory budget in GiB (default: the device's total on CUDA, the machine's on CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float,
                        help="seconds for each group of N trials, loading included, before the unfinished ones "
                             "are stopped (default: none)")
    args = parser.parse_args(argv)
    from ablate.data import remote

    if not (args.data.startswith("synthetic") or remote.is_remote(args.data)) and not Path(args.data).exists():
        print(f"{args.data} is absent: this benchmark needs it (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    if args.epochs < 1:
        print(f"--epochs must be >= 1; got {args.epochs}", file=sys.stderr)
        return 2
    names = model_names(args.models)
    if names is None:
        return 2
    import torch

    from ablate.grid import preset

    paper = preset("paper")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = args.device.startswith("cuda")
    load = os.getloadavg()
    print(("GPU packing: N concurrent trials on one device" if on_cuda else
           "CPU packing (no GPU measured): N concurrent trials sharing this machine's cores")
          + f" ({args.device}); {args.data}; {args.epochs} epoch(s) + an evaluation each + the test ranking per trial; "
          f"torch {torch.__version__}, {os.cpu_count()} cores; load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(HEADER, flush=True)
    rows: list[dict] = []
    for name in names:
        resources = paper.trial_resources(name)
        threads = args.threads or max(1, int(resources["cpu"]))
        base_seconds = None
        for n in args.concurrency:
            if rows and rows[-1]["model"] == name and not rows[-1]["ok"]:
                print(f"{name:10s} {n:3d}  skipped: N={rows[-1]['n']} did not finish", flush=True)
                continue
            row = run_group(name, n, args, threads)
            row.update(threads=threads, preset_gpu=resources["gpu"])
            base_seconds = base_seconds or row.get("trial_seconds")
            rows.append(row)
            print(format_row(row, base_seconds), flush=True)
    first = rows[0]
    if "features" in first:
        print(f"data: {first['dataset']}, {first['users']} users, {first['items']} items, {first['features']}; "
              f"device {first.get('device', args.device)}")
    load = os.getloadavg()
    print(f"load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    budget = (args.memory_gb * 1024 if args.memory_gb else
              first.get("device_total_mb") if on_cuda else machine_memory_mb())
    kind = "device" if on_cuda else "host"
    best: dict[str, int] = {}
    for name in names:
        measured = [r for r in rows if r["model"] == name]
        fits = [r for r in measured if r["ok"] and budget is not None and memory_mb(r) <= budget]
        preset_gpu = measured[0]["preset_gpu"]
        preset_note = (f"the paper preset asks gpu={preset_gpu:g} ({int(round(1 / preset_gpu))} per GPU), "
                       f"{measured[0]['threads']} thread(s) a trial" if preset_gpu else "the paper preset asks no GPU")
        if not fits:
            best[name] = 0
            print(f"{name}: no N finished within {_mb(budget)} MB of {kind} memory; {preset_note}")
            continue
        top = max(fits, key=lambda r: r["trials_per_hour"])
        single = next((r for r in fits if r["n"] == min(args.concurrency)), None)
        gain = f", {top['trials_per_hour'] / single['trials_per_hour']:.2f}x N={single['n']}'s" if single else ""
        best[name] = top["n"]
        print(f"{name}: best N={top['n']}, {top['trials_per_hour']:.0f} trials/h{gain}, {memory_mb(top):.0f} of "
              f"{budget:.0f} MB of {kind} memory; {preset_note}")
    print("best_packing=" + ",".join(f"{name}:{n}" for name, n in best.items()))
    return 0 if all(best.values()) else 1  # a larger N running out of memory is a measurement, not a failure


if __name__ == "__main__":
    sys.exit(main())
