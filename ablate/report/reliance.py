"""Modality reliance: the share of a model's baseline lost without text, without image, without both.

    lost(text)  = -rel_change(image_only)     (text knocked out, image kept)
    lost(image) = -rel_change(text_only)
    lost(both)  = -rel_change(id_only)

Which modality a model leans on is decided by a paired t-test over seeds of text_only against image_only
(same seeds, same fill and phase): a model relies more on text when, without image, it keeps more than
without text. Those p-values are Holm-corrected across the models of one (dataset, encoders, metric, fill,
phase) ranking.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import stats
from .tables import encoders_label
from .summary import Options, _settings, check_rows, primary_fill

LOSS = {"text": "image_only", "image": "text_only", "both": "id_only"}


def reliance(frame: pd.DataFrame, summary: pd.DataFrame, options: Options) -> pd.DataFrame:
    """One row per (dataset, encoders, model, fill, phase) for the primary metric."""
    frame = check_rows(frame)
    frame = frame.assign(setting=_settings(frame))
    column = f"{options.split}_{options.primary}"
    part = summary[(summary["metric"] == options.primary) & (summary["condition"] != "baseline")]
    rows = []
    for (dataset, encoders, model, setting, fill, phase), cells in part.groupby(
            ["dataset", "encoders", "model", "setting", "fill", "phase"], sort=True):
        by = cells.set_index("condition")
        row = {"dataset": dataset, "encoders": encoders, "model": model, "setting": setting, "fill": fill,
               "phase": phase, "metric": options.primary}
        for modality, condition in LOSS.items():
            if condition in by.index and by.loc[condition, "state"] in ("ok", "partial"):
                cell = by.loc[condition]
                row[f"lost_{modality}"] = -cell["rel_change"]
                row[f"lost_{modality}_low"] = -cell["rel_ci_high"]
                row[f"lost_{modality}_high"] = -cell["rel_ci_low"]
                row[f"lost_{modality}_mark"] = cell["mark"]
            else:
                state = by.loc[condition, "state"] if condition in by.index else "missing"
                row.update({f"lost_{modality}": math.nan, f"lost_{modality}_low": math.nan,
                            f"lost_{modality}_high": math.nan, f"lost_{modality}_mark": state})
        runs = frame[(frame["dataset"] == dataset) & (frame["encoders"] == encoders) & (frame["setting"] == setting)
                     & (frame["fill"] == fill) & (frame["phase"] == phase) & (frame["status"] == "finished")]
        text = runs[runs["condition"] == "text_only"].set_index("seed")[column].astype(float)
        image = runs[runs["condition"] == "image_only"].set_index("seed")[column].astype(float)
        seeds = sorted(set(text.index) & set(image.index))
        row["n_pairs"] = len(seeds)
        row["p_text_vs_image"] = stats.paired_t(text.loc[seeds].to_numpy(), image.loc[seeds].to_numpy()) \
            if seeds else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_text_vs_image_adjusted"] = math.nan
    for _, idx in table.groupby(["dataset", "encoders", "fill", "phase"]).groups.items():
        table.loc[idx, "p_text_vs_image_adjusted"] = stats.adjust(table.loc[idx, "p_text_vs_image"].to_numpy(),
                                                                  options.correction)
    table["leans_on"] = [_lean(r, options.alpha) for r in table.to_dict("records")]
    return table


def _lean(row: dict, alpha: float) -> str:
    text, image, p = row.get("lost_text"), row.get("lost_image"), row.get("p_text_vs_image_adjusted")
    if not (np.isfinite(text) and np.isfinite(image)):
        return "unknown"
    if not np.isfinite(p):
        return "untested"
    if p >= alpha:
        return "neither (no significant difference)"
    return "text" if text > image else "image"


def ranking(table: pd.DataFrame, options: Options, summary: pd.DataFrame) -> list[str]:
    """Short sentences: per dataset, models ordered by how much of the baseline each modality carries."""
    if table.empty:
        return []
    fill = primary_fill(summary, options)
    lines = []
    chosen = table[(table["fill"] == fill) & (table["phase"] == "retrain")]
    for (dataset, encoders), part in chosen.groupby(["dataset", "encoders"], sort=True):
        label = encoders_label(encoders)
        where = f"{dataset} ({label})" if label else dataset
        absent = []
        for modality in ("text", "image", "both"):
            if not np.isfinite(part[f"lost_{modality}"].to_numpy(dtype=float)).any():
                absent.append(LOSS[modality])
                continue
            ordered = part.sort_values(f"lost_{modality}", ascending=False, na_position="last")
            items = [f"{r['setting']} {_pct(r[f'lost_{modality}'])}{_mark(r[f'lost_{modality}_mark'])}"
                     for r in ordered.to_dict("records")]
            lines.append(f"{where}: {options.primary} lost without {modality} (fill {fill}): " + ", ".join(items))
        if {"image_only", "text_only"} & set(absent):
            # one line instead of a 'missing' per model: the study did not run these knockouts
            lines.append(f"{where}: no finished {' / '.join(sorted(absent))} cells (fill {fill}), so which modality "
                         f"each model leans on is not measured")
            continue
        for r in part.sort_values("setting").to_dict("records"):
            p = r["p_text_vs_image_adjusted"]
            lines.append(f"{where}: {r['setting']} leans on {r['leans_on']} "
                         f"(text {_pct(r['lost_text'])} vs image {_pct(r['lost_image'])} of the baseline lost; "
                         f"paired t over {r['n_pairs']} seeds, {options.correction} p = {_p(p)})")
    return lines


def _pct(x) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:+.1f}%"


def _mark(mark: str) -> str:
    return f" ({mark})" if mark else ""


def _p(p) -> str:
    if not np.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"
