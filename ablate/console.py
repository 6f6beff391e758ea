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
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time

# Ray messages that say nothing a user acts on, or that the grid's own output says in one line
_DROPPED = (
    "Token authentication is enabled for this Ray cluster",  # on by design (cluster/gpu.yaml)
    "Trial task failed for trial",  # a failed trial: Progress prints one line with the error file
    "Trials did not complete:",  # the grid's summary lists the failed trials
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
