"""The grid's command line, `ablate grid` and `experiments/full_grid.py` (the script `ray job submit` runs on a
cluster): the same options (`add_grid_arguments`) and the same function (`cmd_grid`). Nothing heavy is imported
until a grid runs. Also `ablate results compact`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_grid_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--preset", help="a built-in grid: demo (the default), paper or full")
    what.add_argument("--spec", help="a grid spec file: .yaml/.yml (GridSpec fields) or .py (defining SPEC)")
    parser.add_argument("--data-root", help="directory holding the datasets the spec names (baby, sports, ...)")
    parser.add_argument("--results", default="results", help="results directory or URI, e.g. s3://bucket/ablate")
    parser.add_argument("--storage", help="Ray Tune storage (default: <results>/_tune)")
    parser.add_argument("--resume", action="store_true", help="restore an interrupted run; run only missing cells")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or "local",
                        help="Ray: 'local' (start one here, the default), 'auto' (this cluster), or host:port")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    parser.add_argument("--models", nargs="+", help="override the spec's models")
    parser.add_argument("--datasets", nargs="+", help="override the spec's datasets")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the spec's seeds")
    parser.add_argument("--epochs", type=int, help="override the maximum epochs")
    parser.add_argument("--cpus-per-trial", type=float, help="override the per-trial CPUs of every model")
    parser.add_argument("--gpus-per-trial", type=float, help="override the per-trial GPUs of every model (0.25 packs 4)")
    parser.add_argument("--device", default="auto", help="auto (the GPU Ray assigns, else CPU), cpu, cuda")
    parser.add_argument("--reuse-actors", choices=("yes", "no"),
                        help="reuse trial workers (default: yes on a local Ray, no on a cluster, where reuse was "
                             "seen to keep every trial on the first node)")
    parser.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument("--checkpoint-every", type=int, default=10,
                        help="evaluations between trial checkpoints, from which a trial whose node was lost "
                             "continues (default 10; 0: none)")
    plan = parser.add_argument_group("plan (printed before a run; --plan prints it and trains nothing)")
    plan.add_argument("--plan", action="store_true", help="print the cells, time and cost of the grid, then exit")
    plan.add_argument("--node", default="cpu-2", help="node type of the estimate (the timings table's names)")
    plan.add_argument("--workers", type=int, default=1, help="nodes running trials at once")
    plan.add_argument("--price-per-hour", type=float, help="price of one node-hour, for the cost column")
    plan.add_argument("--timings", nargs="+", default=[], help="further timings files (benchmarks/floor.py --timings)")
    return parser


def print_plan(spec, args, datasets: dict) -> None:
    """The grid's plan (`ablate.plan`) of the cells without a row in ``--results``; the datasets it loads are
    added to `datasets` (source -> Dataset). A plan that cannot be made raises SpecError."""
    from .plan import Timings, plan_grid

    print(plan_grid(spec, args.node, workers=args.workers, price=args.price_per_hour, results=args.results,
                    timings=Timings.load(*args.timings), datasets=datasets).format(), flush=True)


def cmd_grid(args: argparse.Namespace, prog: str = "full_grid") -> int:
    from .data import DataError
    from .grid import SpecError, load_spec
    from .study import GridInterrupted, StorageError

    try:
        spec = load_spec(args.spec or args.preset or "demo")
        resources = dict(spec.resources)
        given = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
        given = {k: v for k, v in given.items() if v is not None}  # for every model, the spec's per-model values too
        resources.update(given)
        model_resources = {m: {k: v for k, v in r.items() if k not in given} for m, r in spec.model_resources.items()}
        spec = spec.with_overrides(models=args.models, datasets=args.datasets, seeds=args.seeds,
                                   epochs=args.epochs, data_root=args.data_root, resources=resources,
                                   model_resources=model_resources)
        datasets = {}  # loaded once, for the plan and the run
        if args.plan:
            print_plan(spec, args, datasets)
            return 0
        try:
            print_plan(spec, args, datasets)
        except SpecError as exc:
            print(f"(no plan: {exc})")
        from .tune import run_grid  # Ray is imported once the spec is known to be good

        run = run_grid(spec, results=args.results, storage=args.storage, resume=args.resume, datasets=datasets,
                       address=args.address, num_cpus=args.num_cpus, device=args.device,
                       progress_every=args.progress_every, checkpoint_every=args.checkpoint_every,
                       reuse_actors=(args.reuse_actors or ("yes" if args.address == "local" else "no")) == "yes")
    except (SpecError, DataError, StorageError, FileNotFoundError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except GridInterrupted as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 130
    print_summary(spec, run)
    return 0 if not run["grid"]["failed"] and not run["search"]["failed"] else 1


DESCRIPTION = ("Run a modality-knockout grid with Ray Tune (hyper-parameter search on validation, then every "
               "knockout cell), append rows, print a summary.")


def add_grid_command(sub) -> None:
    """`ablate grid`, on the `ablate` command's subparsers."""
    grid = sub.add_parser("grid", help="run a knockout grid on Ray Tune (search, then every cell)",
                          description=DESCRIPTION)
    add_grid_arguments(grid).set_defaults(func=lambda args: cmd_grid(args, prog="ablate grid"))


def grid_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="full_grid", description=DESCRIPTION)
    return cmd_grid(add_grid_arguments(parser).parse_args(argv))


def print_summary(spec, run: dict) -> None:
    from .study import summary_table

    print()
    for stage in ("search", "grid"):
        s = run[stage]
        print(f"{stage}: {s['total']} cells, {s['already']} already done, {s['ran']} ran, {s['failed']} failed")
        for where, message in s["errors"].items():
            print(f"  failed: {where}: {message}")
    print("chosen hyper-parameters (by validation only):")
    for where, choice in sorted(run["chosen"].items()):
        source, model, cell = where[0], where[1], "/".join(where[2:5])
        score = f"{choice['metric']}={choice['score']:.4f} " if choice["metric"] else ""
        print(f"  {Path(source.split(':')[0]).name}/{model}{'/' + cell if cell else ''}: {choice['hparams']} "
              f"({score}{choice['points']} points){' - ' + choice['note'] if choice['note'] else ''}")
    metric = spec.train.get("valid_metric", "recall@20")
    print(f"\nbaseline test {metric} and each knockout's mean paired change vs baseline over seeds "
          f"(as `ablate report`; tuning protocol: {spec.hparams.protocol}):")
    print(summary_table(run["cells"], run["results"], metric))
    print(f"\nresults: {run['results']} (one Parquet row per trial; chosen hyper-parameters in "
          f"{run['results'].rstrip('/')}/hparams)\nTune state: {run['storage']} | {run['seconds']:.0f} s")


def cmd_results_compact(args: argparse.Namespace) -> int:
    from .results import ResultStore

    store = ResultStore(args.results)
    done = store.compact(rows_per_file=args.rows_per_file)
    print(f"{args.results}: {done['files']} row file(s) merged, {done['rows']} row(s) written to compacted "
          f"files, {done['deleted']} file(s) removed")
    return 0


def add_results_commands(sub) -> None:
    results = sub.add_parser("results", help="the results folder of a study")
    results_sub = results.add_subparsers(dest="results_command", required=True)
    compact = results_sub.add_parser(
        "compact", help="merge the one-row files into larger Parquet files (safe to kill; one at a time)")
    compact.add_argument("results", help="results directory or URI (s3://bucket/path)")
    compact.add_argument("--rows-per-file", type=int, default=20_000)
    compact.set_defaults(func=cmd_results_compact)


if __name__ == "__main__":
    sys.exit(grid_main())
