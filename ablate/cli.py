"""The `ablate` command line."""
from __future__ import annotations

import argparse
import json
import shutil
import sys

from . import knockout


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(items: list[str], what: str) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"ablate: {what} {item!r}: expected key=value")
        out[key] = _value(value)
    return out


def option_flag(name: str) -> str:
    """The command-line flag of an option checked by `TrialConfig` (``train.epochs`` -> ``--epochs``)."""
    head, _, rest = name.partition(".")
    if head == "hparams" and rest:
        return f"--hp {rest}"
    return "--" + (rest if head == "train" and rest else name).replace("_", "-")


def cmd_trial(args) -> int:
    import torch

    from .console import TrialProgress
    from .data import DataError, load
    from .options import OptionError
    from .results import ResultStore
    from .trial import TrialConfig, resolve_device, run_trial

    train = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                 eval_every=args.eval_every, valid_metric=args.valid_metric)
    try:  # every option is checked before the data is read or anything is trained
        config = TrialConfig(dataset=args.data, model=args.model, condition=args.condition, fill=args.fill,
                             phase=args.phase, seed=args.seed, encoders=_pairs(args.encoder, "--encoder"),
                             hparams=_pairs(args.hp, "--hp"), train=train, device=args.device)
        resolve_device(config.device)
        if args.threads < 0:
            raise OptionError("threads", "0 (all cores) or more", args.threads)
        dataset = load(args.data, allow_sparse_ids=args.allow_sparse_ids)
        dataset.select_features(config.encoders)
    except OptionError as exc:
        print(f"ablate: {exc.renamed(option_flag(exc.name))}", file=sys.stderr)
        return 2
    except (DataError, KeyError, ValueError) as exc:
        print(f"ablate: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}", file=sys.stderr)
        return 2
    store = ResultStore(args.results)
    if not args.force and config.key() in store.done_keys() and store.read_table(["key"], keys=[config.key()]).num_rows:
        print(f"already done (key {config.key()}) in {args.results}; --force runs it again")
        return 0
    print(f"{config.model} on {dataset.name} ({dataset.n_users} users, {dataset.n_items} items), "
          f"condition={config.condition} fill={config.fill} phase={config.phase} seed={config.seed}", flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = None if args.quiet else TrialProgress(config.train.epochs, config.train.valid_metric,
                                                       every=args.progress_every)
    try:
        row = run_trial(dataset, config, on_eval=progress.update if progress else None)
    finally:
        if progress is not None:
            progress.close()
    path = store.append(row)
    print_row(row)
    print(f"row appended: {path}")
    return 0 if row["status"] == "finished" else 1


def print_row(row: dict) -> None:
    from .metric_names import DEFAULT_KS, METRICS

    header = "metric".ljust(10) + "".join(f"{split}@{k}".rjust(11) for split in ("valid", "test") for k in DEFAULT_KS)
    print(header)
    for metric in METRICS:
        if metric == "hit":
            continue
        cells = "".join(f"{row[f'{split}_{metric}@{k}']:11.4f}" for split in ("valid", "test") for k in DEFAULT_KS)
        print(metric.ljust(10) + cells)
    print(f"status {row['status']}{': ' + row['reason'] if row['reason'] else ''} | best epoch {row['best_epoch']} | "
          f"epochs {row['epochs']} | {row['seconds_per_epoch']:.3f} s/epoch | device {row['device']}")


def cmd_data_check(args) -> int:
    from .data import DataError, load

    try:
        dataset = load(args.path, allow_sparse_ids=args.allow_sparse_ids)
    except DataError as exc:
        print(f"problem: {exc}", file=sys.stderr)
        return 1
    summary = dataset.summary()
    print(f"{args.path}: ok")
    for key in ("name", "users", "items", "interactions", "train", "valid", "test"):
        print(f"  {key:13s}{summary[key]}")
    print(f"  {'density':13s}{summary['density']:.6f}")
    if not dataset.features:
        print("  features     none (ID-only models only)")
    for modality, variants in summary["features"].items():
        listed = ", ".join(f"{v} {tuple(shape)}" + (" (default)" if v == dataset.default_variants.get(modality) else "")
                           for v, shape in variants.items())
        print(f"  {modality + ':':13s}{listed}")
    return 0


SPARSE_IDS_HELP = "accept user or item ids that leave more than half of 0..max unused (tables are sized by max + 1)"


class _OneLineHelp(argparse.HelpFormatter):
    """Wide enough that each command's help stays on one line."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=14, width=max(100, shutil.get_terminal_size().columns))


def build_parser() -> argparse.ArgumentParser:
    # nothing heavy here: the model registry (torch, PyG) is imported by the commands that train
    parser = argparse.ArgumentParser(prog="ablate", description="Modality knockout studies of multimodal "
                                     "recommenders.", formatter_class=_OneLineHelp)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    trial = sub.add_parser("trial", help="train and evaluate one model under one knockout condition")
    from .cli_grid import add_grid_command

    add_grid_command(sub)
    trial.add_argument("--data", default="synthetic",
                       help="'synthetic', 'synthetic:key=value,...', or a dataset directory in the MMRec layout")
    trial.add_argument("--model", default="FREEDOM", help="a registered model (an unknown name lists them)")
    trial.add_argument("--condition", default="baseline", choices=list(knockout.CONDITIONS))
    trial.add_argument("--fill", default="noise", choices=list(knockout.FILLS))
    trial.add_argument("--phase", default="retrain", choices=list(knockout.PHASES),
                       help="retrain: knock out for training and evaluation; eval_only: train on real features")
    trial.add_argument("--seed", type=int, default=0)
    trial.add_argument("--epochs", type=int, default=1000)
    trial.add_argument("--batch-size", type=int, default=2048)
    trial.add_argument("--lr", type=float, default=1e-3)
    trial.add_argument("--patience", type=int, default=20, help="evaluations without improvement before stopping")
    trial.add_argument("--eval-every", type=int, default=1)
    trial.add_argument("--valid-metric", default="recall@20")
    trial.add_argument("--hp", action="append", metavar="NAME=VALUE", help="model hyper-parameter (repeatable)")
    trial.add_argument("--encoder", action="append", metavar="MODALITY=VARIANT", help="feature variant (repeatable)")
    trial.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    trial.add_argument("--threads", type=int, default=0,
                       help="CPU threads of the trial (default 0: all cores); 1 beside other work, whose "
                            "threads would otherwise take turns with the trial's")
    trial.add_argument("--results", default="results", help="results directory or URI (Parquet rows)")
    trial.add_argument("--force", action="store_true", help="run even if this trial's row exists")
    trial.add_argument("--allow-sparse-ids", action="store_true", help=SPARSE_IDS_HELP)
    trial.add_argument("--quiet", action="store_true", help="no progress line while the trial trains")
    trial.add_argument("--progress-every", type=float, default=30.0,
                       help="seconds between progress lines when the output is not a terminal")
    trial.set_defaults(func=cmd_trial)

    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="load and validate a dataset; report what it holds or its problem")
    check.add_argument("path")
    check.add_argument("--allow-sparse-ids", action="store_true", help=SPARSE_IDS_HELP)
    check.set_defaults(func=cmd_data_check)
    from .cli_data import add_data_commands, add_features_commands

    add_data_commands(data_sub)
    add_features_commands(sub)
    from .cli_report import add_report_commands

    add_report_commands(sub)
    from .cli_grid import add_results_commands

    add_results_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
