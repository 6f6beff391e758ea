"""The report's figures (matplotlib, Agg backend, PNG): heatmap of changes, bars with CIs, learning curves."""
from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .tables import CONDITION_NAMES, knockout_label  # noqa: E402

COLORS = {"baseline": "#4d4d4d", "text_only": "#1b7837", "image_only": "#2166ac", "id_only": "#b2182b"}


def slug(*parts) -> str:
    text = "_".join(str(p) for p in parts if p not in ("", None))
    return re.sub(r"[^A-Za-z0-9@.+-]+", "-", text).strip("-").replace("@", "")


def heatmap(cells: pd.DataFrame, title: str, path: Path) -> Path:
    """Relative change (%) versus baseline, models x knockout columns; grey hatched where there is no number."""
    knock = cells[cells["condition"] != "baseline"]
    columns = []
    for r in knock.to_dict("records"):
        key = (r["condition"], r["fill"], r["phase"])
        if key not in columns:
            columns.append(key)
    models = sorted(knock["setting"].unique())
    values = np.full((len(models), len(columns)), np.nan)
    notes = [["" for _ in columns] for _ in models]
    for r in knock.to_dict("records"):
        i, j = models.index(r["setting"]), columns.index((r["condition"], r["fill"], r["phase"]))
        if r["state"] in ("ok", "partial") and np.isfinite(r["rel_change"]):
            values[i, j] = 100 * r["rel_change"]
            notes[i][j] = f"{values[i, j]:+.0f}%" + (f"\n{r['mark']}" if r["mark"] else "")
        else:
            notes[i][j] = {"collapsed": "collapsed", "missing": "missing", "not_applicable": "n/a",
                           "no_baseline": "no base", "degenerate": "degenerate",
                           "baseline_degenerate": "base\ndegenerate"}.get(r["state"], r["state"])
    width = max(5.0, 0.9 * len(columns) + 2.5)
    fig, ax = plt.subplots(figsize=(width, 0.55 * len(models) + 2.2))
    limit = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 1.0
    limit = max(limit, 1.0)
    ax.set_facecolor("#dddddd")
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for i in range(len(models)):
        for j in range(len(columns)):
            if not np.isfinite(values[i, j]):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor="#999999"))
            ax.text(j, i, notes[i][j], ha="center", va="center", fontsize=8,
                    color="white" if np.isfinite(values[i, j]) and abs(values[i, j]) > 0.6 * limit else "black")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels([knockout_label(c, f, p, sep="\n").replace(" (", "\n(") for c, f, p in columns], fontsize=8)
    ax.set_yticks(range(len(models)))
    ax.set_yticklabels(models)
    fig.colorbar(image, ax=ax, label="change vs baseline (%)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bars(cells: pd.DataFrame, fill: str | None, title: str, path: Path) -> Path:
    """Mean over seeds with its CI per model: baseline and each condition (one fill, retrained)."""
    chosen = cells[(cells["condition"] == "baseline") | ((cells["fill"] == fill) & (cells["phase"] == "retrain"))]
    models = sorted(chosen["setting"].unique())
    conditions = [c for c in COLORS if c in set(chosen["condition"])]
    width = 0.8 / max(1, len(conditions))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(models) + 2), 4))
    for k, condition in enumerate(conditions):
        part = chosen[chosen["condition"] == condition].set_index("setting")
        xs, ys, err, flags = [], [], [[], []], []
        for i, model in enumerate(models):
            x = i + (k - (len(conditions) - 1) / 2) * width
            if model not in part.index or part.loc[model, "state"] not in ("ok", "partial", "no_baseline",
                                                                            "baseline_degenerate"):
                state = part.loc[model, "state"] if model in part.index else "missing"
                if state != "not_applicable":
                    flags.append((x, state))
                continue
            r = part.loc[model]
            xs.append(x)
            ys.append(r["mean"])
            low = r["mean"] - r["ci_low"] if np.isfinite(r["ci_low"]) else 0.0
            high = r["ci_high"] - r["mean"] if np.isfinite(r["ci_high"]) else 0.0
            err[0].append(low)
            err[1].append(high)
        ax.bar(xs, ys, width, yerr=err, capsize=3, color=COLORS[condition], label=CONDITION_NAMES[condition])
        for x, state in flags:
            ax.text(x, 0, state, rotation=90, ha="center", va="bottom", fontsize=7, color="#b2182b")
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(models)
    ax.set_ylabel(title.split(":")[-1].strip())
    ax.legend(fontsize=8, title=f"fill: {fill}" if fill else None, title_fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves(runs: pd.DataFrame, metric: str, fill: str | None, title: str, path: Path) -> Path | None:
    """Validation metric over epochs: one colour per condition, one thin line per seed, retrained trials."""
    chosen = runs[(runs["condition"] == "baseline") | ((runs["fill"] == fill) & (runs["phase"] == "retrain"))]
    key = f"valid_{metric}"
    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = set()
    for r in chosen.sort_values(["condition", "seed"]).to_dict("records"):
        try:
            curve = json.loads(r.get("curve") or "[]")
        except (TypeError, json.JSONDecodeError):
            continue
        points = [(p["epoch"], p[key]) for p in curve if key in p and p.get(key) is not None]
        if not points:
            continue
        xs, ys = zip(*points)
        label = CONDITION_NAMES[r["condition"]] if r["condition"] not in drawn else None
        drawn.add(r["condition"])
        style = "--" if r["status"] == "collapsed" else ":" if r.get("degenerate") else "-"
        ax.plot(xs, ys, style, lw=1.2, alpha=0.8, color=COLORS.get(r["condition"], "black"), label=label)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.legend(fontsize=8, title=f"fill: {fill} (dashed: collapsed, dotted: degenerate)", title_fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
