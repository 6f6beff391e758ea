"""Ray Tune wiring (the only module that imports Ray): start Ray, the trial function, callbacks, and running
a set of cells as one Tune experiment. What to run, and in which order, is `ablate.study`'s.

- The cells still missing from the results become one ``grid_search`` axis of the Tuner's ``param_space``
  (each value is one `TrialConfig` as a dict), so a rerun runs only what is missing.
- The driver loads every dataset once; ``tune.with_parameters`` puts them in Ray's object store and each
  trial reads read-only, zero-copy numpy views. Knockout, graphs and the model are built inside the trial.
- ``tune.with_resources`` gives each trial its CPUs and (possibly fractional) GPUs; the trial trains on the
  GPU Ray assigned it (Ray sets ``CUDA_VISIBLE_DEVICES``, so ``cuda`` is that GPU).
- Each evaluation is a ``tune.report``; the trial also logs it to its own W&B run from its own process
  (`ablate.tracking`), so W&B never blocks Tune's driver loop. W&B runs offline (run files in
  ``<results>/wandb``) when no API key is configured and is off with ``WANDB_MODE=disabled``.
- A finished trial reports its row with its last result; the driver (`RowWriter`) takes it out of the result
  and appends it to the results, so rows never depend on a worker's disk, and Tune's state never holds them.
  Tune's own state lives at ``storage_path/<grid>-<stage>``; ``resume=True`` restores it with ``Tuner.restore``.
  On a cluster that storage must be reachable from every node (`check_storage`, before any trial starts).
- Every ``checkpoint_every`` evaluations a trial reports a checkpoint (`ablate.train.training_state`, saved
  with ``torch.save``); a trial whose worker or node dies is retried (``FailureConfig(max_failures)``) and
  continues from ``tune.get_checkpoint()``; each result says the epoch its attempt started at.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import ray
import torch
from ray import tune

from .console import duration as _duration, last_line, quiet_ray
from .data import load
from .results import ResultStore, join_uri
from .study import (GridInterrupted, check_storage, describe_error, empty_summary, failed_row, read_trial_error,
                    run_study, storage_for)
from .tracking import RunSpec, TrialRun, api_key, files_root, wandb_mode
from .trial import TrialConfig, run_trial


# ---------------------------------------------------------------- Ray start
def start_ray(address: str | None = "local", num_cpus: int | None = None) -> None:
    """Connect to (or start) Ray with the W&B mode fixed first (it must be set before Ray starts).

    `address`: ``local`` starts a private local Ray; ``auto`` joins the cluster of this machine (on a
    cluster's head node); ``host:port`` joins that cluster.
    """
    os.environ["WANDB_MODE"] = wandb_mode()
    quiet_ray()
    if ray.is_initialized():
        return
    env = {"WANDB_MODE": os.environ["WANDB_MODE"], "WANDB_SILENT": os.environ.get("WANDB_SILENT", "true")}
    if env["WANDB_MODE"] == "online" and api_key():
        # trials log to W&B from every node: the key of this machine (environment or `wandb login`) reaches
        # them through Ray's runtime environment, held in the cluster's memory, never written to a result
        env["WANDB_API_KEY"] = api_key()
    # endpoint of an S3-compatible store, when one is used (never credentials: those come from the node)
    for name in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    ray.init(address=address, num_cpus=num_cpus if address in (None, "local") else None,
             runtime_env={"env_vars": env}, log_to_driver=True, configure_logging=True,
             logging_level="WARNING")
    quiet_ray()  # again: ray.init installs its log handlers


# ---------------------------------------------------------------- the trial
@dataclass
class RunOptions:
    """How a set of cells runs on Tune (the same for every cell of a study)."""

    results: str  # where rows go (a local path or a URI)
    storage: str  # Tune's storage; each stage is an experiment `storage/<grid>-<stage>`
    resources: dict = field(default_factory=lambda: {"cpu": 1, "gpu": 0})  # per trial
    max_failures: int = 2  # retries of a trial whose worker or node died
    resume: bool = False  # restore the stage's interrupted experiment when there is one
    wandb_project: str = "ablate"
    wandb_mode: str = field(default_factory=wandb_mode)  # online, offline or disabled (decided on the driver)
    wandb_root: str = ""  # W&B run files go to <wandb_root>/wandb (default: the results; see `files_root`)
    device: str = "auto"  # auto: the GPU Ray assigned the trial, else CPU
    reuse_actors: bool = True
    progress_every: float = 10.0  # seconds between progress lines
    verbose: int = 0  # Tune's own console output
    checkpoint_every: int = 10  # evaluations between trial checkpoints (0: none)
    # (dataset, TrialConfig, on_eval=, checkpoint_every=, on_checkpoint=, resume=) -> row, in the trial's process
    run_trial: Callable[..., dict] = run_trial


ROW = "ablate_row"  # the key of the finished trial's row in its last result (taken out by `RowWriter`)
STATE_FILE = "training_state.pt"


def grid_trainable(config: dict, datasets: dict | None = None, options: RunOptions | None = None) -> None:
    """One grid cell as a Tune function trainable (see the module docstring)."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no line per saved checkpoint
    spec = config["cell"]
    device = _device(options)
    cell = TrialConfig.from_dict({**spec["trial"], "device": device})
    torch.set_num_threads(max(1, int(options.resources.get("cpu", 1))))
    resume = _load_state(tune.get_checkpoint(), device)
    start_epoch = resume["next_epoch"] if resume else 0
    saved: list[str] = []
    context = tune.get_context()
    key = cell.key()
    run = TrialRun.start(RunSpec.for_cell(
        spec["trial"], mode=options.wandb_mode, project=options.wandb_project,
        results=options.wandb_root or options.results, stage=spec.get("row", {}).get("stage", "grid"),
        name=context.get_trial_name() or key, run_id=f"{key}-{context.get_trial_id() or ''}"))

    def on_checkpoint(state: dict) -> None:  # called just before the on_eval of the same evaluation
        folder = tempfile.mkdtemp(prefix="ablate-checkpoint-")
        torch.save(state, os.path.join(folder, STATE_FILE))
        saved.append(folder)

    def on_eval(point: dict) -> None:
        if run is not None:
            run.log(point)
        folder = saved.pop() if saved else None
        checkpoint = tune.Checkpoint.from_directory(folder) if folder else None
        tune.report({**point, "start_epoch": start_epoch}, checkpoint=checkpoint)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)  # Tune has copied it to its storage

    try:
        row = options.run_trial(datasets[cell.dataset], cell, on_eval=on_eval,
                                checkpoint_every=options.checkpoint_every, on_checkpoint=on_checkpoint, resume=resume)
        row.update(spec.get("row", {}))
        row.update(ray_node=ray.get_runtime_context().get_node_id(), start_epoch=start_epoch)
    except BaseException as exc:
        if run is not None:
            run.finish(error=exc)
        raise
    if run is not None:
        run.finish(row)
    final = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tune.report({**final, "epoch": max(0, row["epochs"] - 1), "status": row["status"], "key": cell.key(),
                 "done": True, ROW: row})


def _load_state(checkpoint, device: str) -> dict | None:
    """The training state of the trial's last checkpoint (a retried trial), or None."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(os.path.join(folder, STATE_FILE), map_location=device, weights_only=True)


class RowWriter(tune.Callback):
    """Appends each finished trial's row (reported with its last result) to the results, from the driver.

    It takes the row out of the result before any other callback or Tune's state sees it; a row whose key is
    already there (a trial rerun after the driver stopped between writing and saving Tune's state) is kept once.
    """

    def __init__(self, results: str):
        self.results = results

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = result.pop(ROW, None)
        if row is None:
            return
        store = ResultStore(self.results)
        if not store.has(row["key"]):
            store.append(row)


def _device(options: RunOptions) -> str:
    if options.device != "auto":
        return options.device
    if options.resources.get("gpu", 0) > 0 and ray.get_gpu_ids():
        return "cuda"  # Ray restricted CUDA_VISIBLE_DEVICES to this trial's GPU(s)
    return "cpu"


# ---------------------------------------------------------------- progress
class Progress(tune.Callback):
    """The grid's console: a progress line every `every` seconds and at the end, one line per failed trial.

    The line gives, per stage (a trial's stage is ``config["cell"]["row"]["stage"]``), cells done / running /
    pending / failed with the failures' error types, then retries, elapsed time and an ETA. A failed trial
    gets one line with its error's last line and the file holding its traceback (Ray's own traceback on
    the console is filtered out, see `ablate.console`).
    """

    def __init__(self, stage: str, total: int, already: int, every: float = 10.0, stream=None,
                 totals: dict[str, tuple[int, int]] | None = None):
        self.stage, self.total, self.already, self.every = stage, total, already, every
        self.totals = totals or {stage: (total, already)}  # stage -> (cells, cells done before this run)
        self.started, self.last = time.time(), 0.0
        self.done = self.failed = self.retries = 0
        self.running: set[str] = set()
        self.errors: dict[str, dict[str, int]] = {}  # stage -> {error type: failed trials}
        self.unfinished = 0  # trials neither completed nor failed when the experiment ended (Ctrl-C)
        self.stream = stream  # None: sys.stdout at print time (the callback is pickled with Tune's state)
        self._stages: dict[str, str] = {}  # trial id -> stage
        self._done: dict[str, int] = {}  # stage -> trials completed in this run

    def _stage(self, trial) -> str:
        config = getattr(trial, "config", None) or {}
        stage = (config.get("cell") or {}).get("row", {}).get("stage", self.stage)
        self._stages[trial.trial_id] = stage
        return stage

    def on_trial_start(self, iteration, trials, trial, **info):
        self._stage(trial)
        self.running.add(trial.trial_id)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.retries += 1
        self.running.discard(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.done += 1
        stage = self._stage(trial)
        self._done[stage] = self._done.get(stage, 0) + 1

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed += 1
        stage = self._stage(trial)
        error, where = _trial_error(trial)
        kind = error.split(":", 1)[0] if ":" in error else "error"
        per_type = self.errors.setdefault(stage, {})
        per_type[kind] = per_type.get(kind, 0) + 1
        name = getattr(trial, "trial_name", None) or str(trial)
        print(f"[{stage}] trial failed: {name}: {error} (traceback: {where})", file=self.stream or sys.stdout,
              flush=True)

    def on_step_end(self, iteration, trials, **info):
        if time.time() - self.last >= self.every:
            self.print()

    def on_experiment_end(self, trials, **info):
        self.unfinished = max(0, len(trials) - self.done - self.failed)
        self.print()

    def line(self) -> str:
        elapsed = time.time() - self.started
        single = len(self.totals) == 1 and set(self._stages.values()) <= set(self.totals)
        parts, left = [], 0
        for stage in dict.fromkeys([*self.totals, *self._stages.values()]):
            total, already = self.totals.get(stage, (0, 0))
            ids = [i for i, s in self._stages.items() if s == stage]
            running = len(self.running) if single else sum(i in self.running for i in ids)
            done = already + (self.done if single else self._done.get(stage, 0))
            errors = self.errors.get(stage, {})
            failed = self.failed if single else sum(errors.values())
            pending = max(0, total - done - failed - running)
            left += pending + running
            why = ", ".join(f"{n} {kind}" for kind, n in sorted(errors.items(), key=lambda item: -item[1]))
            parts.append(f"[{stage}] {done}/{total} done, {running} running, {pending} pending, {failed} failed"
                         + (f" ({why})" if why else ""))
        eta = "?"
        if self.done and left:
            eta = _duration(elapsed / self.done * left)
        elif not left:
            eta = "0s"
        return f"{' '.join(parts)}, {self.retries} retried | {_duration(elapsed)} elapsed, ETA {eta}"

    def print(self) -> None:
        self.last = time.time()
        print(self.line(), file=self.stream or sys.stdout, flush=True)


def _trial_error(trial) -> tuple[str, str]:
    """(the last line of a failed trial's error, where its full traceback is)."""
    local = getattr(trial, "error_file", None)
    where = f"{trial.path}/error.txt" if getattr(trial, "path", None) else (local or "the trial's Tune folder")
    text = ""
    if local:
        try:
            text = Path(local).read_text()
        except OSError:
            pass
    return (last_line(text) if text else "unknown error"), where


# ---------------------------------------------------------------- one stage
def run_cells(cells: list[TrialConfig], datasets: dict, options: RunOptions, *, name: str, stage: str = "grid",
              row_extra: dict[str, dict] | None = None) -> dict:
    """Run the cells of `cells` missing from the results as one Tune experiment `storage/name`.

    `row_extra[key]` adds columns to that cell's row. Returns `empty_summary`'s counts: total, already, ran,
    failed and the Tune errors (trial path -> message). Raises `GridInterrupted` when Ctrl-C cut it short.
    """
    store = ResultStore(options.results)
    done = store.done_keys()
    pending = [c for c in cells if c.key() not in done]
    summary = empty_summary(len(cells), len(cells) - len(pending))
    experiment = join_uri(options.storage, name)
    restorable = options.resume and tune.Tuner.can_restore(experiment)
    if not pending and not restorable:
        print(f"[{stage}] all {len(cells)} cells already in {options.results}", flush=True)
        return summary
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial JSON/CSV/TensorBoard files
    trainable = tune.with_resources(tune.with_parameters(grid_trainable, datasets=datasets, options=options),
                                    {"cpu": options.resources.get("cpu", 1), "gpu": options.resources.get("gpu", 0)})
    progress = Progress(stage, len(cells), summary["already"], every=options.progress_every)
    quiet_ray()
    run_config = tune.RunConfig(
        name=name, storage_path=options.storage, callbacks=[RowWriter(options.results), progress, FailedRows(
            options.results, {source: data.name for source, data in datasets.items()})],
        verbose=options.verbose, failure_config=tune.FailureConfig(max_failures=options.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
    if restorable:
        print(f"[{stage}] restoring the interrupted run at {experiment}", flush=True)
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
        # the restored run keeps its own callbacks' settings; progress is reported by the counts below
    else:
        print(f"[{stage}] {len(pending)} of {len(cells)} cells to run ({summary['already']} already in "
              f"{options.results})", flush=True)
        row_extra = row_extra or {}
        space = [{"trial": _as_config(c), "row": {"stage": stage, **row_extra.get(c.key(), {})}} for c in pending]
        tuner = tune.Tuner(
            trainable,
            param_space={"cell": tune.grid_search(space)},
            tune_config=tune.TuneConfig(reuse_actors=options.reuse_actors, trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name),
            run_config=run_config)
    grid = tuner.fit()
    # Tune returns normally after Ctrl-C, the stopped trials marked TERMINATED. Signs of it: trials the progress
    # callback saw neither complete nor fail (a restored run carries Tune's copy of the callback, not this
    # one), or a trial without an error whose row is missing (a finished trial's row is written from its last
    # report; one stopped before its first report has no config either). Stop here then, so that a search stage cut
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
        rest = run_cells(cells, datasets, replace(options, resume=False), name=f"{name}-rest", stage=stage,
                         row_extra=row_extra)
        summary["ran"] += rest["ran"]
        summary["failed"] = rest["failed"]  # what is still missing after both
        summary["errors"] = (rest["errors"] or summary["errors"]) if rest["failed"] else {}
    return summary


class FailedRows(tune.Callback):
    """Writes the row of a trial that errored after its retries (`ablate.study.failed_row`), so the report
    counts it and a rerun runs it again."""

    def __init__(self, results: str, names: dict[str, str]):
        self.results, self.names = results, names  # names: dataset source -> dataset name

    def on_trial_error(self, iteration, trials, trial, **info):
        cell = TrialConfig.from_dict(trial.config["cell"]["trial"])
        row = failed_row(cell, self.names.get(cell.dataset, cell.dataset), *describe_error(
            read_trial_error(trial.pickled_error_file, trial.error_file)))
        ResultStore(self.results).append({**row, **trial.config["cell"].get("row", {})})


def _as_config(cell: TrialConfig) -> dict:
    out = asdict(cell)
    out.pop("device")
    out["train"]["ks"] = list(out["train"]["ks"])
    return out


def _trial_name(trial) -> str:
    cell = trial.config.get("cell", {}).get("trial") or {}
    return (f"{cell.get('model')}-{cell.get('condition')}-{cell.get('fill')}-{cell.get('phase')}"
            f"-s{cell.get('seed')}-{trial.trial_id}")


# ---------------------------------------------------------------- both stages
def run_grid(spec, results: str = "results", storage: str | None = None, resume: bool = False,
             address: str | None = "local", num_cpus: int | None = None, **options) -> dict:
    """Both stages of `spec` (`ablate.study.run_study`) on Ray Tune; returns what happened.

    `options`: further `RunOptions` fields (device, reuse_actors, progress_every, run_trial, ...).
    """
    started = time.time()
    if "://" not in results:
        results = str(Path(results).resolve())
    storage = storage_for(results, storage)
    check_storage(storage, address)
    sources = list(dict.fromkeys(spec.dataset_source(d) for d in spec.datasets))
    datasets = {source: load(source) for source in sources}  # a bad dataset fails here, before Ray starts
    start_ray(address, num_cpus)
    options.setdefault("wandb_root", files_root(results, storage, address))
    run_options = RunOptions(results=results, storage=storage, resources=spec.resources,
                             max_failures=spec.max_failures, resume=resume, wandb_project=spec.wandb_project,
                             **options)
    run = run_study(spec, datasets, results, partial(run_cells, datasets=datasets, options=run_options))
    return {**run, "storage": run_options.storage, "seconds": time.time() - started}
