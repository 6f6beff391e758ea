"""Ray Tune wiring: grid cells -> one `Tuner` per stage, datasets shared through the object store, W&B, resume.

- The cells still missing from the results become one ``grid_search`` axis of the Tuner's ``param_space``
  (each value is one `TrialConfig` as a dict), so a rerun runs only what is missing.
- The driver loads every dataset once; ``tune.with_parameters`` puts them in Ray's object store and each
  trial reads read-only, zero-copy numpy views. Knockout, graphs and the model are built inside the trial.
- ``tune.with_resources`` gives each trial its CPUs and (possibly fractional) GPUs; the trial trains on the
  GPU Ray assigned it (Ray sets ``CUDA_VISIBLE_DEVICES``, so ``cuda`` is that GPU).
- Each evaluation is a ``tune.report``; Ray's ``WandbLoggerCallback`` streams it to W&B, one run per trial,
  grouped by dataset/model and tagged by condition, fill, phase, seed and encoders. W&B runs offline (run
  files next to the trial) when no API key is configured and is off with ``WANDB_MODE=disabled``.
- A finished trial appends its row to the results itself (from the worker), so a row survives a driver
  crash; a trial whose key is already there returns at once. Tune's own state lives at
  ``storage_path/<grid>-<stage>``; ``resume=True`` restores it with ``Tuner.restore``.
- A trial whose worker or node dies is retried (``FailureConfig(max_failures)``).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import ray
from ray import tune
from ray.air.integrations.wandb import WandbLoggerCallback

from .trial import TrialConfig, run_trial

SECRET_ENV = ("WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


# ---------------------------------------------------------------- W&B mode and Ray start
def wandb_mode() -> str:
    """``WANDB_MODE`` when set; else ``online`` with an API key or a ``wandb login``, else ``offline``."""
    mode = os.environ.get("WANDB_MODE", "").strip()
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        if "api.wandb.ai" in netrc.read_text():
            return "online"
    except OSError:
        pass
    return "offline"


def start_ray(address: str | None = "local", num_cpus: int | None = None) -> None:
    """Connect to (or start) Ray with the W&B mode fixed first (it must be set before Ray starts).

    `address`: ``local`` starts a private local Ray; ``auto`` joins the cluster of this machine (on a
    cluster's head node); ``host:port`` joins that cluster.
    """
    os.environ["WANDB_MODE"] = wandb_mode()
    if ray.is_initialized():
        return
    env = {"WANDB_MODE": os.environ["WANDB_MODE"], "WANDB_SILENT": os.environ.get("WANDB_SILENT", "true")}
    # endpoint of an S3-compatible store, when one is used (never credentials: those come from the node)
    for name in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    ray.init(address=address, num_cpus=num_cpus if address in (None, "local") else None,
             runtime_env={"env_vars": env}, log_to_driver=True, configure_logging=True,
             logging_level="WARNING")


# ---------------------------------------------------------------- the trial
def _memory_probe(data) -> dict:
    """Private memory (USS) of this process before and after reading every feature array once."""
    import numpy as np
    import psutil

    proc = psutil.Process()
    before = proc.memory_full_info().uss
    total = 0.0
    nbytes = 0
    for variants in data.features.values():
        for array in variants.values():
            total += float(np.add.reduce(array, axis=None, dtype=np.float64))
            nbytes += array.nbytes
    after = proc.memory_full_info().uss
    shared = all(not a.flags.writeable for v in data.features.values() for a in v.values())
    return {"probe_private_before_mb": before / 2**20, "probe_private_after_mb": after / 2**20,
            "probe_feature_mb": nbytes / 2**20, "probe_read_only": shared, "probe_checksum": total}


def grid_trainable(config: dict, datasets: dict | None = None, options: dict | None = None) -> None:
    """One grid cell as a Tune function trainable (see the module docstring)."""
    from .results import ResultStore

    options = options or {}
    spec = config["cell"]
    cell = TrialConfig.from_dict({**spec["trial"], "device": _device(options)})
    store = ResultStore(options["results"])
    key = cell.key()
    if store.has(key):  # finished before (a retry after the row was written, or a rerun)
        tune.report({"done": True, "skipped": 1})
        return
    cpus = options.get("cpus_per_trial", 1)
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    data = datasets[cell.dataset]
    extra = _memory_probe(data) if options.get("probe_memory") else {}
    if options.get("hold_seconds"):  # lets a test keep several trials alive together
        time.sleep(options["hold_seconds"])

    def on_eval(point: dict) -> None:
        tune.report({**point, **extra})

    row = run_trial(data, cell, on_eval=on_eval)
    row.update(spec.get("row", {}))
    row.update({k: v for k, v in extra.items() if k != "probe_checksum"})
    row["ray_node"] = ray.get_runtime_context().get_node_id()
    store.append(row)
    final = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tune.report({**final, **extra, "status": row["status"], "key": key, "done": True, "skipped": 0})


def _device(options: dict) -> str:
    if options.get("device", "auto") != "auto":
        return options["device"]
    if options.get("gpus_per_trial", 0) > 0 and ray.get_gpu_ids():
        return "cuda"  # Ray restricted CUDA_VISIBLE_DEVICES to this trial's GPU(s)
    return "cpu"


# ---------------------------------------------------------------- W&B and progress callbacks
class GroupedWandb(WandbLoggerCallback):
    """Ray's W&B callback, with each trial's run grouped by dataset/model and tagged by its cell."""

    def log_trial_start(self, trial):
        cell = trial.config.get("cell", {}).get("trial", {})
        dataset = Path(str(cell.get("dataset", "?")).split(":")[0]).name
        self.group = f"{dataset}/{cell.get('model', '?')}"
        encoders = cell.get("encoders") or {}
        self.kwargs["tags"] = [f"condition={cell.get('condition')}", f"fill={cell.get('fill')}",
                               f"phase={cell.get('phase')}", f"seed={cell.get('seed')}",
                               *(f"encoder:{m}={v}" for m, v in sorted(encoders.items()))]
        self.kwargs.setdefault("job_type", trial.config.get("cell", {}).get("row", {}).get("stage", "grid"))
        super().log_trial_start(trial)

    def on_experiment_end(self, trials, **info):
        # a trial stopped by Ctrl-C never gets log_trial_end (Tune marks it TERMINATED all the same), so its
        # logging actor would wait out the whole upload_timeout (60 s) before being killed. Tell every actor
        # still open to finish, as Ray's own __del__ does: an actor already told finishes as before.
        for trial in list(self._trial_logging_actors):
            self._signal_logging_actor_stop(trial=trial)
        super().on_experiment_end(trials, **info)


class Progress(tune.Callback):
    """Prints cells done / running / pending / failed and an ETA every `every` seconds and at the end."""

    def __init__(self, stage: str, total: int, already: int, every: float = 10.0, stream=None):
        self.stage, self.total, self.already, self.every = stage, total, already, every
        self.started, self.last = time.time(), 0.0
        self.done = self.failed = self.retries = 0
        self.running: set[str] = set()
        self.unfinished = 0  # trials neither completed nor failed when the experiment ended (Ctrl-C)
        self.stream = stream  # None: sys.stdout at print time (the callback is pickled with Tune's state)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.retries += 1
        self.running.discard(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.done += 1

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed += 1

    def on_step_end(self, iteration, trials, **info):
        if time.time() - self.last >= self.every:
            self.print()

    def on_experiment_end(self, trials, **info):
        self.unfinished = max(0, len(trials) - self.done - self.failed)
        self.print()

    def line(self) -> str:
        elapsed = time.time() - self.started
        done = self.already + self.done
        pending = max(0, self.total - done - self.failed - len(self.running))
        left = pending + len(self.running)
        eta = "?"
        if self.done and left:
            eta = _duration(elapsed / self.done * left)
        elif not left:
            eta = "0s"
        return (f"[{self.stage}] {done}/{self.total} done, {len(self.running)} running, {pending} pending, "
                f"{self.failed} failed, {self.retries} retried | {_duration(elapsed)} elapsed, ETA {eta}")

    def print(self) -> None:
        self.last = time.time()
        print(self.line(), file=self.stream or sys.stdout, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# ---------------------------------------------------------------- one stage
class GridInterrupted(Exception):
    """A stage ended before all its trials did (Ctrl-C); every row already written is kept."""

    def __init__(self, stage: str, experiment: str, rows: int):
        super().__init__(f"interrupted during the {stage} stage; {rows} row(s) of this run are kept, and "
                         f"`--resume` continues it ({experiment})")
        self.stage, self.experiment, self.rows = stage, experiment, rows


def run_cells(cells: list[TrialConfig], datasets: dict, *, results: str, storage: str, name: str,
              resources: dict, max_failures: int = 2, resume: bool = False, stage: str = "grid",
              wandb_project: str = "ablate", row_extra: dict[str, dict] | None = None,
              device: str = "auto", reuse_actors: bool = True, probe_memory: bool = False,
              hold_seconds: float = 0.0, progress_every: float = 10.0, verbose: int = 0,
              wandb_dir: str | None = None) -> dict:
    """Run the cells of `cells` missing from `results` as one Tune experiment `storage/name`.

    `row_extra[key]` adds columns to that cell's row. Returns counts: total, already, ran, failed and the
    Tune errors (trial id -> message).
    """
    from .results import ResultStore

    store = ResultStore(results)
    done = store.done_keys()
    pending = [c for c in cells if c.key() not in done]
    already = len(cells) - len(pending)
    summary = {"total": len(cells), "already": already, "ran": 0, "failed": 0, "errors": {}}
    experiment = _join(storage, name)
    restorable = resume and tune.Tuner.can_restore(experiment)
    if not pending and not restorable:
        print(f"[{stage}] all {len(cells)} cells already in {results}", flush=True)
        return summary
    options = {"results": results, "cpus_per_trial": resources.get("cpu", 1),
               "gpus_per_trial": resources.get("gpu", 0), "device": device, "probe_memory": probe_memory,
               "hold_seconds": hold_seconds}
    trainable = tune.with_resources(
        tune.with_parameters(grid_trainable, datasets=datasets, options=options),
        {"cpu": resources.get("cpu", 1), "gpu": resources.get("gpu", 0)})
    progress = Progress(stage, len(cells), already, every=progress_every)
    callbacks: list = [progress]
    if os.environ.get("WANDB_MODE", wandb_mode()) != "disabled":
        # W&B run files go to `wandb_dir` on the driver's node: Tune's copy of a trial folder to storage can
        # happen before W&B has finished writing, so the trial folder is not a safe place for them
        wandb_dir = wandb_dir or default_wandb_dir(results, name)
        Path(wandb_dir).mkdir(parents=True, exist_ok=True)
        callbacks.append(GroupedWandb(project=wandb_project, log_config=False, upload_timeout=60, dir=wandb_dir))
    run_config = tune.RunConfig(
        name=name, storage_path=storage, callbacks=callbacks, verbose=verbose,
        failure_config=tune.FailureConfig(max_failures=max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
    if restorable:
        print(f"[{stage}] restoring the interrupted run at {experiment}", flush=True)
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
        # the restored run keeps its own callbacks' settings; progress is reported by the counts below
    else:
        print(f"[{stage}] {len(pending)} of {len(cells)} cells to run ({already} already in {results})", flush=True)
        row_extra = row_extra or {}
        space = [{"trial": _as_config(c), "row": {"stage": stage, **row_extra.get(c.key(), {})}} for c in pending]
        tuner = tune.Tuner(
            trainable,
            param_space={"cell": tune.grid_search(space)},
            tune_config=tune.TuneConfig(reuse_actors=reuse_actors, trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_dirname),
            run_config=run_config)
    grid = tuner.fit()
    # Tune returns normally after Ctrl-C, the stopped trials marked TERMINATED. Signs of it: trials the progress
    # callback saw neither complete nor fail (a restored run carries Tune's copy of the callback, not this
    # one), or a trial without an error whose row is missing (every finished trial writes its row first;
    # one stopped before its first report has no config either). Stop here then, so that a search stage cut
    # short never feeds the knockout stage.
    rows = store.done_keys()
    summary["ran"] = sum(c.key() in rows for c in pending)  # rows this run added
    stopped = [r for r in grid if r.error is None
               and (not r.config or TrialConfig.from_dict(r.config["cell"]["trial"]).key() not in rows)]
    if progress.unfinished or stopped:
        raise GridInterrupted(stage, experiment, summary["ran"])
    for result in grid:
        if result.error is not None:
            summary["errors"][result.path or "?"] = str(result.error).strip().splitlines()[-1][:300]
    summary["failed"] = len(pending) - summary["ran"]
    if restorable:  # cells the interrupted run never got to (or that its param space did not hold)
        rest = run_cells(cells, datasets, results=results, storage=storage, name=f"{name}-rest", resources=resources,
                         max_failures=max_failures, resume=False, stage=stage, wandb_project=wandb_project,
                         row_extra=row_extra, device=device, reuse_actors=reuse_actors,
                         probe_memory=probe_memory, hold_seconds=hold_seconds, progress_every=progress_every,
                         verbose=verbose, wandb_dir=wandb_dir)
        summary["ran"] += rest["ran"]
        summary["failed"] = rest["failed"]  # what is still missing after both
        summary["errors"] = (rest["errors"] or summary["errors"]) if rest["failed"] else {}
    return summary


def default_wandb_dir(results: str, name: str) -> str:
    """``<results>/wandb`` for local results, else ``~/ablate-wandb/<experiment>`` on the driver's node."""
    if "://" in results:
        return str(Path.home() / "ablate-wandb" / name)
    return str(Path(results).resolve() / "wandb")


def _as_config(cell: TrialConfig) -> dict:
    out = asdict(cell)
    out.pop("device")
    out["train"]["ks"] = list(out["train"]["ks"])
    return out


def _trial_name(trial) -> str:
    cell = trial.config.get("cell", {}).get("trial") or {}
    return (f"{cell.get('model')}-{cell.get('condition')}-{cell.get('fill')}-{cell.get('phase')}"
            f"-s{cell.get('seed')}-{trial.trial_id}")


def _trial_dirname(trial) -> str:
    return _trial_name(trial)


def _join(base: str, name: str) -> str:
    if "://" in base:
        head, _, query = base.partition("?")
        return f"{head.rstrip('/')}/{name}" + (f"?{query}" if query else "")
    return str(Path(base) / name)


def storage_for(results: str, storage: str | None) -> str:
    """Tune's storage: `storage`, else ``<results>/_tune`` (local paths made absolute)."""
    base = storage or _join(results, "_tune")
    if "://" in base:
        return base
    return str(Path(base).resolve())


# ---------------------------------------------------------------- both stages
def choose_hparams(spec, search: list[TrialConfig], results: str) -> dict[tuple[str, str], dict]:
    """Per (dataset source, model): the searched point with the best mean *validation* metric over seeds.

    Collapsed trials score as worst; test metrics are not read. Returns {(source, model): {hparams, metric,
    score, points, trials, note}}.
    """
    import json

    import numpy as np

    from .results import ResultStore

    frame = ResultStore(results).read()
    metric = "valid_" + search[0].train.valid_metric if search else ""
    by_key = {} if frame.empty else frame.set_index("key")
    chosen: dict[tuple[str, str], dict] = {}
    groups: dict[tuple[str, str], dict[str, list]] = {}
    for cell in search:
        point = json.dumps(cell.hparams, sort_keys=True)
        slot = groups.setdefault((cell.dataset, cell.model), {}).setdefault(point, [])
        if len(by_key) and cell.key() in by_key.index:
            row = by_key.loc[cell.key()]
            slot.append(float(row[metric]) if row["status"] == "finished" else -np.inf)
    for (source, model), points in groups.items():
        scored = {p: float(np.mean(v)) for p, v in points.items() if v}
        note = ""
        if not scored:
            best, note = next(iter(points)), "no search trial finished: the first point is used"
        else:
            best = max(scored, key=lambda p: (scored[p], -list(points).index(p)))
            if not np.isfinite(scored[best]):
                note = "every searched point collapsed: the first is used"
                best = next(iter(points))
        chosen[(source, model)] = {"hparams": json.loads(best), "metric": metric,
                                   "score": scored.get(best, float("nan")), "points": len(points),
                                   "trials": sum(len(v) for v in points.values()), "note": note}
    return chosen


def save_choices(spec, chosen: dict, results: str) -> None:
    """Append the chosen hyper-parameters to ``<results>/hparams`` (one row per dataset, model and choice)."""
    import hashlib
    import json

    from .results import ResultStore

    store = ResultStore(results).child("hparams")
    have = set(store.read_records().get("key", []))
    for (source, model), choice in sorted(chosen.items()):
        record = {"grid": spec.name, "data_source": source, "model": model,
                  "hparams": json.dumps(choice["hparams"], sort_keys=True), "chosen_by": choice["metric"],
                  "score": choice["score"], "points": choice["points"], "trials": choice["trials"],
                  "note": choice["note"], "search_space": json.dumps(spec.search_points(model), sort_keys=True),
                  "chosen_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        ident = {k: record[k] for k in ("grid", "data_source", "model", "hparams", "chosen_by", "search_space")}
        record["key"] = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
        if record["key"] not in have:
            store.append_record(record)


def run_grid(spec, results: str = "results", storage: str | None = None, resume: bool = False,
             address: str | None = "local", num_cpus: int | None = None, device: str = "auto",
             progress_every: float = 10.0, verbose: int = 0, **run_options) -> dict:
    """Both stages of `spec` (hyper-parameter search, then the knockout grid); returns what happened."""
    import json

    from .data import load

    started = time.time()
    start_ray(address, num_cpus)
    storage = storage_for(results, storage)
    if "://" not in results:
        results = str(Path(results).resolve())
    sources = list(dict.fromkeys(spec.dataset_source(d) for d in spec.datasets))
    datasets = {source: load(source) for source in sources}
    common = dict(datasets=datasets, results=results, storage=storage, resources=spec.resources,
                  max_failures=spec.max_failures, resume=resume, wandb_project=spec.wandb_project,
                  device=device, progress_every=progress_every, verbose=verbose, **run_options)
    search = spec.search_cells()
    needs_search = any(len(spec.search_points(m)) > 1 for m in spec.models)
    if needs_search:
        stage1 = run_cells(search, name=f"{spec.name}-search", stage="search", **common)
        chosen = choose_hparams(spec, search, results)
    else:
        stage1 = {"total": 0, "already": 0, "ran": 0, "failed": 0, "errors": {}}
        chosen = {(c.dataset, c.model): {"hparams": c.hparams, "metric": "", "score": float("nan"), "points": 1,
                                         "trials": 0, "note": "defaults (no search)"} for c in search}
    save_choices(spec, chosen, results)
    cells = spec.knockout_cells({k: v["hparams"] for k, v in chosen.items()}, datasets)
    extra = {c.key(): {"grid": spec.name, "hparam_choice": json.dumps(
        {k: v for k, v in chosen[(c.dataset, c.model)].items() if k != "hparams"}, sort_keys=True)}
        for c in cells}
    stage2 = run_cells(cells, name=f"{spec.name}-grid", stage="grid", row_extra=extra, **common)
    return {"search": stage1, "grid": stage2, "cells": cells, "chosen": chosen, "results": results,
            "storage": storage, "seconds": time.time() - started}


def summary_table(cells: list[TrialConfig], results: str, metric: str | None = None):
    """Per dataset and model: the baseline's mean test metric and each knockout's change vs it (%).

    A cell whose trials collapsed shows ``collapsed n/m`` instead of a number; a missing one shows ``-``.
    """
    import numpy as np
    import pandas as pd

    from .results import ResultStore

    frame = ResultStore(results).read()
    keys = {c.key(): c for c in cells}
    if frame.empty:
        return pd.DataFrame()
    frame = frame[frame["key"].isin(keys)]
    metric = metric or (cells[0].train.valid_metric if cells else "recall@20")
    column = f"test_{metric}"
    records = []
    for _, row in frame.iterrows():
        cell = keys[row["key"]]
        enc = ",".join(f"{m}={v}" for m, v in sorted(cell.encoders.items()))
        label = "baseline" if cell.condition == "baseline" else f"{cell.condition}/{cell.fill}" + (
            "/eval_only" if cell.phase == "eval_only" else "")
        records.append({"dataset": row["dataset"], "model": cell.model, "encoders": enc, "label": label,
                        "value": row[column] if row["status"] == "finished" else np.nan,
                        "collapsed": row["status"] != "finished"})
    data = pd.DataFrame(records)
    out = {}
    for (dataset, model, enc), group in data.groupby(["dataset", "model", "encoders"], sort=True):
        base = group[group["label"] == "baseline"]["value"].mean()
        name = (dataset, model + (f" [{enc}]" if enc else ""))
        row = {f"baseline {column}": f"{base:.4f}" if np.isfinite(base) else "-"}
        for label, part in group[group["label"] != "baseline"].groupby("label", sort=False):
            n_bad = int(part["collapsed"].sum())
            value = part["value"].mean()
            if n_bad:
                row[label] = f"collapsed {n_bad}/{len(part)}"
            elif np.isfinite(base) and base > 0:
                row[label] = f"{100 * (value - base) / base:+.1f}%"
            else:
                row[label] = f"{value:.4f}"
        out[name] = row
    table = pd.DataFrame.from_dict(out, orient="index").fillna("-")
    table.index.names = ["dataset", "model"]
    return table


# ---------------------------------------------------------------- command line
def grid_main(argv: list[str] | None = None) -> int:
    import argparse

    from .data import DataError
    from .grid import PAPER_MODELS, PRESETS, SpecError, load_spec

    parser = argparse.ArgumentParser(
        prog="full_grid", description="Run a modality-knockout grid with Ray Tune (hyper-parameter search on "
                                      "validation, then every knockout cell), append rows, print a summary.")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--preset", choices=PRESETS, help="a built-in grid (default: demo)")
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
    parser.add_argument("--cpus-per-trial", type=float, help="override the spec's per-trial CPUs")
    parser.add_argument("--gpus-per-trial", type=float, help="override the spec's per-trial GPUs (0.25 packs 4)")
    parser.add_argument("--device", default="auto", help="auto (the GPU Ray assigns, else CPU), cpu, cuda")
    parser.add_argument("--reuse-actors", choices=("yes", "no"),
                        help="reuse trial workers (default: yes on a local Ray, no on a cluster, where reuse was "
                             "seen to keep every trial on the first node)")
    parser.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec or args.preset or "demo")
        resources = dict(spec.resources)
        if args.cpus_per_trial is not None:
            resources["cpu"] = args.cpus_per_trial
        if args.gpus_per_trial is not None:
            resources["gpu"] = args.gpus_per_trial
        spec = spec.with_overrides(models=args.models, datasets=args.datasets, seeds=args.seeds,
                                   epochs=args.epochs, data_root=args.data_root, resources=resources)
        if spec.name in ("paper", "full") and not args.models:
            missing = [m for m in PAPER_MODELS if m not in spec.models]
            if missing:
                print(f"note: models of the paper not registered yet, left out: {', '.join(missing)}")
        run = run_grid(spec, results=args.results, storage=args.storage, resume=args.resume,
                       address=args.address, num_cpus=args.num_cpus, device=args.device,
                       progress_every=args.progress_every,
                       reuse_actors=(args.reuse_actors or ("yes" if args.address == "local" else "no")) == "yes")
    except (SpecError, DataError, FileNotFoundError) as exc:
        print(f"full_grid: {exc}", file=sys.stderr)
        return 2
    except GridInterrupted as exc:
        print(f"full_grid: {exc}", file=sys.stderr)
        return 130
    print_summary(spec, run)
    return 0 if not run["grid"]["failed"] and not run["search"]["failed"] else 1


def print_summary(spec, run: dict) -> None:
    import pandas as pd

    print()
    for stage in ("search", "grid"):
        s = run[stage]
        print(f"{stage}: {s['total']} cells, {s['already']} already done, {s['ran']} ran, {s['failed']} failed")
        for where, message in s["errors"].items():
            print(f"  failed: {where}: {message}")
    print("chosen hyper-parameters (by validation only):")
    for (source, model), choice in sorted(run["chosen"].items()):
        score = f"{choice['metric']}={choice['score']:.4f} " if choice["metric"] else ""
        print(f"  {Path(source.split(':')[0]).name}/{model}: {choice['hparams']} "
              f"({score}{choice['points']} points){' - ' + choice['note'] if choice['note'] else ''}")
    table = summary_table(run["cells"], run["results"])
    metric = spec.train.get("valid_metric", "recall@20")
    print(f"\nbaseline test {metric} and each knockout's change vs baseline (mean over seeds):")
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(table.to_string() if not table.empty else "(no rows)")
    print(f"\nresults: {run['results']} (one Parquet row per trial; chosen hyper-parameters in "
          f"{run['results'].rstrip('/')}/hparams)\nTune state: {run['storage']} | {run['seconds']:.0f} s")
