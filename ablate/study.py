"""A knockout study's logic, without Ray: its two stages, the choice of hyper-parameters, what is done and what
runs next, and the summary of its rows.

Stage 1 (*search*) trains at every point of each model's search space: each (dataset, model) on ``baseline``
under the ``baseline`` protocol, each knockout cell under ``per_condition``; the point with the best mean
*validation* metric over the search seeds is chosen per slot (`choose_hparams`, `GridSpec.choice_slot`) and
saved with the results (`save_choices`). Stage 2 (*grid*) runs every knockout cell with the chosen values;
each of its rows says how its values were chosen and under which protocol (`choice_columns`), and the stage's
cell keys are recorded (`record_knockout_cells`) so that the report takes exactly these cells, search rows
that are also knockout cells included. A cell already in the results is never run again.

`run_study` drives both stages through a `run_cells` function given by the caller (`ablate.tune` runs the
cells on Ray Tune); it stops before the knockout stage when the search was cut short.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from .results import FAILED, ResultStore, join_uri, metric_columns
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


def choose_hparams(search: list[TrialConfig], results: str,
                   slot: Callable[[TrialConfig], tuple] = model_slot) -> dict[tuple, dict]:
    """Per slot (default: dataset source and model): the searched point with the best mean *validation* metric
    over seeds.

    Collapsed trials score as worst; test metrics are not read. Returns {slot: {hparams, metric, score, points,
    trials, note}}.
    """
    frame = ResultStore(results).read()
    metric = "valid_" + search[0].train.valid_metric if search else ""
    by_key = {} if frame.empty else frame.set_index("key")
    chosen: dict[tuple, dict] = {}
    groups: dict[tuple, dict[str, list]] = {}
    for cell in search:
        point = json.dumps(cell.hparams, sort_keys=True)
        scores = groups.setdefault(slot(cell), {}).setdefault(point, [])
        if len(by_key) and cell.key() in by_key.index:
            row = by_key.loc[cell.key()]
            scores.append(float(row[metric]) if row["status"] == "finished" else -np.inf)
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
        chosen[where] = {"hparams": json.loads(best), "metric": metric,
                                   "score": scored.get(best, float("nan")), "points": len(points),
                                   "trials": sum(len(v) for v in points.values()), "note": note}
    return chosen


def default_choices(search: list[TrialConfig], slot: Callable[[TrialConfig], tuple] = model_slot) -> dict[tuple, dict]:
    """The choice when nothing is searched: each slot's only point, its defaults."""
    return {slot(c): {"hparams": c.hparams, "metric": "", "score": float("nan"), "points": 1,
                                   "trials": 0, "note": "defaults (no search)"} for c in search}


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
    """Record the knockout stage's cell keys in ``<results>/cells`` (one record per distinct set), so that the
    report takes exactly these cells, a search row that is also a knockout cell included, once."""
    keys = sorted({c.key() for c in cells})
    store = ResultStore(results).child("cells")
    ident = hashlib.sha256(json.dumps([spec.name, spec.hparams.protocol, keys]).encode()).hexdigest()[:24]
    if ident not in set(store.read_records().get("key", [])):
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


# ---------------------------------------------------------------- both stages
RunCells = Callable[..., dict]  # run_cells(cells, *, name, stage, row_extra=None) -> summary (empty_summary's keys)


def run_study(spec, datasets: dict, results: str, run_cells: RunCells) -> dict:
    """Both stages of `spec` on the loaded `datasets` (source -> Dataset); returns what happened.

    `run_cells` runs the cells of a stage still missing from `results` and raises `GridInterrupted` when the
    stage was cut short, so a search stopped half-way never chooses hyper-parameters for the grid.
    """
    search = spec.search_cells(datasets)
    needs_search = any(len(spec.search_points(m)) > 1 for m in spec.models)
    if needs_search:
        stage1 = run_cells(search, name=f"{spec.name}-search", stage="search", row_extra={
            c.key(): {"grid": spec.name, "protocol": spec.hparams.protocol} for c in search})
        chosen = choose_hparams(search, results, spec.choice_slot)
    else:
        stage1, chosen = empty_summary(), default_choices(search, spec.choice_slot)
    save_choices(spec, chosen, results)
    cells = spec.knockout_cells({k: v["hparams"] for k, v in chosen.items()}, datasets)
    record_knockout_cells(spec, cells, results)
    stage2 = run_cells(cells, name=f"{spec.name}-grid", stage="grid", row_extra=choice_columns(spec, cells, chosen))
    return {"search": stage1, "grid": stage2, "cells": cells, "chosen": chosen, "results": results}


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
