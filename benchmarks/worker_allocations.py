"""What a large tensor costs to allocate in a Ray worker's trial thread, under each worker environment.

A Tune trial runs in a thread of its worker; what that costs, and what `ablate.train.THREADED_TRAINING_ENV`
(which `ablate.tune.start_ray` sets in every worker) does about it, is said beside it. Each row runs, in a Ray
worker started with the given environment variables, a thread that calls `retain_freed_memory` (as
`ablate.train.fit` does), then allocates, touches and frees a (rows, cols) float32 tensor `--repeats` times; it
prints the median CPU milliseconds of the thread (user + system) and minor page faults per allocation, the
first 3 left out.

    python benchmarks/worker_allocations.py                       # 7,050 x 4,096 float32, 15 repeats
    python benchmarks/worker_allocations.py --rows 23033          # Amazon Clothing's item count

Last line: ``ablate_ms=X default_ms=Y`` (ablate's worker environment against none).
"""
from __future__ import annotations

import argparse
import os
import sys

import ray

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ablate.train import THREADED_TRAINING_ENV  # noqa: E402


@ray.remote(num_cpus=1)
def allocate_in_a_thread(rows: int, cols: int, repeats: int) -> tuple[float, float]:
    import resource
    import statistics
    import threading
    import time

    import torch

    from ablate.train import retain_freed_memory

    torch.set_num_threads(1)
    out = []

    def work():
        retain_freed_memory()
        seconds, faults = [], []
        for _ in range(repeats):
            f0, t0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt, time.thread_time()
            x = torch.zeros(rows, cols)
            x[::7].add_(1.0)
            del x
            seconds.append(time.thread_time() - t0)
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - f0)
        out.append((statistics.median(seconds[3:]) * 1e3, statistics.median(faults[3:])))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return out[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=7050)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    # MALLOC_ARENA_MAX=1 (every thread on glibc's main heap, which `retain_freed_memory` keeps) is not set by
    # ablate: that heap is shared with Ray's own threads, and in Ray workers 0 to 2 of every 5 such allocations
    # were still faulted in afresh, all 28,200 pages (measured without huge pages)
    default = "none (Ray's default)"
    variants = {default: {}, "ablate": dict(THREADED_TRAINING_ENV),
                "ablate + MALLOC_ARENA_MAX=1": {**THREADED_TRAINING_ENV, "MALLOC_ARENA_MAX": "1"}}
    ray.init(address="local", num_cpus=1, logging_level="ERROR", log_to_driver=False)
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = f.read().strip()
    except OSError:
        thp = "unknown"
    print(f"{args.rows} x {args.cols} float32 ({args.rows * args.cols * 4 / 1e6:.0f} MB), "
          f"{args.repeats} allocations in a worker thread; kernel THP setting: {thp}")
    print(f"{'worker environment':40s} {'ms/alloc':>9s} {'faults/alloc':>13s}")
    measured = {}
    for name, env in variants.items():
        ms, faults = ray.get(allocate_in_a_thread.options(runtime_env={"env_vars": env})
                             .remote(args.rows, args.cols, args.repeats))
        measured[name] = ms
        print(f"{name:40s} {ms:9.1f} {faults:13.0f}")
    ray.shutdown()
    print(f"ablate_ms={measured['ablate']:.1f} default_ms={measured[default]:.1f}")


if __name__ == "__main__":
    main()
