"""`ablate report RESULTS --out DIR`: every table, figure and page of a knockout study, from its result rows."""
from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from . import paper, plots, reliance, tables
from .summary import Options, ReportError, primary_fill, read_rows, summarize

STATISTICS = (
    "Each value is the mean over seeds of the finished trials with a {level:.0%} Student t confidence interval. "
    "The change versus baseline is the mean per-seed difference between the knockout and the same model's "
    "baseline (paired by seed: same initialisation), divided by the baseline's mean over those seeds, with "
    "the t interval of the mean difference. Significance: two-sided paired t-test over seeds against the "
    "baseline, p-values corrected with {correction_name} within each family (all knockout cells of one model "
    "on one dataset for one metric); marks *** p<0.001, ** p<0.01, * p<{alpha}, ns not significant. "
    "A collapsed trial (non-finite loss, non-finite or all-equal scores) is never scored: it is counted and "
    "shown. A degenerate trial finished below the popularity ranking's valid metric: it is counted and shown, "
    "and left out of means and tests; a knockout whose baseline is degenerate gets no change. "
    "Metrics are on the {split} split."
)
CORRECTION_NAMES = {"holm": "Holm's step-down method", "bh": "Benjamini-Hochberg (FDR)", "none": "no correction"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1300px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:.85em}
th,td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left;white-space:nowrap}
th{background:#f3f3f3}
td.collapsed,td.failed{background:#fbe3e3;color:#8b0000;font-weight:600}
td.degenerate,td.baseline_degenerate{background:#fdebd0;color:#8a4b00;font-weight:600}
td.missing,td.no_baseline{background:#eeeeee;color:#777;font-style:italic}
td.not_applicable{color:#999}
td.partial{background:#fff4d6}
td.ns{color:#777}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.8em;color:#555}
.note{color:#555;font-size:.9em;max-width:70em}
ul.rank li{margin:.2em 0}
"""

# counts images that loaded (naturalWidth > 0) once the page has loaded: a headless browser can read it back
LOAD_CHECK = """<script>
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', images.length);
  document.body.setAttribute('data-images-loaded', ok);
});
</script>"""


def build_report(source, out, options: Options | None = None) -> dict:
    """Write the report of the rows at `source` into directory `out`; returns what was written."""
    options = options or Options()
    frame = read_rows(source)
    summary = summarize(frame, options)
    reliance_table = reliance.reliance(frame, summary, options)
    lines = reliance.ranking(reliance_table, options, summary)
    fill = primary_fill(summary, options)
    out = Path(out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    summary.to_parquet(out / "summary.parquet", index=False)
    if not reliance_table.empty:
        reliance_table.to_parquet(out / "reliance.parquet", index=False)

    with_paper = options.paper and summary["paper"].notna().any()
    sections = []  # (title, markdown, html)
    written = {"tables": [], "plots": [], "summary": out / "summary.parquet"}
    figures = []  # (path relative to out, caption)
    checked = frame.assign(setting=_setting_of(frame, summary))
    for (dataset, encoders), part in summary.groupby(["dataset", "encoders"], sort=True):
        where = dataset + (f" ({tables.encoders_label(encoders)})" if tables.encoders_label(encoders) else "")
        prim = part[part["metric"] == options.primary]
        name = plots.slug(dataset, tables.encoders_label(encoders), options.primary)
        path = plots.heatmap(prim, f"{where}: change of {options.split} {options.primary} vs baseline",
                             out / "plots" / f"heatmap_{name}.png")
        figures.append((path, f"{where}: relative change of {options.primary} (models x knockouts)"))
        path = plots.bars(prim, fill, f"{where}: {options.split} {options.primary}", out / "plots" / f"bars_{name}.png")
        figures.append((path, f"{where}: {options.primary}, mean over seeds with {options.level:.0%} CI"))
        if options.curves != "none":
            runs = checked[(checked["dataset"] == dataset) & (checked["encoders"] == encoders)]
            for setting, model_runs in runs.groupby("setting", sort=True):
                model = model_runs["model"].iloc[0]
                if options.curves != "all" and options.curves not in (model, setting, f"{model}@{dataset}"):
                    continue
                curve_metric = _curve_metric(model_runs, options.primary)
                if curve_metric is None:
                    continue
                path = plots.curves(model_runs, curve_metric, fill, f"{where}: {setting}, learning curves",
                                    out / "plots" / f"curves_{plots.slug(dataset, tables.encoders_label(encoders), setting)}.png")
                if path is not None:
                    figures.append((path, f"{where}: {setting}, valid {curve_metric} per epoch"))
        for metric in options.metrics:
            cells = part[part["metric"] == metric]
            headers, rows, states = tables.detail_table(cells, options.correction, with_paper)
            o_headers, o_rows, o_classes = tables.overview_table(cells)
            title = f"{where}: {options.split} {metric}"
            label = plots.slug(dataset, tables.encoders_label(encoders), metric)
            tex = out / "tables" / f"{label}.tex"
            tex.write_text(tables.latex(headers, rows, title + f" (mean over seeds, {options.level:.0%} CI)",
                                        f"tab:{label}"))
            (out / "tables" / f"{label}_overview.tex").write_text(
                tables.latex(o_headers, o_rows, title + ": change versus baseline", f"tab:{label}-overview"))
            written["tables"] += [tex, out / "tables" / f"{label}_overview.tex"]
            md = (f"### {title}\n\nChange versus baseline (the paper's form):\n\n" + tables.markdown(o_headers, o_rows)
                  + "\nDetail:\n\n" + tables.markdown(headers, rows))
            page = (f"<h3>{html.escape(title)}</h3>\n<p class=note>Change versus baseline:</p>\n"
                    + tables.html_table(o_headers, o_rows, o_classes)
                    + "\n<details open><summary>Detail with confidence intervals</summary>\n"
                    + tables.html_table(headers, rows, states) + "\n</details>")
            sections.append((title, md, page))
    written["plots"] = [p for p, _ in figures]
    written["markdown"] = _write_markdown(out, frame, summary, reliance_table, lines, sections, figures, options,
                                          with_paper)
    written["html"] = _write_html(out, frame, summary, reliance_table, lines, sections, figures, options, with_paper)
    return written


def _setting_of(frame: pd.DataFrame, summary: pd.DataFrame) -> pd.Series:
    from .summary import _settings, check_rows

    return _settings(check_rows(frame))


def _curve_metric(runs: pd.DataFrame, primary: str) -> str | None:
    for text in runs.get("curve", pd.Series(dtype=str)).dropna():
        try:
            curve = json.loads(text)
        except (TypeError, ValueError):
            continue
        if curve:
            keys = [k[len("valid_"):] for k in curve[0] if k.startswith("valid_")]
            if primary in keys:
                return primary
            if keys:
                return keys[0]
    return None


PROTOCOLS = {
    "baseline": "hyper-parameters searched once per dataset and model, on baseline, chosen by the validation "
                "metric alone; every knockout cell reuses that choice",
    "per_condition": "hyper-parameters searched for every knockout cell (condition, fill, phase, encoders) on its "
                     "own, chosen by the validation metric alone, as the paper re-tuned each knockout variant "
                     "(on test there)",
}


def _protocols(frame) -> str:
    used = sorted(set(frame["protocol"]))
    return "; ".join(f"{p} ({PROTOCOLS.get(p, 'unknown')})" for p in used)


def _header(frame, summary, options, with_paper) -> tuple[str, str]:
    finished = int((frame["status"] == "finished").sum())
    collapsed = int((frame["status"] == "collapsed").sum())
    failed = int((frame["status"] == "failed").sum())
    degenerate = int(frame["degenerate"].sum())
    seeds = sorted(frame["seed"].unique())
    facts = (f"{len(frame)} trials ({finished} finished, of which {degenerate} degenerate, {collapsed} collapsed, "
             f"{failed} failed) "
             f"on {frame['dataset'].nunique()} dataset(s), {frame['model'].nunique()} model(s), seeds "
             f"{', '.join(map(str, seeds))}. Tuning protocol: {_protocols(frame)}.")
    missing = int(((summary["state"] == "missing") & (summary["metric"] == options.primary)).sum())
    if missing:
        facts += f" {missing} cell(s) have no trial (shown as missing)."
    method = STATISTICS.format(level=options.level, correction_name=CORRECTION_NAMES[options.correction],
                               alpha=options.alpha, split=options.split)
    if with_paper:
        method += f" Paper column: {paper.source()}; its change is relative to the paper's own baseline."
    return facts, method


def protocol_lines(frame: pd.DataFrame, summary: pd.DataFrame, options) -> list[str]:
    """The "Protocol and departures" section: how the numbers were produced, and where the models depart from
    MMRec's implementations (declared in the model files), as short Markdown bullets."""
    from .summary import feature_blind_scorers, registered_models

    registered = registered_models()

    configs = [json.loads(t) for t in frame.get("train_config", pd.Series(dtype=str)).dropna().unique()]
    metrics = sorted({c.get("valid_metric", "?") for c in configs})
    lines = [f"Validation metric: {', '.join(metrics) or 'unknown'}; hyper-parameters and early stopping read "
             f"validation only, never test. Tables show the {options.split} split."]
    lines.append(f"Tuning protocol: {_protocols(frame)}.")
    stops = sorted({(c.get("epochs"), c.get("patience"), c.get("eval_every")) for c in configs}, key=str)
    for epochs, patience, every in stops:
        lines.append(f"Training: up to {epochs} epochs, evaluated every {every}; stops when more than {patience} "
                     f"evaluations pass without improvement (MMRec's stopping_step); test metrics of the best "
                     f"validation epoch, computed on its restored state, every evaluation under a fixed seed.")
    rates = {}
    for model, text, hparams in zip(frame["model"], frame.get("train_config", pd.Series("{}", index=frame.index))
                                    .fillna("{}"), frame["hparams"]):
        c, hp = json.loads(text), json.loads(hparams)
        # a model's learning_rate and lr_decay hyper-parameters replace the training settings' lr and lr_decay
        c.update({name: hp[key] for key, name in (("learning_rate", "lr"), ("lr_decay", "lr_decay")) if key in hp})
        decay = c.get("lr_decay")
        rates.setdefault(model, set()).add(f"{c.get('lr')}" + (f" x{decay[0]} every {decay[1]} epochs" if decay else ""))
    lines.append("Learning rate (and decay) per model: " + "; ".join(
        f"{m} {', '.join(sorted(r))}" for m, r in sorted(rates.items())) + ".")
    base = frame[frame["condition"] == "baseline"]
    seeds = base.groupby(["dataset", "model"])["seed"].apply(lambda s: ",".join(map(str, sorted(set(s)))))
    lines.append("Seeds of each baseline: " + "; ".join(f"{m} on {d}: {s}" for (d, m), s in seeds.items()) + ".")
    if "popularity_valid" in frame and frame["popularity_valid"].notna().any():
        floors = frame.groupby("dataset")["popularity_valid"].first()
        lines.append("Degenerate trials: finished below the popularity ranking's validation metric ("
                     + ", ".join(f"{d} {v:.4f}" for d, v in floors.items() if np.isfinite(v))
                     + f"); {int(frame['degenerate'].sum())} of {len(frame)} trials; shown and left out of means.")
        stopped = first_evaluation_best(frame)
        if len(stopped):
            ratio = stopped["last_over_lowest"]
            lines.append(
                f"Of the degenerate trials, {len(stopped)} ({_per_model(stopped)}) scored best at their first "
                f"evaluation and were ended by early stopping, their validation metric at the end "
                f"{ratio.min():.2f}-{ratio.max():.2f}x its lowest since that first evaluation: the first epoch's "
                f"score set the bar the patience counts from, so a trial still recovering from a drop after it "
                f"is ended the same way as one that cannot learn (MMRec's stopping rule ends both).")
    blind = sorted(feature_blind_scorers(frame) & set(frame.loc[frame["phase"] == "eval_only", "model"]))
    if blind:
        lines.append(f"Uninformative rows: {', '.join(blind)} eval_only knockouts (their scores do not read the "
                     f"features, so knocking them out at evaluation cannot change a score).")
    for model in sorted(set(frame["model"])):
        cls = registered.get(model)
        if cls is None:
            continue
        told = "; ".join(cls.departures) if cls.departures else "none declared"
        lines.append(f"{model} departs from MMRec's implementation: {told}.")
    return lines


def first_evaluation_best(frame: pd.DataFrame) -> pd.DataFrame:
    """The degenerate trials whose best validation score was their first evaluation's and that early stopping
    ended (fewer epochs than allowed), with ``last_over_lowest``: their validation metric at the last
    evaluation over its lowest after the first (from the rows' ``curve``)."""
    if "curve" not in frame or "train_config" not in frame:
        return frame.iloc[:0].assign(last_over_lowest=[])
    out = []
    for index, row in frame[frame["degenerate"] & (frame["status"] == "finished")].iterrows():
        try:
            curve, config = json.loads(row["curve"] or "[]"), json.loads(row["train_config"] or "{}")
        except (TypeError, json.JSONDecodeError):
            continue
        values = [point.get(f"valid_{config.get('valid_metric')}") for point in curve]
        if (len(values) < 2 or None in values or row["best_epoch"] != curve[0].get("epoch")
                or row["epochs"] >= config.get("epochs", 0) or min(values[1:]) <= 0):
            continue
        out.append((index, values[-1] / min(values[1:])))
    return frame.loc[[i for i, _ in out]].assign(last_over_lowest=[r for _, r in out])


def _per_model(rows: pd.DataFrame) -> str:
    counts = rows.groupby(["model", "condition"]).size()
    return ", ".join(f"{model} {condition} {n}" for (model, condition), n in counts.items())


def _reliance_rows(table: pd.DataFrame):
    headers = ["dataset", "model", "fill", "phase", "lost without text", "lost without image",
               "lost without both", "leans on", "p text vs image"]
    rows = []
    for r in table.to_dict("records"):
        def lost(m):
            x = r[f"lost_{m}"]
            if not np.isfinite(x):
                return r[f"lost_{m}_mark"] or "n/a"
            text = f"{100 * x:+.1f}%"
            if np.isfinite(r[f"lost_{m}_low"]):
                text += f" [{100 * r[f'lost_{m}_low']:+.1f}, {100 * r[f'lost_{m}_high']:+.1f}]"
            return text + (f" {r[f'lost_{m}_mark']}" if r[f"lost_{m}_mark"] else "")
        p = r["p_text_vs_image_adjusted"]
        where = r["dataset"] + (f" ({tables.encoders_label(r['encoders'])})" if tables.encoders_label(r["encoders"]) else "")
        rows.append([where, r["setting"], r["fill"], r["phase"], lost("text"), lost("image"), lost("both"),
                     r["leans_on"], "n/a" if not np.isfinite(p) else f"{p:.3g}"])
    return headers, rows


def _write_markdown(out, frame, summary, rel, lines, sections, figures, options, with_paper) -> Path:
    facts, method = _header(frame, summary, options, with_paper)
    parts = ["# Modality knockout report", "", facts, "", method, "", "## Protocol and departures", ""]
    parts += [f"- {line}" for line in protocol_lines(frame, summary, options)]
    parts += ["", "## Modality reliance", ""]
    parts += [f"- {line}" for line in lines] or ["No knockout trials."]
    if not rel.empty:
        headers, rows = _reliance_rows(rel)
        parts += ["", f"Share of the baseline's {options.split} {options.primary} lost (95% CI):", "",
                  tables.markdown(headers, rows)]
    parts += ["## Figures", ""]
    parts += [f"![{caption}]({Path(p).relative_to(out).as_posix()})" for p, caption in figures]
    parts += ["", "## Tables", ""]
    parts += [md for _, md, _ in sections]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path


def _write_html(out, frame, summary, rel, lines, sections, figures, options, with_paper) -> Path:
    facts, method = _header(frame, summary, options, with_paper)
    body = ["<h1>Modality knockout report</h1>", f"<p>{html.escape(facts)}</p>",
            f"<p class=note>{html.escape(method)}</p>",
            "<p class=note>Files: <a href='report.md'>report.md</a>, <a href='summary.parquet'>summary.parquet</a>, "
            "LaTeX tables in <a href='tables/'>tables/</a>. Generated "
            + datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") + ".</p>",
            "<h2>Protocol and departures</h2>", "<ul>"]
    body += [f"<li>{html.escape(line)}</li>" for line in protocol_lines(frame, summary, options)]
    body += ["</ul>", "<h2>Modality reliance</h2>", "<ul class=rank>"]
    body += [f"<li>{html.escape(line)}</li>" for line in lines] or ["<li>No knockout trials.</li>"]
    body.append("</ul>")
    if not rel.empty:
        headers, rows = _reliance_rows(rel)
        body.append(tables.html_table(headers, rows))
    body.append("<h2>Figures</h2>")
    for p, caption in figures:
        src = html.escape(Path(p).relative_to(out).as_posix())
        body.append(f"<figure><img src='{src}' alt='{html.escape(caption)}'>"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    body.append("<h2>Tables</h2>")
    body += [page for _, _, page in sections]
    page = ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>Modality knockout report</title><style>{CSS}</style>{LOAD_CHECK}</head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    path = out / "index.html"
    path.write_text(page)
    return path


__all__ = ["Options", "ReportError", "build_report"]
