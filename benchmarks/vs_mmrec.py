"""ablate beside MMRec's own code: seconds per training epoch and per full evaluation, same data, same settings.

NEEDS MMRec's SOURCE (github.com/enoche/MMRec), which is not part of this project: clone or unpack it anywhere
outside this repository and pass that folder (the one holding `src/`) as `--mmrec-dir`. MMRec runs unmodified
from its own tree; the only changes are the CPU-compatibility shims of `benchmarks/mmrec_cpu_shim.py`
(printed when applied). Its dependencies are this project's (numpy, pandas, scipy, pyyaml, torch).

Data: the Amazon Baby interactions (../shared/data/amazon/baby.inter, MMRec's ids and split) with random
features of the paper's widths (image 4096-d, text 384-d; speed does not depend on their content), the same
arrays for both: they are written once as MMRec's `image_feat.npy` / `text_feat.npy` into `--work-dir`.
Settings: batch 2048, evaluation chunks of 4096 users, each model's hyper-parameters at ablate's defaults,
given to MMRec's config in place of its search lists (printed per model), learning rate and its decay
included; `--threads` torch threads in both.

Each run is a fresh process: data loading and model construction (untimed), one warm-up epoch (untimed),
`--epochs` timed epochs, then full-ranking evaluations of the validation users. MMRec's epoch is what its
trainer times (`pre_epoch_processing`, `_train_epoch`, the scheduler step) and its evaluation is
`Trainer.evaluate` (scoring, masking, top-k, metrics); ablate's are `ablate.train.fit`'s training and
evaluation seconds (its evaluation: one validation and one test ranking, halved). Runs alternate MMRec,
ablate, model by model, `--repeats` times; the table gives medians, ranges in brackets. Seconds are the
process's CPU seconds by default (`--clock cpu`: with one thread, its work without its waits for a core on
a shared machine); `--clock wall` for elapsed seconds.

    python benchmarks/vs_mmrec.py --mmrec-dir ~/src/MMRec
    python benchmarks/vs_mmrec.py --mmrec-dir ~/src/MMRec --models VBPR,LightGCN --repeats 5 --threads 2
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

from epoch import DEFAULT_DATA, with_random_features

SEED = 0


def clock_of(name: str):
    return time.process_time if name == "cpu" else time.perf_counter


def ablate_settings(name: str) -> tuple[dict, dict]:
    """(model hyper-parameters, trainer settings) ablate runs `name` with by default."""
    from ablate import models
    from ablate.train import TrainConfig

    hparams = dict(models.get(name).defaults)
    cfg = TrainConfig().with_model_hparams(hparams)
    return hparams, {"learning_rate": cfg.lr, "learning_rate_scheduler": list(cfg.lr_decay or (1.0, 50)),
                     "train_batch_size": cfg.batch_size, "eval_batch_size": cfg.eval_chunk,
                     "weight_decay": cfg.weight_decay}


def prepare_mmrec_data(work_dir: Path, data: Path) -> Path:
    """MMRec's data folder `<work_dir>/baby/`: the interactions and the benchmark's random features."""
    import numpy as np

    folder = work_dir / "baby"
    folder.mkdir(parents=True, exist_ok=True)
    inter = folder / "baby.inter"
    if not inter.exists():
        inter.symlink_to(data.resolve())
    if not (folder / "image_feat.npy").exists() or not (folder / "text_feat.npy").exists():
        dataset = with_random_features(str(data), SEED)
        np.save(folder / "image_feat.npy", dataset.features["image"]["default"])
        np.save(folder / "text_feat.npy", dataset.features["text"]["default"])
    return folder


def run_mmrec(mmrec_dir: str, work_dir: str, name: str, settings: dict, threads: int, epochs: int, evals: int, clock: str,
              queue) -> None:
    import torch

    torch.set_num_threads(threads)
    from mmrec_cpu_shim import install

    shims = install()
    src = Path(mmrec_dir) / "src"
    os.chdir(src)  # MMRec reads configs/ relative to the working directory
    sys.path.insert(0, str(src))
    from utils.configurator import Config
    from utils.dataloader import EvalDataLoader, TrainDataLoader
    from utils.dataset import RecDataset
    from utils.utils import get_model, get_trainer, init_seed

    config = Config(name, "baby", {"use_gpu": False, "data_path": str(work_dir) + os.sep})
    given = {k: v for k, v in settings.items() if k in config.final_config_dict}
    for key, value in given.items():
        config[key] = value
    lists = [k for k in config["hyper_parameters"] if k != "seed" and isinstance(config[k], list)
             and k not in ("learning_rate_scheduler", "weight_size", "mess_dropout")]
    if lists:
        raise SystemExit(f"MMRec's {name} search lists {lists} have no ablate default to take their place")
    init_seed(SEED)
    dataset = RecDataset(config)
    train_ds, valid_ds, _ = dataset.split()
    for part in (dataset, train_ds, valid_ds):
        str(part)  # as MMRec's quick_start logs them: its __str__ also sets the `inter_num` the loaders read
    train_data = TrainDataLoader(config, train_ds, batch_size=config["train_batch_size"], shuffle=True)
    valid_data = EvalDataLoader(config, valid_ds, additional_dataset=train_ds, batch_size=config["eval_batch_size"])
    train_data.pretrain_setup()
    model = get_model(name)(config, train_data).to(config["device"])
    trainer = get_trainer()(config, model)
    timer = clock_of(clock)
    epoch_s = []
    for epoch in range(1 + epochs):  # the first is the warm-up
        start = timer()
        model.pre_epoch_processing()
        trainer._train_epoch(train_data, epoch)
        trainer.lr_scheduler.step()
        epoch_s.append(timer() - start)
    eval_s = []
    for _ in range(evals):
        start = timer()
        trainer.evaluate(valid_data)
        eval_s.append(timer() - start)
    queue.put({"epoch": epoch_s[1:], "warmup": epoch_s[0], "eval": eval_s, "batches": len(train_data),
               "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "shims": shims,
               "settings": given})


def run_ablate(data: str, name: str, threads: int, epochs: int, evals: int, clock: str, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    import ablate.train
    from ablate import models
    from ablate.data import TRAIN
    from ablate.graphs import InteractionGraph
    from ablate.train import TrainConfig, fit, make_evaluators, seed_everything

    ablate.train.time = types.SimpleNamespace(perf_counter=clock_of(clock))  # the trainer's own timing, on this clock
    dataset = with_random_features(data, SEED)
    device = torch.device("cpu")
    seed_everything(SEED, device)
    graph = InteractionGraph(*dataset.pairs(TRAIN), dataset.n_users, dataset.n_items, device=device)
    model = models.build(name, graph, dataset.select_features(), {})
    cfg = TrainConfig(epochs=1).with_model_hparams(model.hparams)
    valid, test = make_evaluators(dataset, cfg, device)
    warmup = fit(model, graph, valid, test, cfg)
    epoch_s, eval_s = [], []
    for _ in range(max(epochs, evals)):
        result = fit(model, graph, valid, test, cfg)  # one epoch, one validation and one test ranking
        epoch_s.append(result.train_seconds)
        eval_s.append(result.eval_seconds / 2)
    queue.put({"epoch": epoch_s[:epochs], "warmup": warmup.train_seconds, "eval": eval_s[:evals],
               "batches": -(-graph.num_edges // cfg.batch_size),
               "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def in_process(target, *args) -> dict | None:
    context = mp.get_context("spawn")
    queue = context.Queue()
    proc = context.Process(target=target, args=(*args, queue))
    proc.start()
    proc.join()
    return queue.get() if proc.exitcode == 0 else None


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mmrec-dir", required=True, type=Path,
                        help="MMRec's source tree (the folder holding src/), from github.com/enoche/MMRec")
    parser.add_argument("--models", default="VBPR,FREEDOM,LATTICE,LightGCN")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="interactions in MMRec's layout (default: Baby)")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "ablate-vs-mmrec",
                        help="where MMRec's data folder (features as .npy) is written")
    parser.add_argument("--repeats", type=int, default=3, help="alternated MMRec/ablate runs per model (default 3)")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per run, after one warm-up (default 1)")
    parser.add_argument("--evals", type=int, default=1, help="timed evaluations per run (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in both (default 1)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--json", type=Path, help="also write every run's numbers to this file")
    args = parser.parse_args(argv)
    if not (args.mmrec_dir / "src" / "utils" / "configurator.py").is_file():
        print(f"{args.mmrec_dir} does not hold MMRec's source (expected src/utils/configurator.py): this benchmark "
              "needs a copy of github.com/enoche/MMRec", file=sys.stderr)
        return 2
    if not args.data.is_file():
        print(f"{args.data} is absent: this benchmark needs the Amazon Baby interactions", file=sys.stderr)
        return 2
    names = args.models.split(",")
    prepare_mmrec_data(args.work_dir, args.data)
    import torch

    load = os.getloadavg()
    print(f"{args.data.name}, batch 2048, random features image 4096-d + text 384-d; torch {torch.__version__}, "
          f"{args.threads} thread(s) on {os.cpu_count()} cores, {args.clock} seconds; {args.repeats} alternated runs "
          f"x {args.epochs} epoch(s) after a warm-up; load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    runs = {n: {"mmrec": [], "ablate": []} for n in names}
    hparams, train = {}, {}
    for name in names:
        hparams[name], train[name] = ablate_settings(name)
    for repeat in range(args.repeats):
        for name in names:
            for side, target, targs in (
                    ("mmrec", run_mmrec, (str(args.mmrec_dir.resolve()), str(args.work_dir.resolve()), name,
                                          {**hparams[name], **train[name]})),
                    ("ablate", run_ablate, (str(args.data), name))):
                result = in_process(target, *targs, args.threads, args.epochs, args.evals, args.clock)
                if result is None:
                    print(f"  {name} {side} run {repeat + 1} failed", flush=True)
                    continue
                runs[name][side].append(result)
                if repeat == 0 and side == "mmrec":
                    print(f"  {name}: MMRec shims {result['shims']}; settings {result['settings']}", flush=True)
                print(f"  run {repeat + 1} {name:9s} {side:6s} epoch {statistics.median(result['epoch']):7.2f} "
                      f"(warm-up {result['warmup']:.2f})  eval {statistics.median(result['eval']):7.2f}  "
                      f"peak {result['peak_mb']:6.0f} MB  load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"\n{'model':9s} {'MMRec epoch s':>20s} {'ablate epoch s':>20s} {'x':>5s} {'MMRec eval s':>20s} "
          f"{'ablate eval s':>20s} {'x':>5s} {'peak MB MMRec/ablate':>21s}")
    for name in names:
        mm, ab = runs[name]["mmrec"], runs[name]["ablate"]
        if not mm or not ab:
            print(f"{name:9s} (no complete runs)")
            continue
        cols = {}
        for key in ("epoch", "eval"):
            cols[key] = ([v for r in mm for v in r[key]], [v for r in ab for v in r[key]])
        ratio = {k: statistics.median(cols[k][0]) / statistics.median(cols[k][1]) for k in cols}
        peak = f"{statistics.median(r['peak_mb'] for r in mm):.0f} / {statistics.median(r['peak_mb'] for r in ab):.0f}"
        print(f"{name:9s} {spread(cols['epoch'][0]):>20s} {spread(cols['epoch'][1]):>20s} {ratio['epoch']:5.1f} "
              f"{spread(cols['eval'][0]):>20s} {spread(cols['eval'][1]):>20s} {ratio['eval']:5.1f} {peak:>21s}")
    load = os.getloadavg()
    print(f"load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
