"""A study's plan (no training): cells per stage, time, GPU-hours and cost from a timings table."""
import json
import math

import numpy as np
import pytest

from ablate.cli import main
from ablate.data import TRAIN, load
from ablate.grid import GridSpec, HParamSearch, SpecError, preset
from ablate.plan import Shape, Timings, plan_grid
from ablate.results import ResultStore
from ablate.study import run_study
from ablate.trial import run_trial

TINY = "synthetic:n_users=60,n_items=40,text_dim=4,image_dim=4,seed=0"


def tiny_shape() -> dict:
    data = load(TINY)
    return {"users": data.n_users, "items": data.n_items, "train_pairs": int((data.split == TRAIN).sum())}


def write_table(tmp_path, seconds, shapes=None, **extra):
    path = tmp_path / "timings.json"
    path.write_text(json.dumps({"shapes": shapes or {"tiny": tiny_shape()},
                                "nodes": {"box": {"cpus": 4, "gpus": 1, "about": "test node"}},
                                "seconds": {"box": seconds}, **extra}))
    return Timings.load(path)


def test_cells_per_stage_are_the_grids():
    spec = preset("demo")
    plan = plan_grid(spec, "cpu-2")
    search = spec.search_cells()
    source = spec.dataset_source(spec.datasets[0])
    chosen = {(source, m): spec.search_points(m)[0] for m in spec.models}
    knockout = {c.key() for c in spec.knockout_cells(chosen, {source: load(source)})} - {c.key() for c in search}
    assert [(s.name, s.cells) for s in plan.stages] == [("search", len(search)), ("knockout", len(knockout))]
    assert {"BPR", "VBPR"} <= {r["model"] for r in plan.rows} <= set(spec.models)
    text = plan.format()
    assert "search" in text and "knockout" in text and "total" in text


def test_trial_time_wall_time_gpu_hours_and_cost(tmp_path):
    timings = write_table(tmp_path, {"tiny": {"BPR": {"epoch": 2.0, "eval": 1.0}}},
                          typical_best_epoch={"BPR": 4}, trial_overhead_seconds=3.0)
    spec = GridSpec(datasets=[TINY], models=["BPR"], seeds=[0, 1, 2], resources={"cpu": 1, "gpu": 0.25},
                    train={"epochs": 30, "patience": 3, "eval_every": 2},
                    hparams=HParamSearch(search="none")).validate()
    plan = plan_grid(spec, "box", workers=2, price=1.5, timings=timings)
    epochs = 4 + 3 * 2  # typical best epoch + patience x eval_every, under the 30 allowed
    trial = 3.0 + epochs * 2.0 + (math.ceil(epochs / 2) + 1) * 1.0
    assert plan.rows[0]["epochs"] == epochs and plan.rows[0]["trial"] == pytest.approx(trial)
    assert plan.slots == 4  # 4 CPUs / 1, 1 GPU / 0.25
    search, knockout = plan.stages
    assert search.cells == 0 and knockout.cells == 3  # no search; ID-only: baseline x 3 seeds
    assert knockout.trial_seconds == pytest.approx(3 * trial)
    assert knockout.gpu_seconds == pytest.approx(3 * trial * 0.25)
    assert plan.wall_seconds(knockout) == pytest.approx(3 * trial / (2 * 4))
    cost = 3 * trial / (2 * 4) * 2 / 3600 * 1.5
    assert f"${cost:,.2f}" in plan.format()
    # the spec's maximum epochs caps the typical ones
    short = plan_grid(spec.with_overrides(epochs=5), "box", timings=timings)
    assert short.rows[0]["epochs"] == 5


def test_unmeasured_shape_is_scaled_through_the_two_nearest_measured():
    timings = Timings(shapes={"small": {"users": 100, "items": 50, "train_pairs": 4096},
                              "large": {"users": 800, "items": 400, "train_pairs": 32768}},
                      nodes={"box": {"cpus": 2}},
                      seconds={"box": {"small": {"M": {"epoch": 2.0, "eval": 0.5}},
                                       "large": {"M": {"epoch": 64.0, "eval": 8.0}}}})
    # per batch: 1 s on small (size 4246), 4 s on large (size 33968): exponent log 4 / log 8 = 2/3
    epoch, evaluation, source = timings.per_trial("box", "M", Shape(400, 200, 16384), 2048)
    size_ratio = (400 + 200 + 16384) / (800 + 400 + 32768)
    assert epoch == pytest.approx(4.0 * size_ratio ** (2 / 3) * 8)
    assert evaluation == pytest.approx(8.0 * (400 * 200) / (800 * 400))
    assert source.startswith("scaled")
    assert timings.per_trial("box", "M", Shape(100, 50, 4096), 2048) == (2.0, 0.5, "measured")
    # a smaller batch: more batches of the same per-batch cost
    assert timings.per_trial("box", "M", Shape(100, 50, 4096), 1024)[0] == pytest.approx(4.0)


def test_errors_name_what_is_missing(tmp_path):
    timings = write_table(tmp_path, {"tiny": {"BPR": {"epoch": 2.0, "eval": 1.0}}})
    spec = GridSpec(datasets=[TINY], models=["BPR", "VBPR"], hparams=HParamSearch(search="none")).validate()
    partial = plan_grid(spec, "box", timings=timings)  # VBPR's cells counted, not estimated, and said so
    assert [r["model"] for r in partial.rows] == ["BPR"] and partial.stages[1].cells == 1 + 4
    assert partial.stages[1].trial_seconds == pytest.approx(partial.rows[0]["trial"])
    assert "no timings of VBPR on node type 'box': their 4 cells are counted but not in the hours" in partial.format()
    with pytest.raises(SpecError, match="node type 'nowhere'"):
        plan_grid(spec, "nowhere", timings=timings)
    with pytest.raises(SpecError, match="dataset 'atlantis'.*not on this machine"):
        plan_grid(GridSpec(datasets=["atlantis"], models=["BPR"]).validate(), "box", timings=timings)
    gpu = GridSpec(datasets=[TINY], models=["BPR"], resources={"cpu": 1, "gpu": 0.5}).validate()
    with pytest.raises(SpecError, match="no GPU"):
        plan_grid(gpu, "cpu-2")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"seconds": {"box": {"tiny": {"BPR": {"epoch": 1.0}}}}}))
    with pytest.raises(SpecError, match=r"bad.json: seconds.box.tiny.BPR: expected \{epoch"):
        Timings.load(bad)


@pytest.mark.parametrize("name", ["demo", "paper", "full"])
def test_presets_plan_from_the_shipped_table(name, capsys):
    """`ablate grid --plan`: every preset is planned without its data (paper and full: by the datasets' known shapes), on the
    shipped CPU timings; the presets' GPU share is set to 0 for that CPU node."""
    assert main(["grid", "--preset", name, "--plan", "--gpus-per-trial", "0", "--cpus-per-trial", "1",
                      "--price-per-hour", "0.5"]) == 0
    out = capsys.readouterr().out
    assert f"plan of grid {name!r} on node type cpu-2" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    total = lines["total"]
    assert int(total[1]) == int(lines["search"][1]) + int(lines["knockout"][1]) > 0
    assert float(total[2]) > 0 and total[-1].startswith("$")
    if name != "demo":
        assert "baby" in out and "clothing" in out


class Stop(Exception):
    pass


def test_a_resumed_grid_is_planned_from_its_rows(tmp_path):
    """Cells with a row are not counted, a chosen slot's knockout cells are counted at the chosen point, and
    the epochs run come from the rows at the cells' hyper-parameters; a per-condition grid is planned too."""
    timings = write_table(tmp_path, {"tiny": {"VBPR": {"epoch": 2.0, "eval": 1.0}}}, typical_best_epoch={"VBPR": 100})
    spec = GridSpec(name="t", datasets=[TINY], models=["VBPR"], conditions=["baseline", "text_only"],
                    seeds=[0, 1, 2],
                    train={"epochs": 30, "eval_every": 2, "patience": 2, "batch_size": 256, "ks": [10, 20]},
                    hparams=HParamSearch(max_points=2, seeds=[0])).validate()
    results = str(tmp_path / "results")
    fresh = plan_grid(spec, "box", timings=timings, results=results)
    # 2 points x seed 0; 3 seeds x 2 conditions, less the baseline seed 0 that the search runs
    assert [(s.name, s.cells) for s in fresh.stages] == [("search", 2), ("knockout", 5)]
    assert fresh.rows[0]["epochs"] == 30 and "not counted" not in fresh.format()
    assert not (tmp_path / "results").exists()  # planning writes nothing

    datasets, rows = {TINY: load(TINY)}, []

    def run_cell(cell, columns):  # the search, then one knockout cell, then the grid stops
        if len(rows) == 3:
            raise Stop
        rows.append({**run_trial(datasets[cell.dataset], cell), **columns})
        ResultStore(results).append(rows[-1])
        return rows[-1]

    with pytest.raises(Stop):
        run_study(spec, datasets, results, run_cell)
    # a row of the other point that ran all 30 epochs (another seed, say): at any point, the mean would move
    ResultStore(results).append({**rows[1], "key": "0" * 24, "seed": 9, "epochs": 30})
    resumed = plan_grid(spec, "box", timings=timings, results=results)
    assert [(s.name, s.cells) for s in resumed.stages] == [("search", 0), ("knockout", 4)]
    # the knockout cells left are at the chosen point: the mean epochs of the rows there (its search trial and
    # the knockout cell that ran), not of the other point's
    chosen = [r["epochs"] for r in rows if r["hparams"] == rows[2]["hparams"]]
    assert rows[2]["stage"] == "grid" and len(chosen) == 2
    at_any_point = math.ceil(np.mean([*chosen, rows[1]["epochs"], 30]))
    assert resumed.rows[0]["epochs"] == math.ceil(np.mean(chosen)) < at_any_point
    text = resumed.format()
    assert f"3 cell(s) of this grid with a row in {results} are not counted" in text
    assert f"epochs run: the mean of the rows in {results} at the cell's hyper-parameters" in text

    per_condition = GridSpec(name="t", datasets=[TINY], models=["VBPR"], conditions=["baseline", "text_only"],
                             seeds=[0, 1, 2], hparams=HParamSearch(max_points=2, seeds=[0], protocol="per_condition"))
    planned = plan_grid(per_condition.validate(), "box", timings=timings)
    # each knockout cell searched at seed 0 (2 cells x 2 points); its seeds 1 and 2 in the knockout stage
    assert [(s.name, s.cells) for s in planned.stages] == [("search", 4), ("knockout", 4)]


def test_a_relative_data_root_names_the_same_cells_as_the_absolute_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = GridSpec(datasets=["baby"], models=["BPR"], hparams=HParamSearch(search="none")).validate()
    relative, absolute = spec.with_overrides(data_root="data"), spec.with_overrides(data_root=str(tmp_path / "data"))
    assert relative.dataset_source("baby") == absolute.dataset_source("baby") == str(tmp_path / "data" / "baby")
    assert [c.key() for c in relative.search_cells()] == [c.key() for c in absolute.search_cells()]


def test_the_plan_is_printed_before_a_grid_runs(monkeypatch, capsys):
    import ablate.tune

    def run_grid(spec, **options):
        assert "plan of grid 'demo'" in capsys.readouterr().out  # printed before anything runs
        assert set(options["datasets"]) == {spec.dataset_source(spec.datasets[0])}  # the plan's, loaded once
        raise SpecError("stop here")

    monkeypatch.setattr(ablate.tune, "run_grid", run_grid)
    assert main(["grid", "--preset", "demo"]) == 2
    assert "stop here" in capsys.readouterr().err
