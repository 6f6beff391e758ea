"""Kill the driver mid-grid (SIGKILL to its whole session: driver and the local Ray it started), then
`--resume`: only the missing cells run, no row is rewritten, and the final table has each cell once; with a
search, the restored plan goes on choosing and streaming the knockout cells."""
import re
import time

import pytest

from ablate.results import ResultStore
from tests.grid_helpers import Session, grid_command, part_files, wait_for, write_spec


@pytest.mark.parametrize("hparams, cells", [
    ({"search": "none"}, 8),  # BPR: baseline x 2 seeds; VBPR: 3 conditions x 2 seeds
    ({"max_points": 2, "seeds": [0]}, 10),  # + 2 points x 2 models searched, each seed-0 baseline a search trial
], ids=["no-search", "search"])
def test_resume_after_the_driver_is_killed_runs_only_missing_cells(tmp_path, hparams, cells):
    spec = write_spec(tmp_path / "g.yaml", hparams=hparams,
                      train={"epochs": 15, "patience": 15, "batch_size": 256, "ks": [10, 20]})
    results = tmp_path / "results"
    first = Session(grid_command(spec, results, "--num-cpus", "1"), tmp_path / "first.log",
                    env={"WANDB_MODE": "disabled"})
    try:
        wait_for(lambda: len(part_files(results)) >= 2, 240, "two finished rows", every=0.2)
    finally:
        first.kill()
    before = {p.name: p.stat().st_mtime for p in part_files(results)}
    assert 2 <= len(before) < cells, "the driver finished before it was killed: nothing to resume"
    time.sleep(0.5)
    code, log = Session.run(grid_command(spec, results, "--num-cpus", "2", "--resume"), tmp_path / "second.log",
                            env={"WANDB_MODE": "disabled"})
    assert code == 0, log[-3000:]
    after = {p.name: p.stat().st_mtime for p in part_files(results)}
    assert all(after.get(name) == mtime for name, mtime in before.items())  # nothing rewritten or lost
    assert len(after) == cells  # one file per cell: nothing ran twice
    rows = ResultStore(results).read()
    assert len(rows) == cells and rows["key"].is_unique
    ran = sum(int(n) for n in re.findall(r"^(?:search|grid): \d+ cells, \d+ already done, (\d+) ran", log, re.M))
    assert ran == cells - len(before) and "restoring the interrupted run" in log, log[-3000:]


def test_a_trial_tune_could_not_start_on_a_reused_actor_is_handed_out_again(tmp_path):
    # TUNE_FUNCTION_THREAD_TIMEOUT_S=0: a reused actor never waits for its previous trial's thread, so Tune
    # fails the next trial there without telling the searcher (what a loaded node does at the default 2 s);
    # the grid must still run each cell once and end, not wait forever for those trials
    spec = write_spec(tmp_path / "g.yaml")
    results = tmp_path / "results"
    code, log = Session.run(grid_command(spec, results, "--num-cpus", "2"), tmp_path / "grid.log",
                            env={"WANDB_MODE": "disabled", "TUNE_FUNCTION_THREAD_TIMEOUT_S": "0"})
    assert code == 0, log[-3000:]
    assert "Could not re-use actor" in log, "no actor reuse failed: the path under test did not run"
    rows = ResultStore(results).read()
    assert len(rows) == len(part_files(results)) == 8 and rows["key"].is_unique
    assert set(rows["status"]) == {"finished"}
