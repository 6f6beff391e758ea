"""W&B for grid trials, logged from the trial's own process (never from Tune's driver loop).

One run per trial: grouped by ``<dataset>/<model>``, tagged by condition, fill, phase, seed and encoder
variants, job type = the grid stage. Each evaluation is logged with ``step=epoch``, so a trial resumed from
a checkpoint continues its curve instead of starting a second one. The run ends with the trial's exit
status: a trial that raised is finished with exit code 1 (W&B marks it *failed*); a collapsed or degenerate
trial ends normally with ``collapsed`` / ``degenerate`` as numeric summary fields (1 or 0) beside its final
metrics and its ``status`` text.

Mode: ``WANDB_MODE`` when set (``disabled`` writes nothing); else ``online`` when an API key is configured,
else ``offline``. Run files go to ``<results>/wandb`` (on a cluster whose results stay on the driver's disk:
``<Tune storage>/wandb``, see `files_root`); under a URI (object storage) they are written to local scratch
and copied to ``<...>/wandb/<run folder>`` when the run ends, so offline runs outlive the cluster
(``wandb sync <folder>`` uploads them later).

Everything here runs inside the trial; the driver only decides the mode (`wandb_mode`) and passes it on.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

DISABLED = "disabled"


def wandb_mode() -> str:
    """``WANDB_MODE`` when set; else ``online`` with an API key or a ``wandb login``, else ``offline``."""
    mode = os.environ.get("WANDB_MODE", "").strip()
    if mode:
        return mode
    return "online" if api_key() else "offline"


def api_key() -> str:
    """The W&B API key of this machine: ``WANDB_API_KEY``, else the one ``wandb login`` put in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    import netrc

    try:
        entry = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc"))).authenticators("api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        return ""
    return (entry[2] or "") if entry else ""


def files_root(results: str, storage: str, address: str | None) -> str:
    """Where trials put their W&B run files (under ``wandb/``), so that the files outlive the cluster.

    The results, when the trials run on the driver's machine (a local Ray) or the results are a URI; on a
    cluster with results on the driver's disk (rows reach them through the driver), Tune's storage, which
    every node reaches (``ablate.study.check_storage``): a worker's own disk goes away with the worker.
    """
    if address in (None, "local") or "://" in results:
        return results
    return storage


def run_group(cell: dict) -> str:
    """``<dataset name>/<model>`` of a trial config (as a dict): the W&B group of its run."""
    dataset = Path(str(cell.get("dataset", "?")).split(":")[0]).name
    return f"{dataset}/{cell.get('model', '?')}"


def run_tags(cell: dict) -> list[str]:
    encoders = cell.get("encoders") or {}
    return [f"condition={cell.get('condition')}", f"fill={cell.get('fill')}", f"phase={cell.get('phase')}",
            f"seed={cell.get('seed')}", *(f"encoder:{m}={v}" for m, v in sorted(encoders.items()))]


@dataclass
class RunSpec:
    """What a trial's W&B run is called and where its files go (built on the driver, used in the trial)."""

    mode: str
    project: str
    results: str  # the results' directory or URI: run files go to <results>/wandb
    name: str = ""
    run_id: str = ""
    job_type: str = "grid"
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    @classmethod
    def for_cell(cls, cell: dict, *, mode: str, project: str, results: str, stage: str, name: str,
                 run_id: str) -> "RunSpec":
        config = {k: cell[k] for k in ("dataset", "model", "condition", "fill", "phase", "seed", "encoders",
                                       "hparams", "train") if k in cell}
        return cls(mode=mode, project=project, results=results, name=name, run_id=_clean_id(run_id),
                   job_type=stage, group=run_group(cell), tags=run_tags(cell), config=config)


class TrialRun:
    """The W&B run of one trial. ``TrialRun.start(spec)`` is None when W&B is disabled."""

    def __init__(self, run, spec: RunSpec, upload_to: str | None):
        self.run, self.spec, self.upload_to = run, spec, upload_to

    @classmethod
    def start(cls, spec: RunSpec) -> "TrialRun | None":
        if spec.mode == DISABLED:
            return None
        os.environ["WANDB_MODE"] = spec.mode  # the documented way to run offline without a key
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        local = "://" not in spec.results
        root = Path(spec.results) if local else Path(tempfile.mkdtemp(prefix="ablate-wandb-"))
        root.mkdir(parents=True, exist_ok=True)  # W&B writes <root>/wandb/<run folder>
        try:
            run = wandb.init(project=spec.project, group=spec.group, job_type=spec.job_type, tags=spec.tags,
                             name=spec.name or None, id=spec.run_id or None, resume="allow" if spec.run_id else None,
                             config=spec.config, dir=str(root), mode=spec.mode, reinit="finish_previous",
                             settings=wandb.Settings(silent=True, console="off"))
        except Exception as exc:  # no key on this node, W&B unreachable: the trial itself goes on
            print(f"W&B: no run for trial {spec.name or spec.run_id} ({type(exc).__name__}: {exc}); "
                  f"the trial goes on without it", file=sys.stderr, flush=True)
            return None
        return cls(run, spec, None if local else f"{spec.results.rstrip('/')}/wandb")

    def log(self, point: dict) -> None:
        """One evaluation: its numeric values at ``step = epoch``."""
        values = {k: v for k, v in point.items() if k != "epoch" and _is_number(v)}
        self.run.log(values, step=int(point["epoch"]))

    def finish(self, row: dict | None = None, error: BaseException | None = None) -> None:
        """End the run: summary of the final row; exit code 1 (W&B: failed) when the trial raised."""
        summary: dict = {}
        if row is not None:
            summary = {k: (int(v) if isinstance(v, bool) else v) for k, v in row.items()
                       if _is_number(v) and not (isinstance(v, float) and math.isnan(v))}
            summary["status"] = row.get("status", "")
            summary["collapsed"] = int(row.get("status") == "collapsed")
            summary["degenerate"] = int(bool(row.get("degenerate", False)))
            if row.get("reason"):
                summary["reason"] = row["reason"]
        if error is not None:
            summary.update(status="failed", error=f"{type(error).__name__}: {error}"[:500])
        self.run.summary.update(summary)
        folder = Path(self.run.dir).parent  # <root>/wandb/<offline-run-...|run-...>
        self.run.finish(exit_code=1 if error is not None else 0)
        # end W&B's service process now: left to its exit hook, it races Ray's teardown of the worker
        # and prints a ConnectionResetError traceback
        import wandb

        wandb.teardown()
        if self.upload_to:
            self._upload(folder)

    def _upload(self, folder: Path) -> None:
        import pyarrow.fs as pafs

        from .results import ResultStore

        store = ResultStore(self.upload_to)
        target = f"{store.path}/{folder.name}"
        store.fs.create_dir(target, recursive=True)
        pafs.copy_files(str(folder), target, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=store.fs)
        shutil.rmtree(folder.parent.parent, ignore_errors=True)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, str)


def _clean_id(text: str) -> str:
    """A W&B run id from `text`: letters, digits, '-' and '_' only (W&B rejects the rest)."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)[:64]
