"""Peak memory of one whole trial of each model: host RSS (what Ray's `memory` request must cover) and CUDA memory.

Each model runs in a fresh process (so peaks do not mix): the process loads the dataset, then runs one trial
through the project's own code (`ablate.trial.run_trial`, baseline condition, 1 epoch: the model is built, trains
one epoch, ranks all items for the validation users, keeps the best state and ranks for the test users).

Host memory is the process's resident set: "load MB" is the resident set after imports and the data load,
"peak MB" the highest resident set of the whole process (Linux's VmHWM of /proc/self/status; elsewhere
`getrusage`'s ru_maxrss, which on Linux is inherited from the parent across the spawn and so is not used
there), "trial MB" = peak - load, the part the model, its graphs and training add. On CUDA, "CUDA alloc MB"
and "CUDA resv MB" are torch's peak allocated and reserved memory on the device; "CUDA used MB" is the
device's whole used memory at the end of the trial (driver context included; exact when nothing else runs on
the device), which is what a fractional GPU must leave room for.

Data: the Amazon Baby interactions (../shared/data/amazon/baby.inter) by default; a dataset without features
(such as those Amazon interactions) gets random features of the paper's widths (image 4096-d, text 384-d;
memory does not depend on their content); a dataset with features (a dataset directory, `synthetic:...`) keeps
its own.

    python benchmarks/trial_memory.py                               # every registered model, Amazon Baby
    python benchmarks/trial_memory.py --models LATTICE,MGCN --data ../shared/data/amazon/sports.inter
    python benchmarks/trial_memory.py --device cpu --timeout 180    # a model still running after 180 s is
                                                                    # stopped; its peak so far is shown

Last line: ``worst_peak_mb=X model=M`` (the highest host peak among the models that finished).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue as queue_module
import resource
import sys
import time
from pathlib import Path

from epoch import DEFAULT_DATA, model_names

PAPER_WIDTHS = {"image": 4096, "text": 384}


def _status_mb(field: str, pid: int | str = "self") -> float | None:
    """A memory field (VmHWM, VmRSS) of /proc/<pid>/status in MB; None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_rss_mb() -> float:
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    current = _status_mb("VmRSS")
    return current if current is not None else peak_rss_mb()


def load_dataset(data: str, seed: int):
    """The dataset at `data`; one without item features gets random ones of the paper's widths."""
    import numpy as np

    from ablate.data import Dataset, load

    dataset = load(data)
    if dataset.features:
        return dataset, "own features"
    rng = np.random.default_rng(seed)
    features = {m: {"default": rng.standard_normal((dataset.n_items, width), dtype=np.float32)}
                for m, width in PAPER_WIDTHS.items()}
    return (Dataset(**{**dataset.__dict__, "features": features, "default_variants": dict.fromkeys(features, "default")}),
            "random features " + " + ".join(f"{m} {w}-d" for m, w in PAPER_WIDTHS.items()))


def measure(name: str, data: str, device: str, seed: int, queue) -> None:
    """Runs in its own process: loads `data`, runs one 1-epoch trial of model `name`, reports to `queue`."""
    import torch

    from ablate.train import TrainConfig
    from ablate.trial import TrialConfig, resolve_device, run_trial

    dataset, features = load_dataset(data, seed)
    target = resolve_device(device)
    queue.put({"dataset": dataset.name, "features": features, "users": dataset.n_users, "items": dataset.n_items,
               "load_mb": rss_mb(), "device": str(target), "phase": "while building the model or training"})
    config = TrialConfig(dataset=data, model=name, seed=seed, train=TrainConfig(epochs=1), device=device)
    start = time.perf_counter()
    try:
        row = run_trial(dataset, config, on_eval=lambda point: queue.put({"phase": "after the validation ranking"}))
        status = row["status"]
    except Exception as exc:  # torch.cuda.OutOfMemoryError among them: reported as the model's status
        status = f"error {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"
    out = {"seconds": time.perf_counter() - start, "peak_mb": peak_rss_mb(), "status": status}
    if target.type == "cuda":
        free, total = torch.cuda.mem_get_info(target)
        out.update(cuda_alloc_mb=torch.cuda.max_memory_allocated(target) / 2**20,
                   cuda_reserved_mb=torch.cuda.max_memory_reserved(target) / 2**20,
                   cuda_used_mb=(total - free) / 2**20, device=f"{target} ({torch.cuda.get_device_name(target)})")
    queue.put({**out, "done": True})


def run_one(name: str, data: str, device: str, seed: int, timeout: float | None) -> dict:
    """`measure` of one model in a fresh process; a process still running after `timeout` seconds is killed
    (its peak so far read from /proc), one that dies is reported with its exit code."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    proc = context.Process(target=measure, args=(name, data, device, seed, queue))
    started = time.monotonic()
    proc.start()
    info = {"model": name, "status": ""}
    while True:
        try:
            message = queue.get(timeout=0.5)
        except queue_module.Empty:
            if not proc.is_alive():
                try:  # the last message may arrive just after the process ended
                    message = queue.get(timeout=2)
                except queue_module.Empty:
                    info["status"] = (f"died (exit code {proc.exitcode}"
                                      + ("; killed, as the kernel's out-of-memory killer does)" if proc.exitcode == -9
                                         else ")"))
                    break
            elif timeout and time.monotonic() - started > timeout:
                info["peak_mb"] = _status_mb("VmHWM", proc.pid)
                info["seconds"] = time.monotonic() - started
                proc.kill()
                info["status"] = f"stopped after {timeout:.0f} s {info.get('phase', 'while loading')} (peak so far)"
                break
            else:
                continue
        info.update(message)
        if message.get("done"):
            break
    proc.join()
    info.pop("done", None)
    info.pop("phase", None)
    return info


def _mb(value) -> str:
    return f"{value:.0f}" if isinstance(value, (int, float)) else "-"


def format_row(r: dict) -> str:
    trial = r["peak_mb"] - r["load_mb"] if isinstance(r.get("peak_mb"), float) and "load_mb" in r else None
    return (f"{r['model']:9s} {r.get('dataset', '-'):10s} {r.get('device', '-'):12s} {r.get('items', '-'):>6} "
            f"{_mb(r.get('load_mb')):>7s} {_mb(r.get('peak_mb')):>7s} {_mb(trial):>8s} "
            f"{_mb(r.get('cuda_alloc_mb')):>10s} {_mb(r.get('cuda_reserved_mb')):>9s} {_mb(r.get('cuda_used_mb')):>9s} "
            f"{r.get('seconds', float('nan')):7.1f}  {r['status']}")


HEADER = (f"{'model':9s} {'dataset':10s} {'device':12s} {'items':>6s} {'load MB':>7s} {'peak MB':>7s} {'trial MB':>8s} "
          f"{'CUDA alloc':>10s} {'CUDA resv':>9s} {'CUDA used':>9s} {'seconds':>7s}  status")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated (default: every registered model)")
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="interactions (.inter), a dataset directory, or synthetic:key=value,... "
                             "(default: Amazon Baby)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present, else cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, help="seconds per model before it is stopped (default: none)")
    args = parser.parse_args(argv)
    from ablate.data import remote

    if not (args.data.startswith("synthetic") or remote.is_remote(args.data)) and not Path(args.data).exists():
        print(f"{args.data} is absent: this benchmark needs it (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    import torch

    names = model_names(args.models)
    if names is None:
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    load = os.getloadavg()
    print(f"{args.data}; one trial per model in its own process (1 epoch + validation and test ranking); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads on {os.cpu_count()} cores; "
          f"load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(HEADER, flush=True)
    rows = []
    for name in names:
        r = run_one(name, args.data, device, args.seed, args.timeout)
        rows.append(r)
        print(format_row(r), flush=True)
    if "features" in rows[0]:
        print(f"features: {rows[0]['features']}; users {rows[0].get('users')}")
    load = os.getloadavg()
    print(f"load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    finished = [r for r in rows if r["status"] in ("finished", "collapsed")]
    if not finished:
        print("worst_peak_mb=nan model=none")
        return 1
    worst = max(finished, key=lambda r: r["peak_mb"])
    print(f"worst_peak_mb={worst['peak_mb']:.0f} model={worst['model']}")
    failed = [r for r in rows if r["status"].startswith(("error", "died"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
