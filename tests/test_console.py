"""What ablate prints: `ablate trial`'s progress on a terminal and off it, the grid's progress and failure lines,
`ablate --help`; and the W&B run of a trial that raised (finished as failed)."""
import io
import os
import pty
import select
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ablate.console import TrialProgress, quiet_trial_process
from ablate.tune import Progress

from tests import wandb_files
from tests.grid_helpers import ROOT

TRIAL = [sys.executable, "-m", "ablate.cli", "trial", "--data", "synthetic:n_users=80,n_items=60", "--model", "BPR",
         "--epochs", "4", "--force"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def points(values):
    return [{"epoch": e, "loss": 0.5 - 0.01 * e, "valid_recall@20": v} for e, v in enumerate(values)]


def test_trial_progress_counts_best_and_epochs_without_improvement():
    out = io.StringIO()
    progress = TrialProgress(10, "recall@20", stream=out, every=0, tty=False)
    for point in points([0.1, 0.3, 0.2, 0.25]):
        progress.update(point)
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and "\r" not in out.getvalue()  # one plain line per evaluation at every=0
    last = lines[-1]
    assert last.startswith("epoch 3 | loss 0.4700 | recall@20 0.2500, best 0.3000 @1, no gain for 2 epochs")
    assert "s/epoch, ETA " in last and "(cap 10)" in last


def test_trial_progress_off_a_terminal_prints_at_most_every_interval_and_the_last_state():
    out = io.StringIO()
    progress = TrialProgress(10, "recall@20", stream=out, every=3600, tty=False)
    for point in points([0.1, 0.3, 0.2]):
        progress.update(point)
    progress.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" |")[0] for line in lines] == ["epoch 0", "epoch 2"]  # first, then the last at close


def run_in_pty(args: list[str], timeout: float = 240) -> str:
    """Run `args` with stdout and stderr on a pseudo-terminal (80 x 24); return everything it wrote."""
    import fcntl
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    proc = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, cwd=ROOT, env=ENV, close_fds=True)
    os.close(follower)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], timeout)
            if not ready:
                raise AssertionError(f"no output for {timeout} s: {b''.join(chunks)[-2000:]!r}")
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed: the command ended
                break
            if not data:
                break
            chunks.append(data)
    finally:
        proc.wait(timeout=60)
        os.close(leader)
    assert proc.returncode == 0, b"".join(chunks)[-3000:]
    return b"".join(chunks).decode("utf-8", "replace")


def test_trial_on_a_terminal_redraws_one_line_in_place(tmp_path):
    text = run_in_pty([*TRIAL, "--results", str(tmp_path / "r")])
    before_table = text.split("metric ")[0]
    progress_lines = [line for line in before_table.replace("\r\n", "\n").split("\n") if "epoch " in line]
    assert len(progress_lines) == 1, before_table  # every update on the same line ...
    redraws = [part for part in progress_lines[0].split("\r") if part.startswith("epoch ")]
    assert [r.split(" ")[1] for r in redraws][:4] == ["0", "1", "2", "3"], redraws  # ... redrawn after \r
    assert all("loss " in r and "recall@20 " in r and "best " in r and "no gain for" in r and "s/epoch" in r
               and "ETA" in r for r in redraws)


def test_trial_off_a_terminal_prints_plain_lines_and_quiet_prints_none(tmp_path):
    plain = subprocess.run([*TRIAL, "--results", str(tmp_path / "r"), "--progress-every", "0"], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=240)
    assert plain.returncode == 0, plain.stderr[-2000:]
    lines = [line for line in plain.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(" ")[1] for line in lines] == ["0", "1", "2", "3"] and "\r" not in plain.stderr
    quiet = subprocess.run([*TRIAL, "--results", str(tmp_path / "r"), "--quiet"], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=240)
    assert quiet.returncode == 0 and "epoch " not in quiet.stderr and "status finished" in quiet.stdout


def fake_trial(trial_id: str, stage: str, error_file: Path | None = None):
    return SimpleNamespace(trial_id=trial_id, trial_name=f"VBPR-{trial_id}", config={"cell": {"row": {"stage": stage}}},
                           error_file=str(error_file) if error_file else None, path=f"/store/{trial_id}")


def test_grid_progress_line_counts_each_stage_and_says_why_trials_failed(tmp_path):
    error = tmp_path / "error.txt"
    error.write_text("Failure # 1\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                     "RuntimeError: CUDA out of memory\n")
    out = io.StringIO()
    progress = Progress("grid", total=10, already=0, stream=out, totals={"search": (4, 1), "grid": (10, 2)})
    trials = [fake_trial(f"t{i}", "search" if i < 3 else "grid", error if i in (2, 5) else None) for i in range(7)]
    for trial in trials:
        progress.on_trial_start(0, trials, trial)
    for trial in trials[:2] + trials[3:5]:
        progress.on_trial_complete(0, trials, trial)
    progress.on_trial_error(0, trials, trials[2])
    progress.on_trial_error(0, trials, trials[5])
    failure_lines = out.getvalue().splitlines()
    assert failure_lines == [
        "[search] trial failed: VBPR-t2: RuntimeError: CUDA out of memory (traceback: /store/t2/error.txt)",
        "[grid] trial failed: VBPR-t5: RuntimeError: CUDA out of memory (traceback: /store/t5/error.txt)"]
    line = progress.line()
    assert line.startswith("[search] 3/4 done, 0 running, 0 pending, 1 failed (1 RuntimeError) "
                           "[grid] 4/10 done, 1 running, 4 pending, 1 failed (1 RuntimeError), 0 retried |"), line


def test_help_lists_every_command_on_one_line_each():
    out = subprocess.run([sys.executable, "-m", "ablate.cli", "--help"], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, check=True).stdout
    listed = {line.split()[0]: line for line in out.splitlines() if line.startswith("    ") and line.split()}
    assert set(listed) == {"trial", "grid", "data", "features", "report", "analyze", "results"}, out
    assert all(len(line.split()) > 2 for line in listed.values())  # a name and its help on the same line


def test_full_grid_script_and_ablate_grid_take_the_same_options():
    def options(args):
        text = subprocess.run([sys.executable, *args, "--help"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                              check=True).stdout
        return sorted({word.strip("[],") for word in text.split() if word.startswith(("--", "[--"))})

    script = options([str(ROOT / "experiments" / "full_grid.py")])
    assert script == options(["-m", "ablate.cli", "grid"]) and "--resume" in script and "--spec" in script


@pytest.fixture
def offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_a_trial_that_raises_ends_its_wandb_run_as_failed(tmp_path, monkeypatch, offline_wandb):
    """The grid's trainable, outside Tune (its report and context stood in for): the run gets the evaluations
    streamed before the error, by epoch, then exit code 1 (W&B: failed) and the error in its summary."""
    from ablate import tune as grid_tune
    from ablate.data.synthetic import make_synthetic
    from ablate.trial import TrialConfig

    reported = []
    context = SimpleNamespace(get_trial_name=lambda: "VBPR-baseline-t1", get_trial_id=lambda: "abc_00001")
    monkeypatch.setattr(grid_tune.tune, "report", lambda metrics, checkpoint=None: reported.append(metrics))
    monkeypatch.setattr(grid_tune.tune, "get_context", lambda: context)
    monkeypatch.setattr(grid_tune.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(grid_tune, "fetch", lambda datasets, cell: datasets[cell.dataset])  # no object store

    def fails_after_two_evaluations(data, cell, on_eval, **checkpointing):
        on_eval({"epoch": 0, "loss": 0.7, "valid_recall@20": 0.1})
        on_eval({"epoch": 1, "loss": 0.6, "valid_recall@20": 0.2})
        raise RuntimeError("CUDA out of memory")

    cell = TrialConfig(dataset="synthetic", model="VBPR", train={"epochs": 2, "ks": [10, 20]})
    config = {"cell": {"trial": grid_tune._as_config(cell), "row": {"stage": "search"}}}
    results = tmp_path / "results"
    options = grid_tune.RunOptions(results=str(results), storage=str(tmp_path / "tune"), wandb_mode="offline",
                                   wandb_project="ablate-test", run_trial=fails_after_two_evaluations)
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        grid_tune.grid_trainable(config, datasets={"synthetic": make_synthetic(n_users=40, n_items=30)}, options=options)
    assert len(reported) == 2  # both evaluations reached Tune too
    [path] = list(results.glob("wandb/offline-run-*/run-*.wandb"))
    assert wandb_files.exit_code(path) == 1
    summary = wandb_files.summary(path)
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: CUDA out of memory"
    assert [(h["_step"], h["valid_recall@20"]) for h in wandb_files.history(path)] == [(0, 0.1), (1, 0.2)]
    info = wandb_files.run_info(path)
    assert info["group"] == "synthetic/VBPR" and info["job_type"] == "search" and "condition=baseline" in info["tags"]


def test_a_collapsed_trial_ends_its_run_normally_with_numeric_flags(tmp_path, offline_wandb):
    from ablate.tracking import RunSpec, TrialRun

    spec = RunSpec(mode="offline", project="ablate-test", results=str(tmp_path), name="t", run_id="k-t1")
    run = TrialRun.start(spec)
    run.log({"epoch": 0, "loss": float("nan"), "valid_recall@20": 0.0})
    run.finish({"status": "collapsed", "reason": "non-finite loss", "test_recall@20": float("nan"), "epochs": 1})
    [path] = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    summary = wandb_files.summary(path)
    assert wandb_files.exit_code(path) == 0
    assert summary["collapsed"] == 1 and summary["degenerate"] == 0 and summary["status"] == "collapsed"
    assert summary["reason"] == "non-finite loss" and summary["epochs"] == 1 and "test_recall@20" not in summary


def test_wandb_disabled_writes_nothing(tmp_path):
    from ablate.tracking import RunSpec, TrialRun

    assert TrialRun.start(RunSpec(mode="disabled", project="p", results=str(tmp_path))) is None
    assert not list(tmp_path.iterdir())


def test_run_files_reach_results_in_other_storage(tmp_path, offline_wandb):
    """Results given as a URI (object storage): the run is written on the trial's node, then copied to
    <results>/wandb, and the local copy removed."""
    from ablate.tracking import RunSpec, TrialRun

    spec = RunSpec(mode="offline", project="ablate-test", results=f"file://{tmp_path}/results", name="t",
                   run_id="k-t2")
    run = TrialRun.start(spec)
    scratch = Path(run.run.dir).parents[2]
    run.log({"epoch": 0, "loss": 0.5, "valid_recall@20": 0.25})
    run.finish({"status": "finished", "test_recall@20": 0.3})
    [path] = list((tmp_path / "results").glob("wandb/offline-run-*/run-*.wandb"))
    assert wandb_files.exit_code(path) == 0 and wandb_files.history(path)[0]["valid_recall@20"] == 0.25
    assert not scratch.exists()


def test_the_api_key_reaches_the_trials_through_rays_runtime_env(monkeypatch):
    from ablate import tune as grid_tune

    seen = {}
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setattr(grid_tune.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(grid_tune.ray, "init", lambda **kwargs: seen.update(kwargs))
    grid_tune.start_ray("local", num_cpus=1)
    assert seen["runtime_env"]["env_vars"]["WANDB_API_KEY"] == "k" * 40
    assert seen["runtime_env"]["env_vars"]["WANDB_MODE"] == "online"


def test_quiet_ray_drops_only_the_listed_ray_messages():
    import logging

    from ablate.console import quiet_ray

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    ray_logger = logging.getLogger("ray")
    ray_logger.addHandler(handler)
    try:
        quiet_ray()
        tune_logger = logging.getLogger("ray.tune.execution.tune_controller")
        tune_logger.error("Trial task failed for trial VBPR-1", exc_info=(RuntimeError, RuntimeError("x"), None))
        tune_logger.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled")
        tune_logger.warning("The worker on node 3 died: 2 trials will be retried")
        logging.getLogger("ray.tune.analysis.experiment_analysis").warning(
            "Failed to fetch metrics for 2 trial(s):\n- BPR-1: FileNotFoundError('result.json')")
    finally:
        ray_logger.removeHandler(handler)
    assert seen == ["The worker on node 3 died: 2 trials will be retried"]
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"
    assert os.environ["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] == "0"


def test_wandb_files_go_where_every_node_and_the_user_reach_them():
    from ablate.tracking import files_root

    assert files_root("/home/u/results", "/home/u/results/_tune", "local") == "/home/u/results"
    assert files_root("s3://b/results", "s3://b/tune", "auto") == "s3://b/results"
    # a cluster whose rows stay on the driver's disk: not a worker's disk, Tune's shared storage
    assert files_root("/home/u/results", "s3://b/tune", "auto") == "s3://b/tune"


def test_a_trial_process_drops_only_the_sigterm_exit_a_finalizer_could_not_raise(monkeypatch):
    # Ray turns SIGTERM into SystemExit; landing in a finalizer, Python would print it as a traceback
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable.exc_type))
    quiet_trial_process()
    installed = sys.unraisablehook
    quiet_trial_process()
    assert sys.unraisablehook is installed  # wrapped once, however many trials the worker runs

    class RaisesWhenCollected:
        def __init__(self, error):
            self.error = error

        def __del__(self):
            raise self.error

    RaisesWhenCollected(SystemExit(1))
    RaisesWhenCollected(ValueError("a real finalizer bug"))
    assert seen == [ValueError]  # the exit request is dropped, a finalizer's own error still reaches the hook


W_AND_B_SERVICE_GONE = """
import sys
import time
import psutil
from ablate.console import quiet_trial_process
from ablate.tracking import RunSpec, TrialRun
if sys.argv[1] == "quiet":
    quiet_trial_process()
run = TrialRun.start(RunSpec(mode="offline", project="p", results=sys.argv[2], name="t", run_id="t"))
run.log({"epoch": 0, "recall@20": 0.1})
service = psutil.Process().children(recursive=True)
for child in service:  # W&B's service, ended by the same Ctrl-C
    child.kill()
psutil.wait_procs(service, timeout=30)
time.sleep(1.0)  # W&B's reader thread sees the connection closed before the process exits
print(f"trial ended, {len(service)} service process(es) killed", flush=True)
"""


def test_a_trial_process_whose_wandb_service_ended_first_exits_without_a_traceback(tmp_path):
    # a service that a test of this process started is named in WANDB_SERVICE: the trial starts its own
    env = {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, "WANDB_MODE": "offline"}

    def exit_output(mode: str) -> str:
        done = subprocess.run([sys.executable, "-c", W_AND_B_SERVICE_GONE, mode, str(tmp_path / mode)],
                              capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0 and "trial ended" in done.stdout, done.stderr
        assert "ended, 0 service" not in done.stdout, done.stdout
        return done.stderr

    assert "ConnectionResetError" in exit_output("plain")  # W&B's exit hook finds its service gone
    quiet = exit_output("quiet")
    assert "Traceback" not in quiet and "Error" not in quiet
