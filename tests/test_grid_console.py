"""`ablate grid` end to end with W&B offline, as a user runs it: a reduced demo grid (both stages, the same code
paths) whose whole console output (stdout and stderr together) holds no traceback, crash report or stall
warning, and whose W&B offline files hold each trial's streamed metrics, by epoch, with the run's status."""
import os
import subprocess
import sys

import yaml

from ablate.results import ResultStore

from tests import wandb_files
from tests.grid_helpers import ROOT

FORBIDDEN = ("Traceback", "SIGABRT", "Fatal Python error", "performance bottleneck", "may become a bottleneck")


def test_demo_grid_console_is_clean_and_wandb_offline_files_hold_every_trials_metrics(tmp_path):
    # the demo preset, smaller: two models, two conditions, one seed, 2 epochs (each evaluation checkpointed)
    spec = tmp_path / "demo.yaml"
    spec.write_text(yaml.safe_dump({"preset": "demo", "models": ["BPR", "VBPR"], "conditions": ["baseline", "text_only"],
                                    "seeds": [0], "train": {"epochs": 2, "eval_every": 1, "patience": 2,
                                                            "batch_size": 1024, "ks": [10, 20]}}))
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    env.pop("WANDB_API_KEY", None)
    done = subprocess.run([sys.executable, "-m", "ablate.cli", "grid", "--spec", str(spec), "--results", str(results),
                           "--num-cpus", "2", "--progress-every", "2", "--checkpoint-every", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    out = done.stdout
    assert done.returncode == 0, out[-4000:]
    lines = out.splitlines()
    bad = [i for i, line in enumerate(lines) if any(word in line for word in FORBIDDEN)]
    assert not bad, "\n".join(lines[max(0, bad[0] - 5):bad[0] + 40])  # the first one, with what Ray printed around it
    assert "Configuration for experiment" not in out and "Token authentication" not in out  # Ray's noise
    assert "[search] " in out and "[grid] " in out and "grid: " in out  # progress per stage, then the summary

    rows = ResultStore(results).read()
    files = sorted(results.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == len(rows) >= 5  # one run per trial: 4 search points + the knockout cell
    by_job, final = {"search": 0, "grid": 0}, []
    for path in files:
        info = wandb_files.run_info(path)
        by_job[info["job_type"]] += 1
        assert info["group"] in ("synthetic/BPR", "synthetic/VBPR") and "seed=0" in info["tags"]
        history = [h for h in wandb_files.history(path) if "valid_recall@20" in h]
        assert [h["_step"] for h in history] == [0, 1], path  # streamed per evaluation, step = epoch
        assert all(0 <= h["valid_recall@20"] <= 1 and h["loss"] > 0 for h in history)
        summary = wandb_files.summary(path)
        assert wandb_files.exit_code(path) == 0 and summary["status"] == "finished" and summary["collapsed"] == 0
        final.append(summary["test_recall@20"])
    assert by_job["search"] == 4 and by_job["grid"] >= 1
    assert sorted(final) == sorted(rows["test_recall@20"])  # each run ends with its trial's row
