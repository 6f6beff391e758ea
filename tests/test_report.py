"""The report: numbers against a hand computation, collapsed / missing cells, reliance on a planted signal."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from ablate.cli import main
from ablate.data import make_synthetic
from ablate.report import Options, ReportError, build_report, summarize
from ablate.report import stats
from ablate.report.reliance import reliance
from ablate.results import ResultStore

from .report_rows import row, run_grid

T_975_DF2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom (from tables)


def hand_rows():
    """FREEDOM: 3 seeds per cell, one text_only seed collapsed; VBPR: image_only all collapsed, id_only absent."""
    rows = []
    for seed, (b, t, i, d) in enumerate([(0.10, 0.095, 0.06, 0.05), (0.12, 0.118, 0.07, 0.065),
                                         (0.11, 0.104, 0.068, 0.06)]):
        rows.append(row(model="FREEDOM", seed=seed, value=b))
        rows.append(row(model="FREEDOM", condition="text_only", fill="noise", seed=seed, value=t,
                        status="collapsed" if seed == 2 else "finished", reason="loss is nan at epoch 3"))
        rows.append(row(model="FREEDOM", condition="image_only", fill="noise", seed=seed, value=i))
        rows.append(row(model="FREEDOM", condition="id_only", fill="noise", seed=seed, value=d))
        rows.append(row(model="VBPR", seed=seed, value=0.09 + 0.01 * seed))
        rows.append(row(model="VBPR", condition="text_only", fill="noise", seed=seed, value=0.09 + 0.011 * seed))
        rows.append(row(model="VBPR", condition="image_only", fill="noise", seed=seed, status="collapsed",
                        reason="all scores equal"))
    return rows


def cell(summary, model, condition, metric="recall@20"):
    part = summary[(summary["setting"] == model) & (summary["condition"] == condition) & (summary["metric"] == metric)]
    assert len(part) == 1, part
    return part.iloc[0]


def test_numbers_equal_a_hand_computation():
    summary = summarize(pd.DataFrame(hand_rows()), Options(metrics=("recall@20",)))
    base = [0.10, 0.12, 0.11]
    image = [0.06, 0.07, 0.068]
    # baseline: mean and t interval, by hand
    mean = sum(base) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in base) / 2)
    b = cell(summary, "FREEDOM", "baseline")
    assert b["mean"] == pytest.approx(mean, abs=1e-12)
    assert b["ci_low"] == pytest.approx(mean - T_975_DF2 * sd / math.sqrt(3), abs=1e-9)
    assert b["ci_high"] == pytest.approx(mean + T_975_DF2 * sd / math.sqrt(3), abs=1e-9)
    # image_only: relative change over paired seeds, its interval, the paired t-test
    d = [i - x for i, x in zip(image, base)]
    d_mean = sum(d) / 3
    d_sd = math.sqrt(sum((x - d_mean) ** 2 for x in d) / 2)
    c = cell(summary, "FREEDOM", "image_only")
    assert c["rel_change"] == pytest.approx(d_mean / mean, abs=1e-12)
    assert c["rel_ci_low"] == pytest.approx((d_mean - T_975_DF2 * d_sd / math.sqrt(3)) / mean, abs=1e-9)
    t_stat = d_mean / (d_sd / math.sqrt(3))
    from scipy.stats import t as student

    p_image = 2 * student.sf(abs(t_stat), 2)
    assert c["p_value"] == pytest.approx(p_image, rel=1e-9)
    # text_only: seed 2 collapsed, so two pairs only
    t = cell(summary, "FREEDOM", "text_only")
    assert t["n_pairs"] == 2 and t["n_finished"] == 2 and t["n_collapsed"] == 1
    assert t["rel_change"] == pytest.approx(((0.095 - 0.10) + (0.118 - 0.12)) / 2 / 0.11, abs=1e-12)
    # Holm within FREEDOM's family of three knockouts: sorted p times (3, 2, 1), made monotone
    family = summary[(summary["setting"] == "FREEDOM") & (summary["condition"] != "baseline")]
    p = family["p_value"].to_numpy()
    order = np.argsort(p)
    expected = np.maximum.accumulate(np.minimum(1, p[order] * np.array([3, 2, 1])))
    assert family["p_adjusted"].to_numpy()[order] == pytest.approx(expected)


def test_collapsed_missing_and_partial_cells_are_marked(tmp_path):
    summary = summarize(pd.DataFrame(hand_rows()), Options(metrics=("recall@20",)))
    assert cell(summary, "VBPR", "image_only")["state"] == "collapsed"
    assert math.isnan(cell(summary, "VBPR", "image_only")["mean"])  # never a score
    assert cell(summary, "VBPR", "id_only")["state"] == "missing"
    assert cell(summary, "FREEDOM", "text_only")["state"] == "partial"
    assert cell(summary, "FREEDOM", "image_only")["state"] == "ok"
    build_report(pd.DataFrame(hand_rows()), tmp_path, Options(metrics=("recall@20",)))
    md = (tmp_path / "report.md").read_text()
    assert "| VBPR | image only (text out) | noise | retrain | 0,1,2 | collapsed (3/3) | collapsed |" in md
    assert "| VBPR | ID only (both out) | noise | retrain | none | missing | missing |" in md
    assert "(2/3 finished, 1 collapsed)" in md
    page = (tmp_path / "index.html").read_text()
    assert '<td class="collapsed">collapsed (3/3)</td>' in page
    assert '<td class="missing">missing</td>' in page
    tex = (tmp_path / "tables" / "toy-recall20.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and "collapsed (3/3)" in tex


def test_failed_trials_are_counted_and_shown_never_scored(tmp_path):
    rows = hand_rows() + [row(model="VBPR", condition="id_only", fill="noise", seed=s, status="failed") for s in (0, 1)]
    rows += [row(model="FREEDOM", condition="text_only", fill="noise", seed=3, status="failed")]
    summary = summarize(pd.DataFrame(rows), Options(metrics=("recall@20",)))
    failed = cell(summary, "VBPR", "id_only")
    assert failed["state"] == "failed" and failed["n_failed"] == 2 and math.isnan(failed["mean"])
    assert cell(summary, "FREEDOM", "text_only")["n_failed"] == 1
    build_report(pd.DataFrame(rows), tmp_path, Options(metrics=("recall@20",)))
    md = (tmp_path / "report.md").read_text()
    assert "failed (2/2)" in md and "1 collapsed, 1 failed)" in md and "3 failed) on" in md


def test_reliance_of_a_study_without_single_modality_knockouts_is_one_line(tmp_path):
    """Only baseline and id_only: the 'without both' ranking, one line saying leaning is not measured."""
    rows = []
    for seed in (0, 1):
        for model, base, knocked in (("LGMRec", 0.30, 0.15), ("DualGNN", 0.30, 0.31)):
            rows.append(row(model=model, seed=seed, value=base + 0.01 * seed))
            rows.append(row(model=model, condition="id_only", fill="noise", seed=seed, value=knocked + 0.01 * seed))
    build_report(pd.DataFrame(rows), tmp_path, Options(metrics=("recall@20",)))
    md = (tmp_path / "report.md").read_text()
    bullets = [l for l in md.splitlines() if l.startswith("- toy:")]
    assert bullets[0].startswith("- toy: recall@20 lost without both (fill noise): LGMRec +")
    assert bullets[0].index("LGMRec") < bullets[0].index("DualGNN")  # most lost first
    assert bullets[1] == ("- toy: no finished image_only / text_only cells (fill noise), so which modality "
                          "each model leans on is not measured")
    assert len(bullets) == 2 and "leans on unknown" not in md


def test_not_significant_cells_are_marked():
    rows = [row(seed=s, value=v) for s, v in enumerate([0.10, 0.12, 0.11])]
    rows += [row(condition="text_only", fill="noise", seed=s, value=v) for s, v in enumerate([0.11, 0.11, 0.11])]
    summary = summarize(pd.DataFrame(rows), Options(metrics=("recall@20",)))
    c = cell(summary, "FREEDOM", "text_only")
    assert c["p_adjusted"] > 0.05 and c["mark"] == "ns"


def test_stats_helpers():
    assert stats.adjust([0.01, 0.04, 0.03, math.nan], "holm")[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(stats.adjust([0.01, math.nan], "holm")[1])
    assert stats.adjust([0.01, 0.04, 0.03], "bh") == pytest.approx([0.03, 0.04, 0.04])
    assert stats.paired_t([1, 2, 3], [1, 2, 3]) == 1.0
    assert math.isnan(stats.paired_t([1], [2]))
    assert stats.stars(0.004) == "**" and stats.stars(0.2) == "ns" and stats.stars(math.nan) == ""
    assert stats.stars(0.008, alpha=0.005) == "ns"


def test_eval_only_rows_sit_beside_retrained_ones():
    rows = [r for r in hand_rows() if r["model"] == "FREEDOM"]
    rows += [row(condition="image_only", fill="noise", phase="eval_only", seed=s, value=v)
             for s, v in enumerate([0.03, 0.04, 0.035])]
    frame = pd.DataFrame(rows)
    options = Options(metrics=("recall@20",))
    table = reliance(frame, summarize(frame, options), options)
    phases = table.set_index("phase")
    assert phases.loc["eval_only", "lost_text"] == pytest.approx(1 - 0.035 / 0.11)
    assert phases.loc["retrain", "lost_text"] == pytest.approx(1 - (0.06 + 0.07 + 0.068) / 3 / 0.11)


def test_paper_column_for_the_papers_datasets(tmp_path):
    rows = [row(dataset="amazon-baby", seed=s, value=0.05) for s in range(2)]
    rows += [row(dataset="amazon-baby", condition="image_only", fill="noise", seed=s, value=0.03) for s in range(2)]
    summary = summarize(pd.DataFrame(rows), Options(metrics=("ndcg@10",)))
    appendix = json.loads((__import__("ablate.report.paper", fromlist=["DATA"]).DATA).read_text())
    expected = appendix["conditions"]["text_ko_noise"]["FREEDOM"]["Baby"]["ndcg@10"]
    assert cell(summary, "FREEDOM", "image_only", "ndcg@10")["paper"] == expected
    assert cell(summary, "FREEDOM", "baseline", "ndcg@10")["paper"] == 0.0329
    build_report(pd.DataFrame(rows), tmp_path, Options(metrics=("ndcg@10",)))
    assert f"{expected:.4f} ({100 * (expected / 0.0329 - 1):+.1f}%)" in (tmp_path / "report.md").read_text()
    no_paper = summarize(pd.DataFrame(hand_rows()), Options(metrics=("ndcg@10",)))
    assert no_paper["paper"].isna().all()


@pytest.mark.parametrize("change, message", [
    (lambda f: f.drop(columns=["condition"]), "missing column(s) ['condition']"),
    (lambda f: f.assign(condition="text_knockout"), "column 'condition' has value(s) ['text_knockout']"),
    (lambda f: f.drop(columns=["test_recall@20"]), "no column 'test_recall@20'"),
    (lambda f: f.assign(encoders="image=vit"), "column 'encoders' has 'image=vit'; expected a JSON object"),
])
def test_bad_rows_get_one_clear_error(change, message):
    with pytest.raises(ReportError, match=".*".join(map(__import__("re").escape, message.split("*")))):
        summarize(change(pd.DataFrame(hand_rows())), Options(metrics=("recall@20",)))


def test_cli_errors_name_the_source(tmp_path, capsys):
    assert main(["report", str(tmp_path / "absent"), "--out", str(tmp_path / "r")]) == 2
    assert "absent: no such results directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "no result rows" in capsys.readouterr().err


# ---------------------------------------------------------------- a real demo grid
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """FREEDOM and VBPR, every condition, 3 seeds, on data whose whole planted signal is visible through text.

    Then one trial is turned into a collapse and a cell is removed, as a grid with failures would leave them.
    """
    data = make_synthetic(n_users=150, n_items=80, interactions_per_user=10, text_share=1.0, image_share=0.0,
                          text_dim=24, image_dim=32, feature_noise=0.1, popularity=0.0, seed=0)
    rows = run_grid(data, ["FREEDOM", "VBPR"], ["baseline", "text_only", "image_only", "id_only"], [0, 1, 2])
    results = tmp_path_factory.mktemp("demo") / "results"
    store = ResultStore(results)
    for r in rows:
        if r["model"] == "VBPR" and r["condition"] == "image_only":
            continue  # a cell the grid never finished
        if r["model"] == "VBPR" and r["condition"] == "id_only" and r["seed"] == 2:
            r = {**r, "status": "collapsed", "reason": "loss is nan at epoch 4",
                 **{k: math.nan for k in r if k.startswith(("test_", "valid_"))}}
        store.append(r)
    out = results.parent / "report"
    assert main(["report", str(results), "--out", str(out)]) == 0
    return store.read(), out


def test_demo_grid_report_matches_the_rows(demo):
    frame, out = demo
    for name in ("index.html", "report.md", "summary.parquet", "tables/synthetic-ndcg10.tex",
                 "plots/heatmap_synthetic-recall20.png", "plots/curves_synthetic-FREEDOM.png"):
        assert (out / name).exists(), name
    summary = pd.read_parquet(out / "summary.parquet")
    for model, condition in [("FREEDOM", "image_only"), ("FREEDOM", "text_only"), ("VBPR", "text_only")]:
        base = frame[(frame["model"] == model) & (frame["condition"] == "baseline")].set_index("seed")["test_ndcg@10"]
        ko = frame[(frame["model"] == model) & (frame["condition"] == condition)].set_index("seed")["test_ndcg@10"]
        c = cell(summary, model, condition, "ndcg@10")
        assert c["mean"] == pytest.approx(ko.mean(), abs=1e-12)
        assert c["rel_change"] == pytest.approx((ko - base).mean() / base.mean(), abs=1e-12)
    assert cell(summary, "VBPR", "image_only", "ndcg@10")["state"] == "missing"
    partial = cell(summary, "VBPR", "id_only", "ndcg@10")
    assert partial["state"] == "partial" and partial["n_collapsed"] == 1 and partial["n_finished"] == 2
    md = (out / "report.md").read_text()
    assert "| VBPR | ID only (both out) | noise | retrain | 0,1,2 |" in md and "1 collapsed)" in md
    assert "| VBPR | image only (text out) | noise | retrain | none | missing | missing |" in md


def test_planted_text_signal_ranks_text_reliance_above_image_for_freedom(demo):
    _, out = demo
    table = pd.read_parquet(out / "reliance.parquet").set_index("setting")
    freedom = table.loc["FREEDOM"]
    md = (out / "report.md").read_text()
    line = next(l for l in md.splitlines() if l.startswith("- synthetic: FREEDOM leans on"))
    print(line)  # the significance the report finds
    assert freedom["lost_text"] > freedom["lost_image"]
    assert freedom["lost_text"] > 0.1  # knocking text out costs FREEDOM a real share of its recall@20
    p = freedom["p_text_vs_image_adjusted"]
    assert np.isfinite(p) and "p = " in line
    assert ("leans on text" in line) == (p < 0.05)
    assert ("leans on neither" in line) == (p >= 0.05)


def test_search_rows_are_left_out_and_settings_are_told_apart():
    rows = [{**r, "stage": "grid"} for r in hand_rows() if r["model"] == "FREEDOM"]
    rows += [{**row(seed=s, value=0.5, hparams={"reg_weight": 0.1}), "key": f"search-{s}", "stage": "search"}
             for s in range(3)]
    summary = summarize(pd.DataFrame(rows), Options(metrics=("recall@20",)))
    assert set(summary["setting"]) == {"FREEDOM"}
    assert cell(summary, "FREEDOM", "baseline")["mean"] == pytest.approx(0.11)
    two = pd.DataFrame([r for r in hand_rows() if r["model"] == "FREEDOM"]
                       + [row(seed=s, value=0.5, hparams={"reg_weight": 0.1}) for s in range(3)])
    labels = set(summarize(two, Options(metrics=("recall@20",)))["setting"])
    assert len(labels) == 2 and all(label.startswith("FREEDOM [") for label in labels)


def test_degenerate_trials_are_shown_and_never_averaged_with_healthy_seeds(tmp_path):
    """FREEDOM: one text_only seed below popularity; VBPR: every baseline seed below popularity."""
    rows = [{**r, "degenerate": False} for r in hand_rows() if r["model"] == "FREEDOM"]
    for r in rows:
        if r["condition"] == "image_only" and r["seed"] == 2:
            r["degenerate"] = True
    for seed in range(3):
        rows.append({**row(model="VBPR", seed=seed, value=0.02 + 0.001 * seed), "degenerate": True})
        rows.append({**row(model="VBPR", condition="text_only", fill="noise", seed=seed, value=0.09), "degenerate": False})
    summary = summarize(pd.DataFrame(rows), Options(metrics=("recall@20",)))
    image = cell(summary, "FREEDOM", "image_only")
    assert image["n_degenerate"] == 1 and image["n_finished"] == 2 and image["state"] == "partial"
    assert image["mean"] == pytest.approx((0.06 + 0.07) / 2) and image["degenerate_mean"] == pytest.approx(0.068)
    assert image["n_pairs"] == 2
    base = cell(summary, "VBPR", "baseline")
    assert base["state"] == "degenerate" and math.isnan(base["mean"])
    assert cell(summary, "VBPR", "text_only")["state"] == "baseline_degenerate"
    build_report(pd.DataFrame(rows), tmp_path, Options(metrics=("recall@20",)))
    md = (tmp_path / "report.md").read_text()
    assert "(2/3 healthy, 1 degenerate (left out))" in md
    assert "degenerate (3/3 below popularity; their mean 0.0210)" in md
    assert "baseline degenerate (below popularity)" in md
    assert "of which 6 degenerate" not in md and "of which 4 degenerate" in md
    overview = next(l for l in md.splitlines() if l.startswith("| VBPR | degenerate"))
    assert "%" not in overview  # no percentage against a degenerate baseline
    assert '<td class="baseline_degenerate">' in (tmp_path / "index.html").read_text()


def test_labels_say_what_was_kept_and_what_was_knocked_out(tmp_path):
    from ablate.report.tables import knockout_label

    assert knockout_label("text_only", "noise", "retrain") == "text only (image out), noise fill"
    assert knockout_label("id_only", "shuffle", "eval_only") == "ID only (both out), shuffle fill, eval only"
    build_report(pd.DataFrame(hand_rows()), tmp_path, Options(metrics=("recall@20",)))
    md = (tmp_path / "report.md").read_text()
    header = next(l for l in md.splitlines() if l.startswith("| model | baseline |"))
    assert "| text only (image out), noise fill |" in header and "image only (text out), noise fill" in header
    assert "text/noise" not in md and "text noise" not in md


def test_protocol_and_departures_section():
    from ablate.models import MODELS

    rows = [{**r, "train_config": json.dumps({"valid_metric": "ndcg@5", "epochs": 1000, "patience": 20,
                                               "eval_every": 1, "lr": 0.001, "lr_decay": [0.96, 50]})}
            for r in hand_rows()]
    rows += [row(model="BM3", seed=s, value=0.1, scores_read_features=False) for s in range(2)]
    rows += [row(model="BM3", condition="id_only", fill="noise", phase="eval_only", seed=s, value=0.1,
                 scores_read_features=False) for s in range(2)]
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as out:
        build_report(pd.DataFrame(rows), out, Options(metrics=("recall@20",)))
        md = (Path(out) / "report.md").read_text()
    section = md.split("## Protocol and departures")[1].split("## Modality reliance")[0]
    assert "Validation metric: ndcg@5" in section and "Tuning protocol: baseline" in section
    assert "more than 20 evaluations pass without improvement" in section
    assert "FREEDOM 0.001 x0.96 every 50 epochs" in section
    assert "Seeds of each baseline: BM3 on toy: 0,1; FREEDOM on toy: 0,1,2" in section
    assert f"FREEDOM departs from MMRec's implementation: {MODELS['FREEDOM'].departures[0]}" in section
    assert "kNN ties" in MODELS["FREEDOM"].departures[0]
    assert "BM3 departs from MMRec's implementation: none declared" in section
    assert "Uninformative rows: BM3 eval_only knockouts" in section
    assert "(uninformative: scores do not read features)" in md.split("## Tables")[1]


def test_feature_blind_models_come_from_the_rows_and_older_rows_from_the_registry():
    from ablate.report.summary import feature_blind_scorers

    rows = pd.DataFrame([row(model="BM3", scores_read_features=False), row(model="FREEDOM")])
    assert feature_blind_scorers(rows) == {"BM3"}
    # rows written before the column existed: the registry says which models' scores ignore the features
    older = rows.drop(columns="scores_read_features")
    assert "BM3" in feature_blind_scorers(older) and "FREEDOM" not in feature_blind_scorers(older)


def test_degenerate_trials_best_at_their_first_evaluation_are_told_apart(tmp_path):
    """A degenerate trial whose first evaluation was its best and that early stopping ended is named in the
    protocol section with how far it had climbed back (last over lowest since); one that ran every epoch, or
    peaked later, is not."""
    from ablate.report.build import first_evaluation_best

    config = json.dumps({"epochs": 100, "patience": 3, "eval_every": 1, "valid_metric": "recall@20"})

    def curve(values):
        return json.dumps([{"epoch": e, "valid_recall@20": v} for e, v in enumerate(values)])

    rows = []
    for seed in range(3):
        rows.append({**row(model="VBPR", seed=seed, value=0.3), "degenerate": False, "train_config": config})
        rows.append({**row(model="VBPR", condition="id_only", fill="noise", seed=seed, value=0.05),
                     "degenerate": True, "train_config": config, "best_epoch": 0, "epochs": 5,
                     "curve": curve([0.06, 0.02, 0.025, 0.03, 0.04])})  # still climbing back when stopped
    rows[3]["epochs"] = 100  # seed 1 ran every epoch allowed: not ended by early stopping
    rows[5].update(best_epoch=2, curve=curve([0.01, 0.02, 0.05, 0.04, 0.03]))  # seed 2 peaked later
    frame = pd.DataFrame(rows).assign(popularity_valid=0.1)
    found = first_evaluation_best(frame)
    assert found["seed"].tolist() == [0] and found["last_over_lowest"].tolist() == [pytest.approx(2.0)]
    build_report(frame, tmp_path, Options(metrics=("recall@20",)))
    md = (tmp_path / "report.md").read_text()
    assert ("Of the degenerate trials, 1 (VBPR id_only 1) scored best at their first evaluation and were ended "
            "by early stopping, their validation metric at the end 2.00-2.00x its lowest") in md
    assert first_evaluation_best(frame.drop(columns=["curve"])).empty


def test_the_committed_ml100k_rows_give_each_model_three_seeds_and_its_id_only_answer():
    """experiments/ml100k_rows (the rows of experiments/ml100k_models.yaml for SMORE, DA-MRS and MMGCN): every
    baseline has its 3 seeds, and every id_only cell either a paired change over 3 seeds or the degenerate
    flag of all 3 (trials that ended below the popularity ranking)."""
    from ablate.report import read_rows

    from .grid_helpers import ROOT

    frame = read_rows(str(ROOT / "experiments" / "ml100k_rows"))
    summary = summarize(frame, Options(metrics=("recall@20",), paper=False))
    assert set(summary["model"]) == {"SMORE", "DA-MRS", "MMGCN"}
    for model, cells in summary.groupby("model"):
        base = cells[cells["condition"] == "baseline"].iloc[0]
        knocked = cells[cells["condition"] == "id_only"].iloc[0]
        assert base["seeds"] == "0,1,2" and base["n_finished"] == 3 and base["state"] == "ok", model
        assert knocked["n_trials"] == 3, model
        assert (knocked["n_pairs"] == 3 and 0 <= knocked["p_value"] <= 1) or knocked["state"] == "degenerate", model
