"""The study without Ray: both stages through an in-process runner, the tuning protocols, the cells the report
takes (by key), and the end-of-grid summary equal to the report's numbers."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from ablate.data import load
from ablate.grid import GridSpec, HParamSearch, SpecError
from ablate.report import Options, build_report, read_rows, summarize
from ablate.results import ResultStore, knockout_keys
from ablate.study import run_study, summary_table
from ablate.train import TrainConfig
from ablate.trial import run_trial

DATA = "synthetic:n_users=80,n_items=50,text_dim=8,image_dim=8,popularity=0.0,seed=0"
TRAIN = {"epochs": 6, "eval_every": 2, "patience": 2, "batch_size": 256, "ks": [10, 20], "lr": 0.01}


def in_process(results: str, datasets: dict):
    """A `run_cell` that trains the cell here and writes its row, as the Tune trainable and `RowWriter` do."""
    def run_cell(cell, columns):
        row = {**run_trial(datasets[cell.dataset], cell), **columns}
        ResultStore(results).append(row)
        return row
    return run_cell


def study(tmp_path, protocol="baseline", search_seeds=(0, 1, 2)):
    spec = GridSpec(name="t", datasets=[DATA], models=["VBPR"], conditions=["baseline", "text_only"],
                    seeds=[0, 1, 2], train=TRAIN,
                    hparams=HParamSearch(max_points=2, seeds=list(search_seeds), protocol=protocol)).validate()
    results = str(tmp_path / "results")
    datasets = {DATA: load(DATA)}
    run = run_study(spec, datasets, results, in_process(results, datasets))
    return spec, results, run


def test_search_rows_that_are_knockout_cells_count_once_and_every_baseline_has_three_seeds(tmp_path):
    spec, results, run = study(tmp_path)
    rows = ResultStore(results).read()
    # every baseline seed was a search trial at the chosen point: not rerun, and its row says stage search
    baseline_keys = {c.key() for c in run["cells"] if c.condition == "baseline"}
    assert len(baseline_keys) == 3 and set(rows.loc[rows["key"].isin(baseline_keys), "stage"]) == {"search"}
    assert run["grid"]["ran"] == 3  # the text_only cells only
    assert knockout_keys(results) == {c.key() for c in run["cells"]}
    frame = read_rows(results)  # the knockout cells, by key: the other search point's rows are left out
    assert set(frame["key"]) == {c.key() for c in run["cells"]} and len(frame) == 6
    summary = summarize(frame, Options(metrics=("recall@20",), paper=False))
    base = summary[summary["condition"] == "baseline"].iloc[0]
    knocked = summary[summary["condition"] == "text_only"].iloc[0]
    assert base["n_trials"] == 3 and base["seeds"] == "0,1,2" and set(summary["setting"]) == {"VBPR"}
    assert base["n_degenerate"] == knocked["n_degenerate"] == 0
    assert base["n_finished"] == 3 and knocked["n_pairs"] == 3 and knocked["p_value"] == knocked["p_value"]
    # the rows alone (one file, no record of the cells) select the same cells
    assert set(read_rows(rows)["key"]) == set(frame["key"])


def test_console_summary_prints_the_reports_paired_numbers(tmp_path):
    spec, results, run = study(tmp_path)
    text = summary_table(run["cells"], results, "recall@20")
    summary = summarize(read_rows(results), Options(metrics=("recall@20",), paper=False))
    knocked = summary[summary["condition"] == "text_only"].iloc[0]
    from ablate.report.tables import change_text

    assert knocked["state"] == "ok" and knocked["n_pairs"] == 3
    assert "text only (image out), noise fill" in text
    assert change_text(knocked, with_ci=False) in text and f"{knocked['rel_change'] * 100:+.1f}%" in text
    base = summary[summary["condition"] == "baseline"].iloc[0]
    assert f"{base['mean']:.4f}" in text


def test_per_condition_protocol_searches_every_knockout_cell(tmp_path):
    spec, results, run = study(tmp_path, protocol="per_condition", search_seeds=(0,))
    search = spec.search_cells({DATA: load(DATA)})
    points = {json.dumps(c.hparams, sort_keys=True) for c in search}
    assert {(c.condition, c.fill) for c in search} == {("baseline", "none"), ("text_only", "noise")}
    assert len(search) == 2 * len(points) == 4 and run["search"]["ran"] == 4
    # one choice per cell, saved with its cell; each knockout cell runs with its own cell's choice
    assert set(run["chosen"]) == {(DATA, "VBPR", "baseline", "none", "retrain", "{}"),
                                  (DATA, "VBPR", "text_only", "noise", "retrain", "{}")}
    saved = ResultStore(results).child("hparams").read_records()
    assert set(saved["condition"]) == {"baseline", "text_only"} and set(saved["protocol"]) == {"per_condition"}
    for cell in run["cells"]:
        assert cell.hparams == {**cell.hparams, **run["chosen"][spec.choice_slot(cell)]["hparams"]}
    rows = ResultStore(results).read()
    grid_rows = rows[rows["stage"] == "grid"]
    assert set(grid_rows["protocol"]) == {"per_condition"}
    # the report labels the model alone (its cells' hyper-parameters differ by design) and states the protocol
    out = tmp_path / "report"
    build_report(results, out, Options(metrics=("recall@20",), paper=False, curves="none"))
    md = (out / "report.md").read_text()
    assert "Tuning protocol: per_condition" in md and "[" not in md.split("## Tables")[1].split("|")[9]
    summary = pd.read_parquet(out / "summary.parquet")
    assert set(summary["setting"]) == {"VBPR"}


def test_protocol_is_checked():
    with pytest.raises(SpecError, match="hparams.protocol"):
        GridSpec(hparams=HParamSearch(protocol="per_model")).validate()
    with pytest.raises(ValueError, match="per_condition"):
        GridSpec(hparams=HParamSearch(protocol="per_condition")).search_cells()


def test_demo_finds_what_it_planted(tmp_path):
    """The demo's data, training, seeds and default correction (one of its feature-reading models, at its
    default point, to stay fast): the baseline with all its seeds, a p-value for every knockout cell, and at
    least one significant effect."""
    from ablate.grid import preset

    spec = preset("demo").with_overrides(models=["VBPR"], hparams={"search": "none"})
    results = str(tmp_path / "results")
    datasets = {spec.dataset_source(d): load(spec.dataset_source(d)) for d in spec.datasets}
    run_study(spec, datasets, results, in_process(results, datasets))
    out = tmp_path / "report"
    build_report(results, out, Options(curves="none"))
    summary = pd.read_parquet(out / "summary.parquet")
    base = summary[summary["condition"] == "baseline"]
    assert (base["n_finished"] == len(spec.seeds)).all() and len(spec.seeds) >= 3
    knocked = summary[summary["condition"] != "baseline"]
    assert len(knocked) and knocked["p_adjusted"].notna().all() and (knocked["n_pairs"] == len(spec.seeds)).all()
    primary = knocked[knocked["metric"] == "recall@20"]
    print(primary[["condition", "rel_change", "p_adjusted"]].to_string())
    assert (primary["p_adjusted"] < 0.05).any()


def test_a_plan_saved_before_it_could_be_told_not_to_record_still_records(tmp_path):
    """Tune pickles the plan with its experiment; one pickled before `record` existed restores recording."""
    import pickle

    from ablate.study import StudyPlan

    spec = GridSpec(name="t", datasets=[DATA], models=["VBPR"], conditions=["baseline"], seeds=[0], train=TRAIN,
                    hparams=HParamSearch(search="none")).validate()
    results = str(tmp_path / "results")
    old = StudyPlan(spec, {DATA: load(DATA)}, results, set(), record=False)  # chose its one slot, saved nothing
    assert not list(tmp_path.glob("results/hparams/*.parquet"))
    del old.__dict__["record"]
    restored = pickle.loads(pickle.dumps(old))
    restored.ready.clear()
    restored._choose(next(iter(restored.slots)))
    assert len(list(tmp_path.glob("results/hparams/*.parquet"))) == 1
