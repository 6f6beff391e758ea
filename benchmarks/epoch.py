"""Seconds per epoch, evaluation seconds and peak memory of every registered model on the Amazon Baby shape.

Interactions: ../shared/data/amazon/baby.inter (19,445 users, 7,050 items, 119,674 training pairs); features:
random, of the paper's shapes (image 4096-d, text 384-d; speed does not depend on their content). Batch 2048.
Each model runs in its own process (peak memory = that process's max RSS, Python and torch included):
`--epochs` epochs of training (the first is reported apart as warm-up), then one full-ranking evaluation
of all validation users. The epoch is split into the trainer's phases: sampling/batching, the model's
epoch hook, forward (loss), backward, optimizer step; "outside" = sampling/batching + untimed remainder,
as a share of the epoch. With `--device cuda` every phase ends with a device synchronisation (exact phase
times, a little slower than the trainer) and "GPU MB" is torch's peak allocation on the device. The C library
is set up as the trainer sets it (`ablate.train.retain_freed_memory`). `--in-thread` runs the model in a thread
of its process, as a Tune trial runs in a thread of its worker (glibc serves a thread's allocations from an
arena of its own); `--clock cpu` times in CPU seconds of the process instead of wall seconds (on a machine
other work shares; CPU only).

    python benchmarks/epoch.py                    # every registered model
    python benchmarks/epoch.py --models BPR,VBPR --epochs 4
    python benchmarks/epoch.py --device cuda --epochs 3
    python benchmarks/epoch.py --models BM3 --in-thread --threads 1 --clock cpu
    THP_MEM_ALLOC_ENABLE=1 python benchmarks/epoch.py --models BM3 --in-thread --threads 1 --clock cpu
                                                  # as in a grid's worker (ablate.train.THREADED_TRAINING_ENV)
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon" / "baby.inter"


def model_names(models: str | None) -> list[str] | None:
    """The registered models a comma-separated `--models` value names (all of them without one); None, after
    a message naming the unknown ones and the registered ones, when it names others."""
    from ablate.models import MODELS

    names = models.split(",") if models else list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"unknown model(s) {unknown}; expected some of {list(MODELS)}", file=sys.stderr)
        return None
    return names


def with_random_features(data: str, seed: int):
    """The dataset at `data` (interactions, or a dataset directory) with random features of the paper's widths
    in place of its own: image 4096-d, text 384-d."""
    import numpy as np

    from ablate.data import Dataset, load

    base = load(data)
    rng = np.random.default_rng(seed)
    features = {"image": rng.standard_normal((base.n_items, 4096), dtype=np.float32),
                "text": rng.standard_normal((base.n_items, 384), dtype=np.float32)}
    return Dataset(**{**base.__dict__, "features": {m: {"default": x} for m, x in features.items()},
                      "default_variants": {"image": "default", "text": "default"}})


def measure(name: str, data: str, epochs: int, seed: int, threads: int, device: str, queue, in_thread: bool = False,
            clock_kind: str = "wall") -> None:
    if in_thread:
        import threading

        worker = threading.Thread(target=measure, args=(name, data, epochs, seed, threads, device, queue, False,
                                                        clock_kind))
        worker.start()
        worker.join()
        return
    import torch

    if threads:
        torch.set_num_threads(threads)
    from ablate import models
    from ablate.data import TRAIN
    from ablate.graphs import InteractionGraph
    from ablate.train import (NegativeSampler, TrainConfig, evaluate, make_evaluators, make_optimizer,
                              retain_freed_memory, seed_everything)

    retain_freed_memory()
    dataset = with_random_features(data, seed)
    device = torch.device(device)
    seed_everything(seed, device)

    def clock() -> float:  # on a GPU, a phase ends when its kernels have run
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.process_time() if clock_kind == "cpu" else time.perf_counter()

    cfg = TrainConfig(epochs=epochs)
    t0 = clock()
    graph = InteractionGraph(*dataset.pairs(TRAIN), dataset.n_users, dataset.n_items, device=device)
    model = models.build(name, graph, dataset.select_features(), {})
    build_seconds = clock() - t0
    valid, _ = make_evaluators(dataset, cfg, device)
    optimizer = make_optimizer(model, cfg)
    sampler = NegativeSampler(graph)
    n = graph.num_edges
    per_epoch = []
    for epoch in range(epochs):
        phases = dict.fromkeys(("sample", "hook", "forward", "backward", "step"), 0.0)
        start = t = clock()
        model.train()
        model.on_epoch_start(epoch)
        phases["hook"] += clock() - t
        t = clock()
        order = torch.randperm(n, device=device)
        users_all, pos_all = graph.users[order], graph.items[order]
        neg_all = sampler.sample(users_all) if model.uses_negatives else None
        phases["sample"] += clock() - t
        for s in range(0, n, cfg.batch_size):
            t = clock()
            users, pos = users_all[s : s + cfg.batch_size], pos_all[s : s + cfg.batch_size]
            neg = neg_all[s : s + cfg.batch_size] if neg_all is not None else None
            t1 = clock()
            loss = model.loss(users, pos, neg)
            t2 = clock()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t3 = clock()
            optimizer.step()
            float(loss.detach())
            t4 = clock()
            phases["sample"] += t1 - t
            phases["forward"] += t2 - t1
            phases["backward"] += t3 - t2
            phases["step"] += t4 - t3
        total = clock() - start
        phases["other"] = total - sum(phases.values())
        per_epoch.append({"total": total, **phases})
    evals = []
    for _ in range(2):
        t = clock()
        evaluate(model, valid)
        evals.append(clock() - t)
    steady = per_epoch[1:] or per_epoch
    row = {k: statistics.median(e[k] for e in steady) for k in steady[0]}
    row.update(model=name, warmup=per_epoch[0]["total"], build=build_seconds, eval=min(evals),
               eval_users=int(valid.users.size), batches=-(-n // cfg.batch_size),
               peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               gpu_peak_mb=torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0)
    queue.put(row)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated (default: every registered model)")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--epochs", type=int, default=3, help="epochs per model; the first is warm-up")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per model process (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--in-thread", action="store_true",
                        help="train in a thread of the model's process, as a Tune trial")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall seconds, or the process's CPU seconds")
    args = parser.parse_args(argv)
    if not Path(args.data).exists():
        print(f"{args.data} is absent: this benchmark needs the Amazon Baby interactions", file=sys.stderr)
        return 2
    names = model_names(args.models)
    if names is None:
        return 2
    if args.clock == "cpu" and args.device != "cpu":
        print("--clock cpu measures CPU work: it needs --device cpu", file=sys.stderr)
        return 2
    import torch

    print(f"Amazon Baby shape, batch 2048, random features image 4096-d + text 384-d; torch {torch.__version__}, "
          f"{args.threads or torch.get_num_threads()} threads, device {args.device}; median of epochs 2..{args.epochs}; "
          f"{args.clock} seconds; {'in a thread' if args.in_thread else 'main thread'}; "
          + ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("MALLOC_ARENA_MAX", "THP_MEM_ALLOC_ENABLE")))
    header = (f"{'model':10s} {'s/epoch':>8s} {'sample':>7s} {'hook':>6s} {'forward':>8s} {'backward':>9s} "
              f"{'step':>6s} {'other':>6s} {'outside%':>8s} {'eval s':>7s} {'peak MB':>8s} {'GPU MB':>7s} {'build s':>8s}")
    print(header)
    rows = []
    context = mp.get_context("spawn")
    for name in names:
        queue = context.Queue()
        proc = context.Process(target=measure, args=(name, args.data, args.epochs, 0, args.threads, args.device, queue,
                                                             args.in_thread, args.clock))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            print(f"{name:10s} failed (exit code {proc.exitcode})")
            continue
        r = queue.get()
        rows.append(r)
        outside = 100 * (r["sample"] + r["other"]) / r["total"]
        print(f"{name:10s} {r['total']:8.3f} {r['sample']:7.3f} {r['hook']:6.3f} {r['forward']:8.3f} "
              f"{r['backward']:9.3f} {r['step']:6.3f} {r['other']:6.3f} {outside:7.1f}% {r['eval']:7.3f} "
              f"{r['peak_mb']:8.0f} {r['gpu_peak_mb']:7.0f} {r['build']:8.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
