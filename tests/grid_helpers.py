"""Helpers for the grid tests that start Ray: tiny specs, and processes started in their own session so a
test can kill exactly what it started (by session id), never by process name."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = "synthetic:n_users=80,n_items=50,text_dim=8,image_dim=8,seed=0"


def write_spec(path: Path, **changes) -> Path:
    spec = {"name": "tiny", "datasets": [TINY], "models": ["BPR", "VBPR"],
            "conditions": ["baseline", "text_only", "id_only"], "fills": ["noise"], "seeds": [0, 1],
            "train": {"epochs": 2, "eval_every": 1, "patience": 2, "batch_size": 512, "ks": [10, 20]},
            "resources": {"cpu": 1, "gpu": 0}, "hparams": {"search": "none"}, "max_failures": 2}
    spec.update(changes)
    path.write_text(yaml.safe_dump(spec))
    return path


def probed_run_trial(data, cell, on_eval=None, **trial_options) -> dict:
    """`run_trial` with the private memory (USS) of the trial's process measured before and after reading every
    feature array once, and over the whole trial: its largest value at any evaluation (model, optimizer and
    best weights alive) or at the end, in the row's ``probe_*`` columns; it waits 2 s after reading so that
    trials overlap."""
    import numpy as np

    from ablate.trial import run_trial

    proc = psutil.Process()
    before = proc.memory_full_info().uss
    nbytes, total = 0, 0.0
    for variants in data.features.values():
        for array in variants.values():
            total += float(np.add.reduce(array, axis=None, dtype=np.float64))
            nbytes += array.nbytes
    after = proc.memory_full_info().uss
    read_only = all(not a.flags.writeable for v in data.features.values() for a in v.values())
    time.sleep(2.0)
    peak = after

    def measured_on_eval(point):
        nonlocal peak
        peak = max(peak, proc.memory_full_info().uss)
        if on_eval is not None:
            on_eval(point)

    row = run_trial(data, cell, on_eval=measured_on_eval, **trial_options)
    peak = max(peak, proc.memory_full_info().uss)
    row.update({"probe_private_before_mb": before / 2**20, "probe_private_after_mb": after / 2**20,
                "probe_private_trial_peak_mb": peak / 2**20, "probe_feature_mb": nbytes / 2**20,
                "probe_read_only": read_only, "probe_finite": bool(np.isfinite(total))})
    return row


def failing_run_trial(data, cell, **trial_options) -> dict:
    """`run_trial` that raises for VBPR's id_only cells (a trial that errors whatever the retries)."""
    from ablate.trial import run_trial

    if cell.model == "VBPR" and cell.condition == "id_only":
        raise RuntimeError(f"planted failure for seed {cell.seed}")
    return run_trial(data, cell, **trial_options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Session:
    """A command started in a new session; `kill()` SIGKILLs every process of that session."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None):
        self.log = open(log, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        self.sid = self.proc.pid

    def members(self) -> list[psutil.Process]:
        out = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == self.sid:
                    out.append(p)
            except (ProcessLookupError, PermissionError, psutil.Error):
                pass
        return out

    def kill(self) -> None:
        for _ in range(3):
            members = self.members()
            if not members:
                break
            for p in members:
                try:
                    p.send_signal(signal.SIGKILL)
                except psutil.Error:
                    pass
            psutil.wait_procs(members, timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.proc.args} did not finish in {timeout} s; log: {self.log.name}")

    @classmethod
    def run(cls, args: list[str], log: Path, env: dict | None = None, timeout: float = 300) -> tuple[int, str]:
        """Run `args` to its end (at most `timeout` s), then kill whatever of its session is left; returns its
        exit code and its log."""
        session = cls(args, log, env)
        try:
            code = session.wait(timeout=timeout)
        finally:
            session.kill()
        return code, log.read_text()


def grid_command(spec: Path, results: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "experiments" / "full_grid.py"), "--spec", str(spec), "--results",
            str(results), "--progress-every", "2", *extra]


def wait_for(predicate, timeout: float, what: str, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def part_files(results: Path) -> list[Path]:
    return sorted(results.glob("part-*.parquet"))


def text_of_tree(root: Path, limit: int = 50_000_000) -> bytes:
    """All bytes of the files under root (small test trees)."""
    blob = bytearray()
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < limit:
            blob += path.read_bytes()
    return bytes(blob)


def vbpr_fails_after_one_evaluation(data, cell, on_eval=None, **trial_options) -> dict:
    """`run_trial`, except that a VBPR trial raises right after reporting its first evaluation."""
    from ablate.trial import run_trial

    if cell.model != "VBPR":
        return run_trial(data, cell, on_eval=on_eval, **trial_options)

    def report_then_fail(point: dict) -> None:
        on_eval(point)
        raise RuntimeError("planted failure after the first evaluation")

    return run_trial(data, cell, on_eval=report_then_fail, **trial_options)


def timed_run_trial(data, cell, **trial_options) -> dict:
    """`run_trial` that takes 6 s longer for VBPR, with the wall clock at its start and end in the row's
    ``probe_started`` and ``probe_ended`` columns."""
    from ablate.trial import run_trial

    started = time.time()
    if cell.model == "VBPR":
        time.sleep(6.0)
    row = run_trial(data, cell, **trial_options)
    row.update({"probe_started": started, "probe_ended": time.time()})
    return row
