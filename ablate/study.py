"""A knockout study's logic, without Ray: its two stages, the choice of hyper-parameters, what is done and what
runs next, and the summary of its rows.

Stage 1 (*search*) trains at every point of each model's search space: each (dataset, model) on ``baseline``
under the ``baseline`` protocol, each knockout cell under ``per_condition``; the point with the best mean
*validation* metric over the search seeds is chosen per slot (`choose_hparams`, `GridSpec.choice_slot`) and
saved with the results (`save_choices`). Stage 2 (*grid*) runs every knockout cell with the chosen values;
each of its rows says how its values were chosen and under which protocol (`choice_columns`), and each slot's
cell keys are recorded (`record_knockout_cells`) so that the report takes exactly these cells, search rows
that are also knockout cells included. A cell already in the results is never run again.

The stages stream (`StudyPlan`): a slot's knockout cells are handed out as soon as its own search has ended,
while other slots still search. `ablate.tune` runs the plan on Ray Tune; `run_study` runs it here, one cell
after the other; `summarize` tells what a run did from the results alone.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .results import FAILED, ResultStore, join_uri, metric_columns
from .train import TrainConfig
from .trial import TrialConfig


class GridInterrupted(Exception):
    """A stage ended before all its trials did (Ctrl-C); every row already written is kept."""

    def __init__(self, stage: str, experiment: str, rows: int):
        super().__init__(f"interrupted during the {stage} stage; {rows} row(s) of this run are kept, and "
                         f"`--resume` continues it ({experiment})")
        self.stage, self.experiment, self.rows = stage, experiment, rows


def empty_summary(total: int = 0, already: int = 0) -> dict:
    """What running a set of cells did: total, already done, ran, failed, and errors (where -> message)."""
    return {"total": total, "already": already, "ran": 0, "failed": 0, "errors": {}}


def storage_for(results: str, storage: str | None) -> str:
    """Tune's storage: `storage`, else ``<results>/_tune`` (local paths made absolute)."""
    base = storage or join_uri(results, "_tune")
    if "://" in base:
        return base
    return str(Path(base).resolve())


SHARED_FILE_SYSTEMS = ("nfs", "nfs4", "efs", "lustre", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "gpfs",
                       "beegfs", "9p", "fuse")  # "fuse.*": s3fs, mountpoint-s3, gcsfuse, sshfs, ...


class StorageError(ValueError):
    """Tune's storage cannot be reached from every node of the cluster the grid runs on."""


def file_system_type(path: str, mounts=None) -> str:
    """The type of the file system holding `path` (its longest mount point), '' when unknown."""
    import psutil

    resolved = str(Path(path).resolve())
    best, kind = "", ""
    for part in (mounts if mounts is not None else psutil.disk_partitions(all=True)):
        point = part.mountpoint.rstrip("/") or "/"
        inside = resolved == point or resolved.startswith(point if point == "/" else point + "/")
        if inside and len(point) > len(best):
            best, kind = point, part.fstype
    return kind


def check_storage(storage: str, address: str | None, mounts=None) -> None:
    """Refuse, before any trial starts, a run on a cluster whose Tune storage is a local directory.

    Trials on other nodes write their checkpoints (and Tune its trial state) to the storage: a directory of
    the driver's machine is not theirs, and Ray would fail those trials at their first checkpoint. A local
    Ray (`address` ``local``) is one machine; on a cluster the storage must be a URI (``s3://...``) or on a
    network file system every node mounts.
    """
    if address in (None, "local") or "://" in storage:
        return
    kind = file_system_type(storage, mounts)
    if kind.split(".")[0] in SHARED_FILE_SYSTEMS:
        return
    raise StorageError(
        f"Tune's storage {storage} is a local directory ({kind or 'unknown'} file system) of this machine, but "
        f"trials on the cluster's other nodes save their checkpoints there: pass --storage s3://BUCKET/PATH "
        f"(or --results s3://BUCKET/PATH, whose _tune folder is the default storage), or a directory on a network "
        f"file system that every node mounts (NFS, EFS, ...). Rows are written by the driver and may stay local.")


# ---------------------------------------------------------------- hyper-parameters
def model_slot(cell: TrialConfig) -> tuple:
    return (cell.dataset, cell.model)


def search_scores(search: list[TrialConfig], results: str, listing=None) -> dict[str, float]:
    """Key -> validation score of the `search` cells whose rows are in `results` (only three columns read)."""
    if not search:
        return {}
    metric = "valid_" + search[0].train.valid_metric
    table = ResultStore(results).read_table(["key", "status", metric], keys={c.key() for c in search},
                                            listing=listing)
    values = table[metric].to_pylist() if metric in table.column_names else [None] * table.num_rows
    return {key: score_of(status, value)
            for key, status, value in zip(table["key"].to_pylist(), table["status"].to_pylist(), values)}


def score_of(status: str | None, value) -> float:
    """A search trial's score: its validation metric when it finished; worst when it collapsed or failed."""
    return float(value) if status == "finished" and value is not None else -np.inf


def choose_hparams(search: list[TrialConfig], scores: dict[str, float],
                   slot: Callable[[TrialConfig], tuple] = model_slot) -> dict[tuple, dict]:
    """Per slot (default: dataset source and model): the searched point with the best mean *validation* metric
    over seeds (`scores`: key -> `score_of`, from `search_scores` or the trials' last results).

    Collapsed and failed trials score as worst; test metrics are never read. Returns {slot: {hparams, metric,
    score, points, trials, note}}.
    """
    metric = "valid_" + search[0].train.valid_metric if search else ""
    groups: dict[tuple, dict[str, list]] = {}
    for cell in search:
        point = json.dumps(cell.hparams, sort_keys=True)
        values = groups.setdefault(slot(cell), {}).setdefault(point, [])
        if cell.key() in scores:
            values.append(scores[cell.key()])
    chosen: dict[tuple, dict] = {}
    for where, points in groups.items():
        scored = {p: float(np.mean(v)) for p, v in points.items() if v}
        note = ""
        if not scored:
            best, note = next(iter(points)), "no search trial finished: the first point is used"
        else:
            best = max(scored, key=lambda p: (scored[p], -list(points).index(p)))
            if not np.isfinite(scored[best]):
                note = "every searched point collapsed: the first is used"
                best = next(iter(points))
        chosen[where] = {"hparams": json.loads(best), "metric": metric, "score": scored.get(best, float("nan")),
                         "points": len(points), "trials": sum(len(v) for v in points.values()), "note": note}
    return chosen


def default_choice(spec, cells: list[TrialConfig]) -> dict:
    """The choice of a slot that is not searched (its model has one point): that point, the model's defaults
    with the spec's fixed values (`cells`: the slot's knockout cells)."""
    point = {**cells[0].hparams, **spec.search_points(cells[0].model)[0]}
    return {"hparams": point, "metric": "", "score": float("nan"), "points": 1, "trials": 0,
            "note": "defaults (no search)"}


def searched_cells(spec, datasets: dict) -> list[TrialConfig]:
    """The search stage's cells: those of the models with more than one point to choose from."""
    return [c for c in spec.search_cells(datasets) if len(spec.search_points(c.model)) > 1]


def save_choices(spec, chosen: dict, results: str) -> None:
    """Append the chosen hyper-parameters to ``<results>/hparams`` (one row per slot and choice; under the
    ``per_condition`` protocol a slot names its condition, fill, phase and encoders)."""
    store = ResultStore(results).child("hparams")
    for where, choice in sorted(chosen.items()):
        source, model = where[:2]
        cell = dict(zip(("condition", "fill", "phase", "encoders"), where[2:]))
        record = {"grid": spec.name, "protocol": spec.hparams.protocol, "data_source": source, "model": model,
                  **cell,
                  "hparams": json.dumps(choice["hparams"], sort_keys=True), "chosen_by": choice["metric"],
                  "score": choice["score"], "points": choice["points"], "trials": choice["trials"],
                  "note": choice["note"], "search_space": json.dumps(spec.search_points(model), sort_keys=True),
                  "chosen_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        ident = {k: record[k] for k in ("grid", "protocol", "data_source", "model", *cell, "hparams", "chosen_by",
                                        "search_space")}
        record["key"] = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
        if not store.has(record["key"]):
            store.append_record(record)


def choice_columns(spec, cells: list[TrialConfig], chosen: dict) -> dict[str, dict]:
    """Per knockout cell key: the columns its row gains (the grid, the tuning protocol, and how its
    hyper-parameters were chosen)."""
    return {c.key(): {"grid": spec.name, "protocol": spec.hparams.protocol, "hparam_choice": json.dumps(
        {k: v for k, v in chosen[spec.choice_slot(c)].items() if k != "hparams"}, sort_keys=True)}
        for c in cells}


def record_knockout_cells(spec, cells: list[TrialConfig], results: str) -> None:
    """Record knockout cell keys in ``<results>/cells`` (one record per distinct set: a study records each
    choice slot's cells when it chooses), so that the report takes exactly these cells, a search row that is
    also a knockout cell included, once."""
    keys = sorted({c.key() for c in cells})
    store = ResultStore(results).child("cells")
    ident = hashlib.sha256(json.dumps([spec.name, spec.hparams.protocol, keys]).encode()).hexdigest()[:24]
    if not store.has(ident):
        store.append_record({"key": ident, "grid": spec.name, "protocol": spec.hparams.protocol,
                             "cells": json.dumps(keys), "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime())})


# ---------------------------------------------------------------- failed trials
def read_trial_error(pickled: str | None, text: str | None):
    """A failed trial's last error from the files Tune wrote on the driver's node: the pickled exception,
    else its text."""
    import cloudpickle

    for path, read in ((pickled, cloudpickle.load), (text, lambda f: f.read())):
        if path and Path(path).exists():
            with open(path, "rb") as f:
                try:
                    return read(f)
                except Exception:  # an exception that cannot be unpickled here: its text below
                    continue
    return "unknown error"


def describe_error(error) -> tuple[str, str, str]:
    """(type, message, last frame "file:line in function") of a trial's error (a RayTaskError's cause)."""
    cause = getattr(error, "cause", None) or error
    text = getattr(error, "traceback_str", None) or str(error)  # a RayTaskError's text holds the worker's traceback
    if cause is not error and cause.__traceback__ is not None:
        text += "".join(traceback.format_exception(cause))
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', text)
    frame = f"{Path(frames[-1][0]).name}:{frames[-1][1]} in {frames[-1][2]}" if frames else ""
    if isinstance(cause, BaseException):
        return type(cause).__name__, str(cause).strip(), frame
    text = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
    last = next((line.strip() for line in reversed(text.splitlines()) if re.match(r"\s*\w+(Error|Exception)\b", line)),
                text.strip().splitlines()[-1] if text.strip() else "unknown error")
    kind, _, message = last.partition(": ")
    return (kind, message, frame) if message else ("Error", last, frame)


def failed_row(cell: TrialConfig, dataset_name: str, kind: str, message: str, frame: str) -> dict:
    """The row of a trial that errored after its retries: its identity, status ``failed`` and the error."""
    return {"key": cell.key(), "dataset": dataset_name, "data_source": cell.dataset, "model": cell.model,
            "condition": cell.condition, "fill": cell.fill, "phase": cell.phase, "seed": cell.seed,
            "encoders": json.dumps(cell.encoders, sort_keys=True), "hparams": json.dumps(cell.hparams, sort_keys=True),
            "train_config": json.dumps(asdict(cell.train), sort_keys=True), "status": FAILED,
            "reason": f"{kind}: {message}"[:500], "error_type": kind, "error_message": message[:2000],
            "error_frame": frame, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **{c: float("nan") for split in ("valid", "test") for c in metric_columns(split, cell.train.ks)}}


# ---------------------------------------------------------------- both stages, streamed
class StudyPlan:
    """What runs next: the search cells first, then the knockout cells of each choice slot (`GridSpec.choice_slot`:
    a (dataset, model), or one knockout cell's setting under ``per_condition``) as soon as that slot's own
    search has ended and its hyper-parameters are chosen, while other slots still search. A slot whose model
    has a single point is chosen at once. Cells in `done` are never handed out; failed ones are.

    `suggest(trial_id)` hands out the next cell with the columns its row gains, or None when nothing is ready;
    `complete(trial_id, result, error)` takes a trial's end (`result`: its last report, with ``key``,
    ``status`` and the validation metric); a trial that ended without its final report (stopped) is handed out
    again. Plain data only: Tune saves the plan with its experiment state and `Tuner.restore` continues it.
    With `record` false, choices are made but not saved with the results (`left`, for a plan before a run).
    """

    record = True  # also for a plan that Tune saved before `record` existed

    def __init__(self, spec, datasets: dict, results: str, done: set[str], listing=None, record: bool = True):
        self.spec, self.results, self.done, self.record = spec, results, set(done), record
        self.slots = spec.knockout_slots(datasets)  # slot -> its knockout cells at the model's defaults
        self.search = searched_cells(spec, datasets)
        self.metric = "valid_" + TrainConfig.from_dict(spec.train).valid_metric
        self.scores = search_scores([c for c in self.search if c.key() in self.done], results, listing)
        self.slot_of = {c.key(): spec.choice_slot(c) for c in self.search}
        self.searched: dict[tuple, list[TrialConfig]] = {}  # slot -> its search cells
        for cell in self.search:
            self.searched.setdefault(self.slot_of[cell.key()], []).append(cell)
        self.waiting: dict[tuple, set[str]] = {slot: set() for slot in self.slots}
        for cell in self.search:
            if cell.key() not in self.done:
                self.waiting[self.slot_of[cell.key()]].add(cell.key())
        self.queue = [c for c in self.search if c.key() not in self.done]  # search cells, then returned ones
        self.chosen: dict[tuple, dict] = {}
        self.ready: list[tuple] = []  # chosen slots whose knockout cells are being handed out
        self.cursor: dict[tuple, int] = {}
        self.running: dict[str, TrialConfig] = {}  # trial id -> cell
        self.handed: set[str] = set()  # keys handed out and not returned
        for slot in self.slots:
            if not self.waiting[slot]:
                self._choose(slot)

    def totals(self) -> dict[str, tuple[int, int]]:
        """Per stage: (cells, cells done before); the knockout stage counts its cells that no search trial
        ran (those of slots not yet chosen counted as not done)."""
        left = self.left()
        coordinates = {_without_hparams(c) for c in self.search}
        own = sum(_without_hparams(c) not in coordinates for cells in self.slots.values() for c in cells)
        totals = {"search": (len(self.search), len(self.search) - len(left["search"])),
                  "grid": (own, own - len(left["grid"]))}
        return {stage: counts for stage, counts in totals.items() if counts[0]}

    def left(self) -> dict[str, list[TrialConfig]]:
        """Per stage, the cells still to run (what `totals` counts as not done): the search cells without a row;
        the knockout cells without one that no search trial runs, at the chosen point where the slot is chosen,
        else at the model's defaults."""
        coordinates = {_without_hparams(c) for c in self.search}
        grid = []
        for slot, cells in self.slots.items():
            at = [self._cell(slot, i) for i in range(len(cells))] if slot in self.chosen else cells
            grid += [c for c in at if _without_hparams(c) not in coordinates and c.key() not in self.done]
        return {"search": [c for c in self.search if c.key() not in self.done], "grid": grid}

    def _cell(self, slot: tuple, index: int) -> TrialConfig:
        return replace(self.slots[slot][index], hparams=dict(self.chosen[slot]["hparams"]))

    # ---- what runs next
    def suggest(self, trial_id: str) -> tuple[TrialConfig, dict] | None:
        found = self._next()
        if found is not None:
            self.running[trial_id] = found[0]
            self.handed.add(found[0].key())
        return found

    def _next(self) -> tuple[TrialConfig, dict] | None:
        while self.queue:
            cell = self.queue.pop(0)
            key = cell.key()
            if key not in self.done and key not in self.handed:
                if key in self.slot_of:
                    return cell, {"stage": "search", "grid": self.spec.name, "protocol": self.spec.hparams.protocol}
                return cell, self._columns(cell)
        while self.ready:
            slot = self.ready[0]
            while self.cursor[slot] < len(self.slots[slot]):
                cell = self._cell(slot, self.cursor[slot])
                self.cursor[slot] += 1
                if cell.key() not in self.done and cell.key() not in self.handed:
                    return cell, self._columns(cell)
            self.ready.pop(0)
        return None

    def _columns(self, cell: TrialConfig) -> dict:
        return {"stage": "grid", **choice_columns(self.spec, [cell], self.chosen)[cell.key()]}

    def finished(self) -> bool:
        """Every cell handed out has ended and none is left to hand out."""
        return not self.running and not self.queue and not self.ready and len(self.chosen) == len(self.slots)

    # ---- what ended
    def complete(self, trial_id: str, result: dict | None, error: bool = False) -> None:
        cell = self.running.pop(trial_id, None)
        if cell is None:
            return
        key = cell.key()
        if not error and not (result and result.get("key") == key):  # stopped before its row: hand it out again
            self.handed.discard(key)
            self.queue.append(cell)
            return
        if not error:
            self.done.add(key)
        slot = self.slot_of.get(key)
        if slot is not None:
            self.scores[key] = -np.inf if error else score_of(result.get("status"), result.get(self.metric))
            self.waiting[slot].discard(key)
            if not self.waiting[slot] and slot not in self.chosen:
                self._choose(slot)

    def refresh(self, done: set[str]) -> None:
        """Take rows written since the plan was saved (`done`: the results' done keys, after a restore)."""
        self.done |= done

    def _choose(self, slot: tuple) -> None:
        search = self.searched.get(slot)
        if search:
            chosen = choose_hparams(search, self.scores, self.spec.choice_slot)[slot]
        else:
            chosen = default_choice(self.spec, self.slots[slot])
        self.chosen[slot] = chosen
        self.cursor[slot] = 0
        if self.record:
            save_choices(self.spec, {slot: chosen}, self.results)
            record_knockout_cells(self.spec, [self._cell(slot, i) for i in range(len(self.slots[slot]))],
                                  self.results)
        self.ready.append(slot)


def _without_hparams(cell: TrialConfig) -> tuple:
    return (cell.dataset, cell.model, cell.condition, cell.fill, cell.phase, cell.seed,
            json.dumps(cell.encoders, sort_keys=True))


def summarize(spec, datasets: dict, results: str, done_before: set[str]) -> dict:
    """What a run did, from the results alone (one listing): per stage total, already (done before), ran,
    failed and errors (key -> message); the chosen hyper-parameters; the knockout cells; and per stage the
    cells neither done nor failed (``unrun``: the run was cut short)."""
    store = ResultStore(results)
    listing = store.listing()
    done, failed = store.keys_by_outcome(listing)
    search = searched_cells(spec, datasets)
    chosen = choose_hparams(search, search_scores([c for c in search if c.key() in done], results, listing),
                            spec.choice_slot)
    for slot, cells in spec.knockout_slots(datasets).items():
        if slot not in chosen:
            chosen[slot] = default_choice(spec, cells)
    cells = spec.knockout_cells({k: v["hparams"] for k, v in chosen.items()}, datasets)
    errors = {}
    if failed:
        rows = store.read_table(["key", "model", "condition", "error_type", "error_message"], keys=failed,
                                listing=listing).to_pylist()
        errors = {r["key"]: f"{r['model']} {r['condition']}: {r.get('error_type')}: {r.get('error_message')}"
                  for r in rows}
    out = {"chosen": chosen, "cells": cells, "results": results, "unrun": {}}
    search_keys = {c.key() for c in search}
    # a knockout cell equal to a search trial is that trial: run by the search, "already" for the grid
    for stage, keys, already in (("search", search_keys, done_before),
                                 ("grid", {c.key() for c in cells}, done_before | (search_keys & done))):
        own = keys - search_keys if stage == "grid" else keys
        summary = empty_summary(len(keys), len(keys & already))
        summary["ran"] = len((own & done) - done_before)
        summary["failed"] = len(own & failed)
        summary["errors"] = {k: v for k, v in errors.items() if k in own}
        out[stage] = summary
        out["unrun"][stage] = len(own - done - failed)
    return out


def run_study(spec, datasets: dict, results: str, run_cell: Callable[[TrialConfig, dict], dict]) -> dict:
    """Both stages of `spec` here, one cell after the other, in the order a `StudyPlan` hands them out
    (`run_cell(cell, columns)` trains the cell and writes its row with `columns` added, returning the row);
    returns `summarize`'s account. `ablate.tune.run_grid` runs the same plan on Ray Tune."""
    store = ResultStore(results)
    listing = store.listing()
    done = store.done_keys(listing)
    plan = StudyPlan(spec, datasets, results, done, listing)
    trial = 0
    while (found := plan.suggest(str(trial))) is not None:
        cell, columns = found
        row = run_cell(cell, columns)
        plan.complete(str(trial), row, error=row.get("status") == FAILED)
        trial += 1
    return summarize(spec, datasets, results, done)


# ---------------------------------------------------------------- the summary of a study's rows
def summary_table(cells: list[TrialConfig], results: str, metric: str | None = None) -> str:
    """The report's paired numbers for `cells` (`ablate.report.summarize`), as one text table per dataset:
    each model's baseline test `metric` and each knockout's mean per-seed change against it, with its mark.

    The same rows, the same pairing by seed and the same correction as ``ablate report``; a cell that
    collapsed, is degenerate or has no baseline says so instead of a number.
    """
    from .report import Options, summarize
    from .report.tables import encoders_label, markdown, overview_table

    keys = {c.key() for c in cells}
    frame = ResultStore(results).read()
    if frame.empty or not keys & set(frame["key"]):
        return "(no rows)"
    frame = frame[frame["key"].isin(keys)].assign(knockout_cell=True)
    metric = metric or (cells[0].train.valid_metric if cells else "recall@20")
    summary = summarize(frame, Options(metrics=(metric,), primary=metric, paper=False, curves="none"))
    parts = []
    for (dataset, encoders), part in summary.groupby(["dataset", "encoders"], sort=True):
        label = encoders_label(encoders)
        headers, rows, _ = overview_table(part)
        parts.append(f"{dataset}{f' ({label})' if label else ''}: test {metric}\n" + markdown(headers, rows))
    return "\n".join(parts)
