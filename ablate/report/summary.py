"""From result rows to one summary row per cell and metric: the numbers every table and plot reads.

A *cell* is (dataset, encoders, model, hyper-parameters, condition, fill, phase); its trials differ by seed.
For each cell and metric the summary holds the mean over finished seeds with a t confidence interval, and,
for a knockout cell, the change against the same model's baseline on the same dataset and encoders:

    delta_s   = knockout_s - baseline_s                       for each seed s where both finished
    rel       = mean_s(delta_s) / mean_s(baseline_s)           (the paper's relative change, over paired seeds)
    rel CI    = t interval of mean_s(delta_s), divided by mean_s(baseline_s)
    p         = paired t-test of knockout_s against baseline_s, corrected within the family of all
                knockout cells of one (dataset, encoders, model, hyper-parameters, metric)

`state` says what a cell is: ok, partial (fewer finished seeds than the baseline has, or some collapsed),
collapsed (every trial collapsed), missing (no trial, although other models of the dataset have this
condition), no_baseline (no finished baseline to compare with), not_applicable (an ID-only model's knockout).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import paper, stats

CONDITIONS = ("baseline", "text_only", "image_only", "id_only")
FILLS = ("none", "noise", "constant_one", "constant_zero", "mean", "gaussian", "shuffle")
PHASES = ("retrain", "eval_only")
METRIC_NAMES = ("recall", "ndcg", "precision", "map", "hit")
DEFAULT_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@10", "precision@20")
REQUIRED = ("dataset", "model", "condition", "fill", "phase", "seed", "status")
CELL = ["dataset", "encoders", "model", "setting", "condition", "fill", "phase"]


class ReportError(ValueError):
    """The results cannot be reported; the message names the source, the column and what was expected."""


@dataclass
class Options:
    metrics: tuple[str, ...] = DEFAULT_METRICS
    split: str = "test"
    level: float = 0.95
    alpha: float = 0.05
    correction: str = "holm"
    primary: str = "recall@20"  # the metric of the reliance ranking and the plots
    fill: str | None = None  # the fill of the reliance ranking and the bars; None: noise if present, else the first
    curves: str = "all"  # learning curves: all, none, or MODEL or MODEL@DATASET
    paper: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.metrics = tuple(self.metrics)
        for metric in (*self.metrics, self.primary):
            name, _, k = metric.partition("@")
            if name not in METRIC_NAMES or not k.isdigit():
                raise ReportError(f"metric {metric!r}: expected <{'|'.join(METRIC_NAMES)}>@K, e.g. recall@20")
        if self.primary not in self.metrics:
            self.metrics = (*self.metrics, self.primary)
        if self.split not in ("test", "valid"):
            raise ReportError(f"split {self.split!r}: expected test or valid")
        if self.correction not in stats.CORRECTIONS:
            raise ReportError(f"correction {self.correction!r}: expected one of {stats.CORRECTIONS}")
        if not 0 < self.level < 1 or not 0 < self.alpha < 1:
            raise ReportError(f"confidence level {self.level} and alpha {self.alpha} must lie in (0, 1)")


# ---------------------------------------------------------------- reading and checking rows
def read_rows(source) -> pd.DataFrame:
    """Result rows from a DataFrame, a results directory / URI (ResultStore), or one .parquet / .csv file."""
    if isinstance(source, pd.DataFrame):
        frame, where = source.copy(), "the given rows"
    else:
        where = str(source)
        path = Path(where)
        if "://" not in where and not path.exists():
            raise ReportError(f"{where}: no such results directory or file")
        if path.is_file():
            if path.suffix == ".parquet":
                frame = pd.read_parquet(path)
            elif path.suffix == ".csv":
                frame = pd.read_csv(path)
            else:
                raise ReportError(f"{where}: expected a results directory, a .parquet or a .csv file")
        else:
            from ..results import ResultStore

            frame = ResultStore(where).read()
    if frame.empty:
        raise ReportError(f"{where}: no result rows (expected part-*.parquet files written by ablate)")
    return check_rows(frame, where)


def check_rows(frame: pd.DataFrame, where: str = "the rows") -> pd.DataFrame:
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ReportError(f"{where}: missing column(s) {missing}; a results row has {list(REQUIRED)} and metric "
                          f"columns such as test_recall@20")
    if "stage" in frame.columns:  # the grid's hyper-parameter search rows are not knockout results
        frame = frame[frame["stage"].fillna("grid") != "search"]
    for column, allowed in (("condition", CONDITIONS), ("fill", FILLS), ("phase", PHASES),
                            ("status", ("finished", "collapsed"))):
        bad = sorted(set(frame[column].astype(str)) - set(allowed))
        if bad:
            raise ReportError(f"{where}: column {column!r} has value(s) {bad}; expected one of {list(allowed)}")
    frame = frame.copy()
    frame["encoders"] = frame["encoders"].fillna("{}").astype(str) if "encoders" in frame else "{}"
    frame["hparams"] = frame["hparams"].fillna("{}").astype(str) if "hparams" in frame else "{}"
    try:
        frame["seed"] = frame["seed"].astype(int)
    except (TypeError, ValueError):
        raise ReportError(f"{where}: column 'seed' must hold integers") from None
    for column in ("encoders", "hparams"):
        for value in frame[column].unique():
            try:
                json.loads(value)
            except json.JSONDecodeError:
                raise ReportError(f"{where}: column {column!r} has {value!r}; expected a JSON object") from None
    return frame.reset_index(drop=True)


def _settings(frame: pd.DataFrame) -> pd.Series:
    """A model's label per row: the model name, plus a short hash where a model ran with several settings."""
    labels = frame["model"].astype(str).copy()
    for (dataset, model), group in frame.groupby(["dataset", "model"]):
        if group["hparams"].nunique() > 1:
            for hp, idx in group.groupby("hparams").groups.items():
                labels.loc[idx] = f"{model} [{hashlib.sha1(hp.encode()).hexdigest()[:6]}]"
    return labels


def _id_only_models() -> set[str]:
    try:
        from ..models import MODELS
    except Exception:  # the report works on rows alone
        return set()
    return {name for name, cls in MODELS.items() if not getattr(cls, "modalities", ())}


# ---------------------------------------------------------------- the summary
def summarize(frame: pd.DataFrame, options: Options | None = None) -> pd.DataFrame:
    """One row per (cell, metric); see the module's docstring for the columns' meaning."""
    options = options or Options()
    frame = check_rows(frame)
    for metric in options.metrics:
        column = f"{options.split}_{metric}"
        if column not in frame.columns:
            raise ReportError(f"the results have no column {column!r}; "
                              f"metric columns present: {sorted(c for c in frame.columns if '@' in c)}")
    frame = frame.assign(setting=_settings(frame))
    id_only = _id_only_models()
    out = []
    for (dataset, encoders), data in frame.groupby(["dataset", "encoders"], sort=True):
        knockouts = sorted({(c, f, p) for c, f, p in zip(data["condition"], data["fill"], data["phase"])
                            if c != "baseline"}, key=_cell_order)
        for (model, setting), runs in data.groupby(["model", "setting"], sort=True):
            base = runs[runs["condition"] == "baseline"]
            cells = [("baseline", "none", "retrain")] + knockouts
            for condition, fill, phase in cells:
                trials = runs[(runs["condition"] == condition) & (runs["fill"] == fill) & (runs["phase"] == phase)]
                na = condition != "baseline" and model in id_only and trials.empty
                for metric in options.metrics:
                    out.append(_cell(dataset, encoders, model, setting, condition, fill, phase, metric,
                                     trials, base, options, na))
    summary = pd.DataFrame(out)
    return _correct(summary, options)


def _cell_order(key):
    condition, fill, phase = key
    return (PHASES.index(phase), CONDITIONS.index(condition), FILLS.index(fill))


def _cell(dataset, encoders, model, setting, condition, fill, phase, metric, trials, base, options, na) -> dict:
    column = f"{options.split}_{metric}"
    finished = trials[trials["status"] == "finished"]
    values = finished.set_index("seed")[column].astype(float)
    values = values[np.isfinite(values)]
    mean, low, high = stats.mean_ci(values.to_numpy(), options.level)
    row = {
        "dataset": dataset, "encoders": encoders, "model": model, "setting": setting, "condition": condition,
        "fill": fill, "phase": phase, "metric": metric, "n_trials": len(trials), "n_finished": int(values.size),
        "n_collapsed": int((trials["status"] == "collapsed").sum()),
        "seeds": ",".join(str(s) for s in sorted(trials["seed"])),
        "mean": mean, "ci_low": low, "ci_high": high, "base_mean": math.nan, "n_pairs": 0,
        "delta": math.nan, "rel_change": math.nan, "rel_ci_low": math.nan, "rel_ci_high": math.nan,
        "p_value": math.nan, "p_adjusted": math.nan, "mark": "", "state": "ok",
        "reasons": "; ".join(sorted({str(r) for r in trials.loc[trials["status"] == "collapsed", "reason"]
                                     if isinstance(r, str) and r})) if "reason" in trials else "",
        "paper": math.nan, "paper_rel_change": math.nan,
    }
    base_finished = base[base["status"] == "finished"]
    base_values = base_finished.set_index("seed")[column].astype(float)
    base_values = base_values[np.isfinite(base_values)]
    if condition != "baseline":
        pairs = sorted(set(values.index) & set(base_values.index))
        if pairs:
            ko, bs = values.loc[pairs].to_numpy(), base_values.loc[pairs].to_numpy()
            d_mean, d_low, d_high = stats.mean_ci(ko - bs, options.level)
            b_mean = float(bs.mean())
            row.update(base_mean=b_mean, n_pairs=len(pairs), delta=d_mean, p_value=stats.paired_t(ko, bs))
            if b_mean != 0:
                row.update(rel_change=d_mean / b_mean, rel_ci_low=d_low / b_mean, rel_ci_high=d_high / b_mean)
    # state
    if na:
        row["state"] = "not_applicable"
    elif len(trials) == 0:
        row["state"] = "missing"
    elif values.size == 0:
        row["state"] = "collapsed" if row["n_collapsed"] else "missing"
    elif condition != "baseline" and base_values.size == 0:
        row["state"] = "no_baseline"
    elif row["n_collapsed"] or (condition != "baseline" and values.size < base_values.size):
        row["state"] = "partial"
    if options.paper:
        encoders_map = json.loads(encoders)
        value = paper.paper_value(dataset, model, condition, fill, phase, encoders_map, metric)
        if value is not None:
            row["paper"] = value
            base_value = paper.paper_baseline(dataset, model, metric)
            if condition != "baseline" and base_value:
                row["paper_rel_change"] = value / base_value - 1
    return row


def _correct(summary: pd.DataFrame, options: Options) -> pd.DataFrame:
    if summary.empty:
        return summary
    family = ["dataset", "encoders", "setting", "metric"]
    for _, idx in summary.groupby(family).groups.items():
        summary.loc[idx, "p_adjusted"] = stats.adjust(summary.loc[idx, "p_value"].to_numpy(), options.correction)
    summary["mark"] = [stats.stars(p, options.alpha) for p in summary["p_adjusted"]]
    return summary


def primary_fill(summary: pd.DataFrame, options: Options) -> str | None:
    fills = [f for f in FILLS if f != "none" and f in set(summary["fill"])]
    if options.fill:
        if options.fill not in fills:
            raise ReportError(f"fill {options.fill!r} has no rows; the results have fills {fills}")
        return options.fill
    if not fills:
        return None
    return "noise" if "noise" in fills else fills[0]
