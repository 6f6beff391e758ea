"""Ray Tune wiring (the only module that imports Ray): start Ray, the trial function, callbacks, and the study
as one Tune experiment. What to run, and in which order, is `ablate.study`'s (`StudyPlan`).

- One experiment ``<storage>/<grid name>``: a `CellSearcher` (Tune's ``Searcher``) hands out the plan's next
  cell (one `TrialConfig` as a dict) each time Tune asks for a trial: the search cells, then each choice
  slot's knockout cells as soon as its own search has ended, so no stage waits for the slowest model. Cells
  already in the results are never handed out, so a rerun runs only what is missing (or failed).
- The driver loads every dataset once; `share` puts each dataset's interactions and each of its encoder
  variants in Ray's object store as objects of their own, and a trial fetches only its dataset and the
  variants it reads, as read-only, zero-copy numpy views. Knockout, graphs and the model are built inside
  the trial.
- ``tune.with_resources`` gives each trial its model's CPUs, (possibly fractional) GPUs and memory
  (`GridSpec.trial_resources`); the trial trains on the GPU Ray assigned it (Ray sets
  ``CUDA_VISIBLE_DEVICES``, so ``cuda`` is that GPU).
- Each evaluation is a ``tune.report``; the trial also logs it to its own W&B run from its own process
  (`ablate.tracking`), so W&B never blocks Tune's driver loop. W&B runs offline (run files in
  ``<results>/wandb``) when no API key is configured and is off with ``WANDB_MODE=disabled``.
- A finished trial reports its row with its last result; the driver (`RowWriter`) takes it out of the result
  and appends it to the results, so rows never depend on a worker's disk, and Tune's state never holds them.
  Tune writes no per-trial logger files. ``resume=True`` restores the experiment (the plan with it) with
  ``Tuner.restore``. On a cluster Tune's storage must be reachable from every node (`check_storage`, before
  any trial starts).
- Every ``checkpoint_every`` evaluations a trial reports a checkpoint (`ablate.train.training_state`, saved
  with ``torch.save``); a trial whose worker or node dies is retried (``FailureConfig(max_failures)``) and
  continues from ``tune.get_checkpoint()``; each result says the epoch its attempt started at.
"""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import ray
import torch
from ray import tune
from ray.tune.search import Searcher

from .console import GridProgress, quiet_ray, quiet_trial_process
from .data import DEFAULT_VARIANT, Dataset, load
from .results import ResultStore, join_uri
from .study import (GridInterrupted, StudyPlan, check_storage, describe_error, failed_row, read_trial_error,
                    storage_for, summarize)
from .tracking import RunSpec, TrialRun, api_key, files_root, wandb_mode
from .train import THREADED_TRAINING_ENV
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
    # a trial trains in a thread; a reused actor waits 60 s for its last trial's thread (Tune's 2 s: too short)
    defaults = {**THREADED_TRAINING_ENV, "WANDB_SILENT": "true", "TUNE_FUNCTION_THREAD_TIMEOUT_S": "60"}
    env = {"WANDB_MODE": os.environ["WANDB_MODE"], **{k: os.environ.get(k, v) for k, v in defaults.items()}}
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
    storage: str  # Tune's storage; the study is the experiment `<storage>/<grid name>`
    resources: dict = field(default_factory=dict)  # model -> its trials' {cpu, gpu, memory (GiB)}
    max_failures: int = 2  # retries of a trial whose worker or node died
    resume: bool = False  # restore the study's interrupted experiment when there is one
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
    quiet_trial_process()
    spec = config["cell"]
    resources = _resources(options, spec["trial"]["model"])
    device = _device(options, resources)
    cell = TrialConfig.from_dict({**spec["trial"], "device": device})
    torch.set_num_threads(max(1, int(resources["cpu"])))
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
        row = options.run_trial(fetch(datasets, cell), cell, on_eval=on_eval,
                                checkpoint_every=options.checkpoint_every, on_checkpoint=on_checkpoint, resume=resume)
        row.update(spec.get("row", {}))
        row.update(ray_node=ray.get_runtime_context().get_node_id(), start_epoch=start_epoch)
    except BaseException as exc:
        if run is not None:
            run.finish(error=exc)
        raise
    if run is not None:
        run.finish(row)
    # the plan reads the key, status and validation metric; the row (taken out by RowWriter) holds the rest
    chosen_by = f"valid_{cell.train.valid_metric}"
    tune.report({chosen_by: row.get(chosen_by, float("nan")), "epoch": max(0, row["epochs"] - 1),
                 "status": row["status"], "key": cell.key(), "done": True, ROW: row})


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
        self.results, self.store = results, None

    def __getstate__(self):  # saved with Tune's state: the store (its file system) is opened again
        return {"results": self.results, "store": None}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = result.pop(ROW, None)
        if row is None:
            return
        self.store = self.store or ResultStore(self.results)
        if not self.store.has(row["key"]):
            self.store.append(row)


class Progress(GridProgress, tune.Callback):
    """`ablate.console.GridProgress` as a Tune callback."""


def share(datasets: dict[str, Dataset]) -> dict[str, dict]:
    """Each dataset's interactions, and each of its feature variants, as an object of its own in Ray's object
    store: a node pulls only the datasets and encoder variants its trials read."""
    return {source: {"base": ray.put(replace(data, features={})),
                     "features": {m: {v: ray.put(x) for v, x in variants.items()}
                                  for m, variants in data.features.items()}}
            for source, data in datasets.items()}


def fetch(shared: dict, cell: TrialConfig) -> Dataset:
    """The dataset of `cell` with, of each modality, only the encoder variant the cell reads (read-only,
    zero-copy views)."""
    base = ray.get(shared[cell.dataset]["base"])
    features = {}
    for modality, variants in shared[cell.dataset]["features"].items():
        name = cell.encoders.get(modality, base.default_variants.get(modality, DEFAULT_VARIANT))
        if name not in variants:
            raise KeyError(f"dataset {base.name!r}: modality {modality!r} has no encoder variant {name!r}; "
                           f"it has {sorted(variants)}")
        features[modality] = {name: ray.get(variants[name])}
    return replace(base, features=features)


def _resources(options: RunOptions, model: str) -> dict:
    return {"cpu": 1, "gpu": 0, **options.resources.get(model, {})}


def trial_resources(config: dict, options: RunOptions) -> dict:
    """What Ray reserves for the trial of `config`: its model's CPUs, GPUs and memory (GiB, as bytes)."""
    wanted = _resources(options, config["cell"]["trial"]["model"])
    return {"cpu": wanted["cpu"], "gpu": wanted["gpu"],
            **({"memory": wanted["memory"] * 1024 ** 3} if wanted.get("memory") else {})}


def _device(options: RunOptions, resources: dict) -> str:
    if options.device != "auto":
        return options.device
    if resources["gpu"] > 0 and ray.get_gpu_ids():
        return "cuda"  # Ray restricted CUDA_VISIBLE_DEVICES to this trial's GPU(s)
    return "cpu"


# ---------------------------------------------------------------- the study on Tune
class CellSearcher(Searcher):
    """Tune's view of a `StudyPlan`: each suggestion is the plan's next cell, each trial's end goes back to it.
    The plan is saved with Tune's experiment state, so `Tuner.restore` continues it.

    A cell whose trial Tune ended without ``on_trial_complete`` (the trial it meant to start on a reused actor
    whose last trial's thread outlived ``TUNE_FUNCTION_THREAD_TIMEOUT_S``) is handed out again (`hand_out_lost`).
    """

    def __init__(self, plan: StudyPlan | None = None, check_every: float = 5.0):
        super().__init__()
        self.plan, self.check_every, self.next_check = plan, check_every, 0.0
        self.by_id: dict = {}  # Tune's trials by id, kept by `WatchTrials`; never pickled

    def __getstate__(self):
        return {**self.__dict__, "by_id": {}}

    def suggest(self, trial_id: str):
        if self.plan.finished():
            return Searcher.FINISHED
        found = self.plan.suggest(trial_id) or (self.hand_out_lost() and self.plan.suggest(trial_id))
        if not found:
            return None  # nothing ready: a slot's search is still running
        cell, row = found
        return {"cell": {"trial": _as_config(cell), "row": row}}

    def hand_out_lost(self) -> bool:
        """Put back the cells of trials that ended without a word to the searcher (at most every `check_every`
        seconds; the plan's running trials looked up by id); whether there were any."""
        if not self.plan.running or time.monotonic() < self.next_check:
            return False
        self.next_check = time.monotonic() + self.check_every
        lost = [i for i in self.plan.running if i in self.by_id and self.by_id[i].is_finished()]
        for trial_id in lost:
            self.plan.complete(trial_id, None)  # no row: handed out again
        return bool(lost)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.plan.complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.plan, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.plan = pickle.load(f)
        self.plan.refresh(ResultStore(self.plan.results).done_keys())  # rows written after the plan was saved


class WatchTrials(tune.Callback):
    """Indexes Tune's trials by id for the `CellSearcher` as they are added, and lets it look for lost ones at
    each step."""

    def __init__(self, searcher: CellSearcher):
        self.searcher = searcher

    def on_step_begin(self, iteration, trials, **info):
        by_id = self.searcher.by_id
        by_id.update((t.trial_id, t) for t in trials[len(by_id):])  # Tune only appends to its list of trials
        self.searcher.hand_out_lost()


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
    out = {name: value for name, value in asdict(cell).items() if name != "device"}
    out["train"]["ks"] = list(out["train"]["ks"])
    return out


def _trial_name(trial) -> str:
    cell = trial.config.get("cell", {}).get("trial") or {}
    return (f"{cell.get('model')}-{cell.get('condition')}-{cell.get('fill')}-{cell.get('phase')}"
            f"-s{cell.get('seed')}-{trial.trial_id}")


# ---------------------------------------------------------------- both stages
def run_grid(spec, results: str = "results", storage: str | None = None, resume: bool = False,
             address: str | None = "local", num_cpus: int | None = None, datasets: dict | None = None,
             **options) -> dict:
    """Both stages of `spec` as one Tune experiment ``<storage>/<grid name>`` driven by a `StudyPlan`;
    `datasets`: source -> loaded `Dataset` (the spec's others are loaded here); `options`: further `RunOptions`
    fields (device, reuse_actors, progress_every, run_trial, ...). With `resume`, an interrupted experiment is
    restored and continued; then, as in any rerun, a fresh plan runs the cells still missing or failed. Returns
    `ablate.study.summarize`'s account of the run (plus storage and seconds); raises `GridInterrupted` when
    cells were left unrun (Ctrl-C)."""
    started = time.time()
    if "://" not in results:
        results = str(Path(results).resolve())
    storage = storage_for(results, storage)
    check_storage(storage, address)
    datasets = {s: (datasets or {}).get(s) or load(s) for s in dict.fromkeys(map(spec.dataset_source, spec.datasets))}
    start_ray(address, num_cpus)  # after the datasets: a bad one fails before Ray starts
    options.setdefault("wandb_root", files_root(results, storage, address))
    opts = RunOptions(results=results, storage=storage, resources={m: spec.trial_resources(m) for m in spec.models},
                      max_failures=spec.max_failures, resume=resume, wandb_project=spec.wandb_project, **options)
    store = ResultStore(results)
    listing = store.listing()
    done_before = store.done_keys(listing)
    experiment = join_uri(storage, spec.name)
    trainable = tune.with_resources(tune.with_parameters(grid_trainable, datasets=share(datasets), options=opts),
                                    partial(trial_resources, options=opts))
    # Tune asks a searcher for one pending trial at a time unless told otherwise; as many as its own grid
    # search keeps pending (at least 16, or what the cluster holds of the largest trial) let an autoscaler see
    # the demand
    capacity = ray.cluster_resources()
    fit = min(int(capacity.get(kind.upper(), 0) // need) for model in spec.models
              for kind, need in spec.trial_resources(model).items() if kind in ("cpu", "gpu") and need > 0)
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(spec.max_concurrent_trials or max(16, fit))
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # rows and W&B hold the results
    quiet_ray()
    fresh, restored = True, resume and tune.Tuner.can_restore(experiment)
    if restored:
        print(f"[grid] restoring the interrupted run at {experiment}", flush=True)
        _fit(tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True), results, experiment,
             done_before)
        after = summarize(spec, datasets, results, done_before)
        fresh = any(after["unrun"].values()) or bool(after["search"]["failed"] or after["grid"]["failed"])
    if fresh:
        listing = store.listing() if restored else listing  # rows the restored run wrote
        plan = StudyPlan(spec, datasets, results, store.done_keys(listing), listing)
        totals = plan.totals()
        left = sum(total - already for total, already in totals.values())
        print(f"[grid] {left} cells to run, search then each model's knockout cells as soon as its own search "
              f"has ended ({', '.join(f'{s}: {t - a} of {t}' for s, (t, a) in totals.items())})", flush=True)
        if not plan.finished():
            names = {source: data.name for source, data in datasets.items()}
            searcher = CellSearcher(plan)
            _fit(tune.Tuner(trainable, tune_config=tune.TuneConfig(
                search_alg=searcher, num_samples=-1, reuse_actors=opts.reuse_actors,
                max_concurrent_trials=spec.max_concurrent_trials or None, trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name), run_config=tune.RunConfig(
                name=spec.name, storage_path=storage, verbose=opts.verbose,
                callbacks=[RowWriter(results), Progress("grid", left, 0, every=opts.progress_every, totals=totals),
                           FailedRows(results, names), WatchTrials(searcher)],
                failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1))), results, experiment, done_before)
    run = summarize(spec, datasets, results, done_before)
    if any(run["unrun"].values()):
        stage = "search" if run["unrun"]["search"] else "grid"
        raise GridInterrupted(stage, experiment, run["search"]["ran"] + run["grid"]["ran"])
    return {**run, "storage": storage, "seconds": time.time() - started}


def _fit(tuner, results: str, experiment: str, done_before: set[str]) -> None:
    """Run the experiment; raise `GridInterrupted` when a trial ended without error and without its row: Tune
    returns normally after Ctrl-C, the stopped trials marked terminated."""
    grid = tuner.fit()
    rows = ResultStore(results).done_keys()
    stopped = [r for r in grid if r.error is None
               and (not r.config or TrialConfig.from_dict(r.config["cell"]["trial"]).key() not in rows)]
    if stopped:
        stage = stopped[0].config["cell"]["row"]["stage"] if stopped[0].config else "grid"
        raise GridInterrupted(stage, experiment, len(rows - done_before))
