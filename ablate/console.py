"""What ablate prints: a trial's progress line, and Ray's own console output reduced to what a user needs.

- `TrialProgress`: during ``ablate trial``, one line updated in place on a terminal (tqdm) with the epoch,
  loss, validation metric, best so far, epochs without improvement, time per epoch and the ETA to the epoch
  cap; when the output is not a terminal (a log file, CI), the same facts as a plain line every
  `every` seconds and at the end.
- `quiet_ray`: Tune's experiment banner and table are off (its legacy reporter at verbosity 0 prints
  nothing), and so is its warning about checkpoints close together; Ray's token-authentication notice is
  dropped; a failed trial's driver-side traceback is replaced
  by the grid's own one-line summary (`Progress` in ``ablate.tune``), which names the file holding it.
  Every other warning or error of Ray, and whatever a trial prints, still shows.
- `quiet_trial_process`: in a trial's worker, no line per saved checkpoint, and no traceback when the worker is
  ended by SIGTERM while a finalizer runs (see there).
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import time
from pathlib import Path

# Ray messages that say nothing a user acts on, or that the grid's own output says in one line
_DROPPED = (
    "Token authentication is enabled for this Ray cluster",  # on by design (cluster/gpu.yaml)
    "Trial task failed for trial",  # a failed trial: Progress prints one line with the error file
    "Trials did not complete:",  # the grid's summary lists the failed trials
    "Failed to fetch metrics for",  # Tune's result table looks for the per-trial logger files the grid never writes
)


class _DropRayNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not any(text in message for text in _DROPPED)


def quiet_ray() -> None:
    """Call before ``ray.init`` and again after it (Ray installs its log handlers in ``init``)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter: silent at verbose=0
    # Tune warns (3 lines) whenever trials checkpoint within 5 s of each other, since each checkpoint forces a
    # snapshot of its state; trials checkpoint by design (ablate.tune), so the advice is not the user's to act
    # on. Its documented switch, 0, turns that warning off (the one about slow syncs stays).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    noise = _DropRayNoise()
    for name in ("ray", "ray.tune", "ray.air"):
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if not any(isinstance(f, _DropRayNoise) for f in handler.filters):
                handler.addFilter(noise)
        if not any(isinstance(f, _DropRayNoise) for f in logger.filters):
            logger.addFilter(noise)


def _drop_noise_of_an_ending_worker(previous, unraisable) -> None:
    if issubclass(unraisable.exc_type, SystemExit):
        return
    if (issubclass(unraisable.exc_type, ConnectionError)
            and getattr(unraisable.object, "__module__", "").startswith("wandb.")):
        return
    previous(unraisable)


def quiet_trial_process() -> None:
    """Call at the start of each trial, in its worker process (idempotent).

    Ray's worker turns SIGTERM (the raylet ending an actor Tune no longer needs) into ``SystemExit``. When the
    signal lands while a finalizer runs (a weakref callback during garbage collection), Python cannot raise
    it there and prints "Exception ignored in ..." with a traceback, which Ray forwards to the driver's console
    although nothing failed: the worker is being ended. Such a ``SystemExit`` is dropped. So is the
    ``ConnectionError`` of W&B's exit hook when the trial's W&B service ended first (a grid stopped with Ctrl-C
    signals every process, the service included): some 30 lines per running trial, about a run that the
    interrupted trial could not finish anyway. Every other exception a finalizer or exit hook raises is still
    printed by the hook that was there before.
    """
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no line per saved checkpoint
    hook = sys.unraisablehook
    if getattr(hook, "func", None) is not _drop_noise_of_an_ending_worker:
        sys.unraisablehook = functools.partial(_drop_noise_of_an_ending_worker, hook)


def last_line(error_text: str, limit: int = 300) -> str:
    """The last non-empty line of an error text (``Type: message``), cut to `limit` characters."""
    lines = [line.strip() for line in str(error_text).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "unknown error")[:limit]


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class TrialProgress:
    """Progress of one trial from its evaluations (`update` is ``fit``'s ``on_eval``). Epochs are numbered
    from 0, as in the result row's ``best_epoch`` and ``curve``; the cap is a count.

    `stream` defaults to stderr; on a terminal a tqdm bar over the epoch cap is redrawn in place, else a
    plain line is written at most every `every` seconds (and for the last evaluation, by `close`).
    """

    def __init__(self, epochs: int, valid_metric: str, stream=None, every: float = 30.0, tty: bool | None = None):
        self.epochs, self.metric, self.every = epochs, valid_metric, every
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = time.time()
        self.last_print = -float("inf")
        self.best, self.best_epoch, self.epoch, self.printed = -float("inf"), -1, -1, -1
        self.text = ""
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            # the terminal's size, or 120 x 24 where it reports none (tqdm trims the line to the width, and
            # hides a bar below the last row: a terminal of size 0 x 0 would show nothing)
            size = shutil.get_terminal_size((120, 24))
            # redrawn at every evaluation (mininterval=0, miniters=1): one update per evaluation is cheap, and
            # tqdm's default rate limit would skip the updates of fast epochs
            self.bar = tqdm(total=epochs, file=self.stream, ncols=size.columns, nrows=max(2, size.lines), leave=True,
                            bar_format="{desc} {bar:6}{postfix}", mininterval=0, miniters=1)

    def update(self, point: dict) -> None:
        epoch = int(point["epoch"])
        value = float(point.get(f"valid_{self.metric}", float("nan")))
        if value > self.best:
            self.best, self.best_epoch = value, epoch
        done = epoch + 1
        per_epoch = (time.time() - self.started) / done
        self.epoch = epoch
        stale = epoch - self.best_epoch  # epochs without improvement
        self.text = (f"epoch {epoch} | loss {point.get('loss', float('nan')):.4f} | {self.metric} {value:.4f}, "
                     f"best {self.best:.4f} @{self.best_epoch}, no gain for {stale} epoch{'' if stale == 1 else 's'} "
                     f"| {per_epoch:.2f} s/epoch, ETA {duration(per_epoch * (self.epochs - done))} (cap {self.epochs})")
        if self.bar is not None:
            self.bar.set_description_str(f"epoch {epoch}", refresh=False)
            self.bar.set_postfix_str(self.text.split(" | ", 1)[1], refresh=False)  # shown after ", "
            self.bar.update(done - self.bar.n)
        elif time.time() - self.last_print >= self.every:
            self._print()

    def _print(self) -> None:
        self.last_print, self.printed = time.time(), self.epoch
        print(self.text, file=self.stream, flush=True)

    def close(self) -> None:
        """End the display: close the bar, or print the last evaluation if its line is not out yet."""
        if self.bar is not None:
            self.bar.close()
        elif self.text and self.printed != self.epoch:
            self._print()


class GridProgress:
    """The grid's console: a progress line every `every` seconds and at the end, one line per failed trial.

    Its methods are Tune's callback hooks (``ablate.tune.Progress`` makes it one). The line gives, per stage (a trial's stage is ``config["cell"]["row"]["stage"]``), cells done / running /
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
            eta = duration(elapsed / self.done * left)
        elif not left:
            eta = "0s"
        return f"{' '.join(parts)}, {self.retries} retried | {duration(elapsed)} elapsed, ETA {eta}"

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
