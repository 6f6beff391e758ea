"""Each model's training epoch beside its floor: the unavoidable arithmetic of the epoch, timed alone.

The floor of a model is what an epoch cannot do without: its dense matrix products (GEMMs) at the shapes it
runs them, its sparse propagations (sparse x dense products, sampled dense-dense products) over its actual
sparse matrices, its top-k selections, and the optimizer's fused Adam step over its parameters. The top-k
selections are there because some models' math is a selection over a full similarity matrix in every epoch
or batch (LATTICE's learned kNN item graph, rebuilt every epoch as in the paper and MMRec; DA-MRS's
pseudo-positive items of every batch): work of the size of the product that makes the matrix, which no
implementation of that math avoids. (The models' one-off graphs are built at construction, outside the
epoch, and evaluation is not recorded, so a top-k counts only where the training math makes it.) One epoch of the trainer's loop is
recorded below the autograd layer (a `TorchDispatchMode`, so the backward's products are seen too); every
distinct (operation, shapes) is then run alone on fresh tensors of the same shapes and strides, and the
floor is the sum of those times over the epoch's calls. Everything else an epoch spends (sampling, index
and gather work, element-wise passes, allocations, Python) is the distance to the floor: ratio = epoch /
floor.

The epoch itself is measured with the trainer (`ablate.train.fit`, its training seconds), alternating with
the floor's measurement in the same process, `--repeats` times; medians are printed. Seconds are the
measuring process's CPU seconds by default (`--clock cpu`, with one thread: its work, not its waits for a
core; on a machine shared with other work elapsed seconds were seen at 10x the CPU seconds). Interactions: Amazon
Baby (../shared/data/amazon/baby.inter), random features of the paper's widths (image 4096-d, text 384-d;
speed does not depend on their content), batch 2048. `--quick`: the ml100k-mm interactions (943 users,
1,682 items, 40 batches) with the same feature widths, one repeat. The machine's load average is printed
before and after: on a shared machine compare ratios, not seconds.

    python benchmarks/floor.py                          # every registered model, Baby shape
    python benchmarks/floor.py --models VBPR,FREEDOM --repeats 5
    python benchmarks/floor.py --quick --models LightGCN

Last line: ``worst_ratio=X model=M``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
import types
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from epoch import DEFAULT_DATA, model_names, with_random_features

QUICK_DATA = DEFAULT_DATA.parents[1] / "ml100k-mm"
aten = torch.ops.aten
#: the operations of the floor, by kind
KINDS = {
    aten.mm.default: "gemm", aten.addmm.default: "gemm", aten.addmm.out: "gemm", aten.bmm.default: "gemm",
    aten.baddbmm.default: "gemm", aten.mv.default: "gemm", aten.addmv.default: "gemm",
    aten._sparse_addmm.default: "sparse", aten.sparse_sampled_addmm.default: "sparse",
    aten._fused_adam_.default: "step", aten._fused_adam_.tensor_lr: "step",
    aten.topk.default: "select",
}  # a product with a sparse operand counts as "sparse" whatever its operation (`ablate.graphs.sparse_dense_mm`)


def _spec(value):
    """A hashable description of an argument: dense tensors by shape, strides and dtype; sparse ones by
    their identity (they are reused as they are); lists elementwise; anything else by value."""
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            return ("sparse", id(value))
        return ("dense", tuple(value.shape), value.stride(), value.dtype)
    if isinstance(value, (list, tuple)):
        return tuple(_spec(v) for v in value)
    return value


class FloorRecorder(TorchDispatchMode):
    """Counts the floor's operations run under it, by (operation, argument spec), keeping the sparse operands."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()
        self.examples: dict = {}
        self.kinds: dict = {}
        self.sparse: dict[int, torch.Tensor] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in KINDS:
            key = (func, _spec(args), _spec(sorted(kwargs.items())))
            self.calls[key] += 1
            if key not in self.examples:
                self.examples[key] = (args, kwargs)
                self.kinds[key] = KINDS[func]
                for a in args:
                    if isinstance(a, torch.Tensor) and a.layout != torch.strided:
                        self.sparse[id(a)] = a  # keeps it alive, so its id stays unique
                        self.kinds[key] = "sparse"
        return func(*args, **kwargs)


def _fresh(value):
    """A new operand like `value`: dense tensors re-created (same shape, strides, dtype) with values in
    [0, 1) (Adam's second moments must not be negative), sparse ones reused, lists element-wise."""
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            return value
        out = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=value.device)
        return out.uniform_() if out.is_floating_point() else out.zero_()
    if isinstance(value, (list, tuple)):
        return type(value)(_fresh(v) for v in value)
    return value


def floor_seconds(recorder: FloorRecorder, clock, repeats: int = 3) -> dict[str, float]:
    """Seconds per kind (gemm, sparse, select, step) of the recorded calls, each distinct call timed alone (median of
    `repeats` after one warm-up run) and multiplied by its count."""
    out = dict.fromkeys(("gemm", "sparse", "select", "step"), 0.0)
    with torch.no_grad():  # replayed alone, without a graph (a product with `out=` refuses inputs needing grad)
        for key, count in recorder.calls.items():
            func = key[0]
            args, kwargs = recorder.examples[key]
            args, kwargs = _fresh(args), _fresh(kwargs)
            func(*args, **kwargs)
            times = []
            for _ in range(repeats):
                start = clock()
                func(*args, **kwargs)
                times.append(clock() - start)
            out[recorder.kinds[key]] += statistics.median(times) * count
    return out


def record_epoch(model, graph, cfg) -> FloorRecorder:
    """The floor's operations of one training epoch, as the trainer runs it (`ablate.train.fit`'s loop)."""
    from ablate.train import NegativeSampler, make_optimizer

    optimizer = make_optimizer(model, cfg)
    sampler = NegativeSampler(graph)
    recorder = FloorRecorder()
    model.train()
    model.on_epoch_start(0)
    order = torch.randperm(graph.num_edges, device=graph.device)
    users_all, pos_all = graph.users[order], graph.items[order]
    neg_all = sampler.sample(users_all) if model.uses_negatives else None
    with recorder:
        for start in range(0, graph.num_edges, cfg.batch_size):
            batch = slice(start, start + cfg.batch_size)
            loss = model.loss(users_all[batch], pos_all[batch], None if neg_all is None else neg_all[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return recorder


def measure(name: str, data: str, repeats: int, epochs: int, threads: int, clock: str, seed: int, queue) -> None:
    import ablate.train
    from ablate import models
    from ablate.data import TRAIN
    from ablate.graphs import InteractionGraph
    from ablate.train import TrainConfig, fit, make_evaluators, seed_everything

    torch.set_num_threads(threads)
    timer = time.process_time if clock == "cpu" else time.perf_counter
    ablate.train.time = types.SimpleNamespace(perf_counter=timer)  # the trainer's own timing, on this clock
    dataset = with_random_features(data, seed)
    device = torch.device("cpu")
    seed_everything(seed, device)
    cfg = TrainConfig(epochs=epochs, eval_every=epochs, patience=epochs + 1)
    graph = InteractionGraph(*dataset.pairs(TRAIN), dataset.n_users, dataset.n_items, device=device)
    model = models.build(name, graph, dataset.select_features(), {})
    valid, test = make_evaluators(dataset, cfg, device)
    recorder = record_epoch(model, graph, cfg)  # also the warm-up: first-call allocations, caches
    epoch_s, evals, floors = [], [], []
    for _ in range(repeats):  # alternated, so both see the same load on a shared machine
        result = fit(model, graph, valid, test, cfg)
        epoch_s.append(result.train_seconds / result.epochs)
        evals.append(result.eval_seconds / 2)  # one validation and one test ranking
        floors.append(floor_seconds(recorder, timer))
    floor = {k: statistics.median(f[k] for f in floors) for k in floors[0]}
    queue.put({"model": name, "epoch": statistics.median(epoch_s), "eval": statistics.median(evals),
               "floor": sum(floor.values()), **floor, "batches": -(-graph.num_edges // cfg.batch_size),
               "calls": sum(recorder.calls.values()), "distinct": len(recorder.calls)})


def write_timings(node: str, data: Path, rows: list[dict], conditions: str) -> Path:
    """The rows as `ablate.plan` timings: node type -> dataset shape -> model -> epoch and evaluation seconds."""
    from ablate.data import TRAIN, load

    dataset = load(data)
    shape = data.stem if data.is_file() else data.name
    out = Path(f"timings-{node}-{shape}.json")
    out.write_text(json.dumps({
        "shapes": {shape: {"users": dataset.n_users, "items": dataset.n_items,
                           "train_pairs": int((dataset.split == TRAIN).sum())}},
        "seconds": {node: {shape: {r["model"]: {"epoch": round(r["epoch"], 3), "eval": round(r["eval"], 3),
                                                "measured": f"benchmarks/floor.py, {conditions}"}
                                   for r in rows}}}}, indent=1))
    print(f"timings written to {out}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated (default: every registered model)")
    parser.add_argument("--data", help="interactions (.inter) or dataset directory (default: Amazon Baby)")
    parser.add_argument("--quick", action="store_true", help="ml100k-mm interactions, one repeat")
    parser.add_argument("--repeats", type=int, help="alternated epoch/floor measurements (default 3, --quick 1)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed fit (default 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a machine shared with other work, more threads than "
                             "free cores make every kernel wait for the slowest thread)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu (default): CPU seconds of the measuring process, i.e. its work without its waits "
                             "for a core on a shared machine (exact with one thread); wall: elapsed seconds")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--timings", metavar="NODE",
                        help="also write the epoch and evaluation seconds as timings of node type NODE for "
                             "`ablate grid --plan --timings` (to timings-NODE-<data>.json)")
    args = parser.parse_args(argv)
    data = Path(args.data) if args.data else (QUICK_DATA if args.quick else DEFAULT_DATA)
    repeats = args.repeats or (1 if args.quick else 3)
    if not data.exists():
        print(f"{data} is absent: this benchmark needs it (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    names = model_names(args.models)
    if names is None:
        return 2
    load_before = os.getloadavg()
    print(f"{data.name}, batch 2048, random features image 4096-d + text 384-d; torch {torch.__version__}, "
          f"{args.threads} thread(s) on {os.cpu_count()} cores, {args.clock} seconds; median of {repeats} alternated "
          f"measurements; load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    print(f"{'model':10s} {'epoch s':>8s} {'floor s':>8s} {'ratio':>6s} {'gemm s':>7s} {'sparse s':>8s} "
          f"{'top-k s':>7s} {'step s':>7s} {'batches':>7s} {'eval s':>7s}")
    rows = []
    context = mp.get_context("spawn")
    for name in names:
        queue = context.Queue()
        proc = context.Process(target=measure, args=(name, str(data), repeats, args.epochs, args.threads, args.clock, 0, queue))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            print(f"{name:10s} failed (exit code {proc.exitcode})", flush=True)
            continue
        r = queue.get()
        r["ratio"] = r["epoch"] / r["floor"]
        rows.append(r)
        print(f"{name:10s} {r['epoch']:8.3f} {r['floor']:8.3f} {r['ratio']:6.2f} {r['gemm']:7.3f} {r['sparse']:8.3f} "
              f"{r['select']:7.3f} {r['step']:7.3f} {r['batches']:7d} {r['eval']:7.3f}", flush=True)
    load_after = os.getloadavg()
    print(f"load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.timings and rows:
        write_timings(args.timings, data, rows, f"{args.threads} thread(s), {args.clock} seconds, load average {load_before[0]:.1f}-"
                                                f"{load_after[0]:.1f}, {time.strftime('%Y-%m-%d')}")
    if not rows:
        print("worst_ratio=nan model=none")
        return 1
    worst = max(rows, key=lambda r: r["ratio"])
    print(f"worst_ratio={worst['ratio']:.2f} model={worst['model']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
