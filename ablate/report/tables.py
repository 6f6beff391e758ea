"""The summary as tables: Markdown, HTML and LaTeX (booktabs), from one list of rows of cell texts."""
from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd

CONDITION_NAMES = {"baseline": "baseline", "text_only": "text only (image out)",
                   "image_only": "image only (text out)", "id_only": "ID only (both out)"}


def knockout_label(condition: str, fill: str, phase: str, sep: str = ", ") -> str:
    """What was kept and what was knocked out, with the fill of what was knocked out and the phase:
    ``text only (image out), noise``; eval-only knockouts add ``eval only``."""
    if condition == "baseline":
        return CONDITION_NAMES[condition]
    parts = [CONDITION_NAMES[condition], f"{fill} fill"]
    if phase != "retrain":
        parts.append("eval only")
    return sep.join(parts)


def _f(x, digits=4) -> str:
    return f"{x:.{digits}f}"


def value_text(r: dict) -> str:
    state = r["state"]
    if state == "missing":
        return "missing"
    if state == "not_applicable":
        return "n/a (ID-only model)"
    if state == "collapsed":
        return f"collapsed ({r['n_collapsed']}/{r['n_trials']})"
    if state == "failed":
        return f"failed ({r['n_failed']}/{r['n_trials']})"
    if state == "degenerate":
        return (f"degenerate ({r['n_degenerate']}/{r['n_trials']} below popularity; "
                f"their mean {_f(r['degenerate_mean'])})")
    text = _f(r["mean"])
    if np.isfinite(r["ci_low"]):
        text += f" [{_f(r['ci_low'])}, {_f(r['ci_high'])}]"
    n_degenerate = r.get("n_degenerate", 0)
    if state == "partial" or r["n_collapsed"] or r.get("n_failed") or n_degenerate:
        note = f"{r['n_finished']}/{r['n_trials']} healthy" if n_degenerate else \
            f"{r['n_finished']}/{r['n_trials']} finished"
        if r["n_collapsed"]:
            note += f", {r['n_collapsed']} collapsed"
        if r.get("n_failed"):
            note += f", {r['n_failed']} failed"
        if n_degenerate:
            note += f", {n_degenerate} degenerate (left out)"
        text += f" ({note})"
    return text


def change_text(r: dict, with_ci: bool = True) -> str:
    if r["condition"] == "baseline":
        return ""
    if r["state"] in ("missing", "collapsed", "failed", "not_applicable", "degenerate"):
        return r["state"].replace("_", " ")
    if r["state"] == "baseline_degenerate":
        return "baseline degenerate (below popularity)"
    if r["state"] == "no_baseline" or not np.isfinite(r["rel_change"]):
        return "no baseline"
    text = f"{100 * r['rel_change']:+.1f}%"
    if with_ci and np.isfinite(r["rel_ci_low"]):
        text += f" [{100 * r['rel_ci_low']:+.1f}, {100 * r['rel_ci_high']:+.1f}]"
    if r.get("uninformative"):
        text += " (uninformative: scores do not read features)"
    return text


def p_text(r: dict) -> str:
    p = r["p_adjusted"]
    if not np.isfinite(p):
        return "" if r["condition"] == "baseline" else "untested"
    return (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}") + (f" {r['mark']}" if r["mark"] else "")


def paper_text(r: dict) -> str:
    if not np.isfinite(r.get("paper", np.nan)):
        return ""
    text = _f(r["paper"])
    if np.isfinite(r.get("paper_rel_change", np.nan)):
        text += f" ({100 * r['paper_rel_change']:+.1f}%)"
    return text


def encoders_label(encoders: str) -> str:
    values = json.loads(encoders) if encoders else {}
    if not values or all(v == "default" for v in values.values()):
        return ""
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items()))


def detail_table(cells: pd.DataFrame, correction: str, with_paper: bool) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, rows of texts, and per row a css class (state) for one (dataset, encoders, metric)."""
    headers = ["model", "kept (knocked out)", "fill", "phase", "seeds", "value (95% CI)",
               "change vs baseline (95% CI)", f"p ({correction})"]
    if with_paper:
        headers.append("paper (change)")
    rows, states = [], []
    for r in cells.to_dict("records"):
        row = [r["setting"], CONDITION_NAMES[r["condition"]], "" if r["fill"] == "none" else r["fill"],
               r["phase"], r["seeds"] or "none", value_text(r), change_text(r), p_text(r)]
        if with_paper:
            row.append(paper_text(r))
        rows.append(row)
        states.append(r["state"] if r["state"] != "ok" or r["mark"] != "ns" else "ns")
    return headers, rows, states


def overview_table(cells: pd.DataFrame) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """The paper's form: models as rows; baseline value, then the change of every knockout column."""
    columns = []
    for r in cells[cells["condition"] != "baseline"].to_dict("records"):
        key = (r["condition"], r["fill"], r["phase"])
        if key not in columns:
            columns.append(key)
    headers = ["model", "baseline"] + [knockout_label(c, f, p) for c, f, p in columns]
    rows, classes = [], []
    for setting, part in cells.groupby("setting", sort=True):
        by = {(r["condition"], r["fill"], r["phase"]): r for r in part.to_dict("records")}
        base = by.get(("baseline", "none", "retrain"))
        row = [setting, value_text(base).split(" [")[0] if base else "missing"]
        css = ["", base["state"] if base else "missing"]
        for key in columns:
            r = by.get(key)
            if r is None:
                row.append("missing")
                css.append("missing")
                continue
            text = change_text(r, with_ci=False)
            if r["mark"]:
                text += f" {r['mark']}"
            row.append(text)
            css.append(r["state"] if r["state"] != "ok" or r["mark"] != "ns" else "ns")
        rows.append(row)
        classes.append(css)
    return headers, rows, classes


# ---------------------------------------------------------------- renderers
def markdown(headers: list[str], rows: list[list[str]]) -> str:
    def esc(text):
        return str(text).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def html_table(headers: list[str], rows: list[list[str]], classes=None) -> str:
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr></thead>",
           "<tbody>"]
    for i, row in enumerate(rows):
        css = classes[i] if classes is not None else None
        cells = []
        for j, cell in enumerate(row):
            klass = css[j] if isinstance(css, list) else (css if j >= 5 else "")
            attr = f' class="{klass}"' if klass and klass != "ok" else ""
            cells.append(f"<td{attr}>{html.escape(str(cell))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def _latex_cell(text: str) -> str:
    for mark in ("***", "**", "*", "ns"):
        if text.endswith(" " + mark):
            body = latex_escape(text[: -len(mark) - 1])
            sup = r"\mathrm{ns}" if mark == "ns" else mark
            return body + f"$^{{{sup}}}$"
    return latex_escape(text)


def latex(headers: list[str], rows: list[list[str]], caption: str, label: str) -> str:
    spec = "l" * 5 + "r" * (len(headers) - 5) if len(headers) > 5 else "l" + "r" * (len(headers) - 1)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{latex_escape(caption)}}}",
             rf"\label{{{label}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in headers) + r" \\", r"\midrule"]
    previous = None
    for row in rows:
        if previous is not None and row[0] != previous:
            lines.append(r"\midrule")
        previous = row[0]
        lines.append(" & ".join(_latex_cell(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
