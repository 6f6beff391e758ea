"""From result rows to one summary row per cell and metric: the numbers every table and plot reads.

A *cell* is (data, encoders, model, hyper-parameters, training settings, condition, fill, phase); its trials
differ by seed, and a seed appears once per cell (a repeated one is an error, never a second sample). The data
is told by the content hash each row records, not by the dataset's name: copies of a dataset that differ are
reported apart (the name gets a short hash suffix), and so are rows trained with other settings (the model's
label gets one).
For each cell and metric the summary holds the mean over finished seeds with a t confidence interval, and,
for a knockout cell, the change against the same model's baseline on the same dataset and encoders:

    delta_s   = knockout_s - baseline_s                       for each seed s where both finished
    rel       = mean_s(delta_s) / mean_s(baseline_s)           (the paper's relative change, over paired seeds)
    rel CI    = t interval of mean_s(delta_s), divided by mean_s(baseline_s)
    p         = paired t-test of knockout_s against baseline_s, corrected within the family of all
                knockout cells of one (dataset, encoders, model, hyper-parameters, metric)

A *degenerate* trial finished but its best valid metric stayed below the popularity ranking's: it learned
nothing a count of interactions does not give. Like a collapsed trial it is counted and shown, never averaged
with the healthy seeds (its own mean is kept apart in ``degenerate_mean``).

`state` says what a cell is: ok, partial (fewer healthy seeds than the baseline has, or some collapsed or
degenerate), collapsed (every trial collapsed), degenerate (every finished trial degenerate), missing (no
trial, although other models of the dataset have this condition), no_baseline (no finished baseline to compare
with), baseline_degenerate (every finished baseline seed is degenerate: no change is computed),
not_applicable (an ID-only model's knockout).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import knockout
from . import paper, stats

CONDITIONS = tuple(knockout.CONDITIONS)
FILLS = (knockout.NO_FILL, *knockout.FILLS)
PHASES = knockout.PHASES
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
            if path.suffix not in (".parquet", ".csv"):
                raise ReportError(f"{where}: expected a results directory, a .parquet or a .csv file")
            try:
                frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
            except (ValueError, OSError) as exc:  # pyarrow's and pandas' read errors are both ValueErrors
                raise ReportError(f"{where}: not a readable {path.suffix[1:]} file of result rows ({exc})") from None
        else:
            from ..results import ResultStore, knockout_keys

            frame = ResultStore(where).read()
            keys = knockout_keys(where)
            if keys is not None and not frame.empty:  # the knockout stages' cells, by key
                frame["knockout_cell"] = frame["key"].isin(keys)
    if frame.empty:
        raise ReportError(f"{where}: no result rows (expected part-*.parquet files written by ablate)")
    return check_rows(frame, where)


def check_rows(frame: pd.DataFrame, where: str = "the rows") -> pd.DataFrame:
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ReportError(f"{where}: missing column(s) {missing}; a results row has {list(REQUIRED)} and metric "
                          f"columns such as test_recall@20")
    if "stage" in frame.columns:  # search rows count only where they are also knockout cells
        frame = frame[(frame["stage"].fillna("grid") != "search") | knockout_members(frame)]
    for column, allowed in (("condition", CONDITIONS), ("fill", FILLS), ("phase", PHASES),
                            ("status", ("finished", "collapsed", "failed"))):
        bad = sorted(set(frame[column].astype(str)) - set(allowed))
        if bad:
            raise ReportError(f"{where}: column {column!r} has value(s) {bad}; expected one of {list(allowed)}")
    frame = frame.copy()
    frame["degenerate"] = frame["degenerate"].fillna(False).astype(bool) if "degenerate" in frame else False
    frame["protocol"] = frame["protocol"].fillna("baseline").astype(str) if "protocol" in frame else "baseline"
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
    return _identify(frame, where).reset_index(drop=True)


def _identify(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """Columns saying what defines a result beyond its cell's names: ``data_id`` (the content hash of the data
    the trial read; rows written before it was recorded fall back to where the data was loaded from) and
    ``training`` (the training settings). A dataset name that stands for several data gets the hash's start
    as a suffix, so that rows of different data never share a cell."""
    if {"data_hash", "data_source"} <= set(frame):
        # rows written before the hash was recorded take the hash of newer rows of the same source, model and
        # encoders (so an interrupted study continued after an upgrade still pairs its rows)
        same = ["data_source", "model", "encoders"]
        known = frame.dropna(subset=["data_hash"]).groupby(same)["data_hash"].agg(
            lambda h: h.iloc[0] if h.nunique() == 1 else None)
        missing = frame["data_hash"].isna() & frame["data_source"].notna()
        if missing.any() and len(known):
            keys = pd.MultiIndex.from_frame(frame.loc[missing, same])
            frame.loc[missing, "data_hash"] = known.reindex(keys).to_numpy()
    identity = pd.Series(None, index=frame.index, dtype=object)
    for column in ("data_hash", "data_source", "dataset"):
        if column in frame:
            identity = identity.where(identity.notna(), frame[column].astype(object))
    frame["data_id"] = identity.astype(str)
    frame["training"] = [_training(text, where) for text in frame.get("train_config", pd.Series("{}", index=frame.index))]
    frame["dataset"] = frame["dataset"].astype(str)
    shown = _id_only_rows_beside_their_data(frame)
    for name, part in frame.groupby("dataset"):
        if shown[part.index].nunique() > 1:
            frame.loc[part.index, "dataset"] = [f"{name} [{_short(i)}]" for i in shown[part.index]]
    return frame


def _id_only_rows_beside_their_data(frame: pd.DataFrame) -> pd.Series:
    """The data identity each row is shown under. An ID-only model's hash covers the interactions alone, so
    it differs from the hash of the feature-reading models on the same data: its rows are shown under the
    feature rows' identity when their source holds exactly one, and the model's rows there one hash (rows of
    one model with different data are never shown together)."""
    shown = frame["data_id"].copy()
    if "modalities" not in frame or "data_source" not in frame:
        return shown
    id_only = frame["modalities"].astype(str) == "[]"
    for (name, source), part in frame.groupby(["dataset", "data_source"]):
        features = part.loc[~id_only[part.index], "data_id"].unique()
        if len(features) != 1:
            continue
        for _, rows in part[id_only[part.index]].groupby("model"):
            if rows["data_id"].nunique() == 1:
                shown[rows.index] = features[0]
    return shown


def _training(text, where: str) -> str:
    """Training settings as canonical JSON, less what does not change a result (``profile``)."""
    if not isinstance(text, str) or not text:
        return "{}"
    try:
        values = json.loads(text)
    except json.JSONDecodeError:
        raise ReportError(f"{where}: column 'train_config' has {text!r}; expected a JSON object") from None
    values.pop("profile", None)
    return json.dumps(values, sort_keys=True)


def _short(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:6]


def check_seeds(frame: pd.DataFrame) -> None:
    """A seed appears once per cell: two rows of one cell and seed are one trial run twice, never two samples."""
    cell = [c for c in CELL if c in frame] + ["seed"]
    repeated = frame[frame.duplicated(cell, keep=False)]
    if repeated.empty:
        return
    first = repeated.groupby(cell, sort=True).head(2).head(2)
    r = first.iloc[0].to_dict()
    keys = ", ".join(str(k) for k in first.get("key", pd.Series(dtype=str)))
    raise ReportError(
        f"seed {r['seed']} appears {int((repeated[cell] == first.iloc[0][cell]).all(axis=1).sum())} times in the cell "
        f"(dataset {r['dataset']}, model {r['setting']}, {r['condition']}/{r['fill']}/{r['phase']}, encoders "
        f"{r['encoders']}): rows {keys}; expected each seed once per cell (the same trial ran twice, for example from "
        f"two copies of the data: keep one row, or report the copies from separate results folders)")


def knockout_members(frame: pd.DataFrame) -> pd.Series:
    """Per row: whether a search-stage row is also a cell of a knockout stage.

    The grid records its knockout cells' keys (`ablate.study.record_knockout_cells`); `read_rows` turns them
    into the column ``knockout_cell``. Rows read without that record (a single file): a search row
    counts when it is a baseline whose model, dataset, hyper-parameters and seed also have knockout-stage rows.
    """
    if "knockout_cell" in frame.columns:
        return frame["knockout_cell"].fillna(False).astype(bool)
    stage = frame["stage"].fillna("grid")
    grid = frame[stage != "search"]
    hp = frame["hparams"].fillna("{}").astype(str) if "hparams" in frame else pd.Series("{}", index=frame.index)
    seeds = {}
    for (dataset, model, hparams), part in grid.assign(hparams=hp[grid.index]).groupby(
            ["dataset", "model", "hparams"]):
        seeds[(dataset, model, hparams)] = set(part["seed"])
    return pd.Series([s == "search" and c == "baseline" and seed in seeds.get((d, m, h), ())
                      for s, c, d, m, h, seed in zip(stage, frame["condition"], frame["dataset"], frame["model"],
                                                     hp, frame["seed"])], index=frame.index)


def _settings(frame: pd.DataFrame) -> pd.Series:
    """A model's label per row: the model name, plus a short hash where a model ran with several settings
    (hyper-parameters or training settings) on one dataset.

    Under the ``per_condition`` protocol each knockout cell has its own chosen hyper-parameters by design:
    there only training settings tell rows apart (the choices are listed in the report's protocol section).
    """
    labels = frame["model"].astype(str).copy()
    for (dataset, model), group in frame.groupby(["dataset", "model"]):
        settings = ("training",) if (group["protocol"] == "per_condition").all() else ("hparams", "training")
        vary = [c for c in settings if group[c].nunique() > 1]
        if vary:
            labels.loc[group.index] = [f"{model} [{_short(t)}]" for t in group[vary].agg("|".join, axis=1)]
    return labels


def _id_only_models(frame: pd.DataFrame) -> set[str]:
    """Models whose rows say they read no modality (rows written before that was recorded say nothing)."""
    if "modalities" not in frame:
        return set()
    reads = frame["modalities"].dropna().astype(str)
    models = frame.loc[reads.index, "model"].astype(str)
    return {m for m, part in reads.groupby(models) if (part == "[]").all()}


def registered_models() -> dict:
    """The model registry when it can be imported ({} otherwise: the report works on rows alone)."""
    try:
        from ..models import MODELS
    except Exception:
        return {}
    return MODELS


def feature_blind_scorers(frame: pd.DataFrame | None = None) -> set[str]:
    """Models whose scores do not read the features (their eval_only knockouts cannot change a score).

    From the rows' ``scores_read_features`` column where they carry it; the model registry is imported only
    for rows written before that column existed.
    """
    if frame is not None and "scores_read_features" in frame and frame["scores_read_features"].notna().all():
        flags = frame["scores_read_features"].astype(bool)
        return set(frame.loc[~flags, "model"].astype(str))
    return {name for name, cls in registered_models().items() if not getattr(cls, "scores_read_features", True)}


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
    check_seeds(frame)
    id_only = _id_only_models(frame)
    blind = feature_blind_scorers(frame)
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
                    out[-1]["uninformative"] = phase == "eval_only" and model in blind
    summary = pd.DataFrame(out)
    return _correct(summary, options)


def _cell_order(key):
    return knockout.Knockout(*key).order


def _cell(dataset, encoders, model, setting, condition, fill, phase, metric, trials, base, options, na) -> dict:
    column = f"{options.split}_{metric}"
    finished = trials[trials["status"] == "finished"]
    degenerate = finished[finished["degenerate"]]
    values = _healthy(finished, column)
    mean, low, high = stats.mean_ci(values.to_numpy(), options.level)
    row = {
        "dataset": dataset, "encoders": encoders, "model": model, "setting": setting, "condition": condition,
        "fill": fill, "phase": phase, "metric": metric, "n_trials": len(trials), "n_finished": int(values.size),
        "n_collapsed": int((trials["status"] == "collapsed").sum()), "n_degenerate": len(degenerate),
        "n_failed": int((trials["status"] == "failed").sum()),
        "degenerate_mean": float(degenerate[column].astype(float).mean()) if len(degenerate) else math.nan,
        "seeds": ",".join(str(s) for s in sorted(trials["seed"])),
        "mean": mean, "ci_low": low, "ci_high": high, "base_mean": math.nan, "n_pairs": 0,
        "delta": math.nan, "rel_change": math.nan, "rel_ci_low": math.nan, "rel_ci_high": math.nan,
        "p_value": math.nan, "p_adjusted": math.nan, "mark": "", "state": "ok",
        "reasons": "; ".join(sorted({str(r) for r in trials.loc[trials["status"] == "collapsed", "reason"]
                                     if isinstance(r, str) and r})) if "reason" in trials else "",
        "paper": math.nan, "paper_rel_change": math.nan,
    }
    base_finished = base[base["status"] == "finished"]
    base_values = _healthy(base_finished, column)
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
        row["state"] = ("degenerate" if len(degenerate) else "collapsed" if row["n_collapsed"]
                        else "failed" if row["n_failed"] else "missing")
    elif condition != "baseline" and base_values.size == 0:
        row["state"] = ("baseline_degenerate" if base_finished["degenerate"].any() else "no_baseline")
    elif row["n_collapsed"] or row["n_failed"] or len(degenerate) or (condition != "baseline" and values.size < base_values.size):
        row["state"] = "partial"
    if options.paper:
        encoders_map = json.loads(encoders)
        name = dataset.split(" [")[0]  # the dataset's name, without the suffix telling copies apart
        value = paper.paper_value(name, model, condition, fill, phase, encoders_map, metric)
        if value is not None:
            row["paper"] = value
            base_value = paper.paper_baseline(name, model, metric)
            if condition != "baseline" and base_value:
                row["paper_rel_change"] = value / base_value - 1
    return row


def _healthy(finished: pd.DataFrame, column: str) -> pd.Series:
    """Per seed, the finite values of `column` of the finished trials that beat popularity (not degenerate)."""
    values = finished[~finished["degenerate"]].set_index("seed")[column].astype(float)
    return values[np.isfinite(values)]


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
