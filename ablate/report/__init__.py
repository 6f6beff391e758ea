"""The report of a knockout study: tables with confidence intervals and significance, reliance, figures.

`build_report(results, out)` writes index.html, report.md, tables/*.tex, plots/*.png and summary.parquet;
`summarize(rows)` gives the numbers alone (one row per cell and metric).
"""
from .build import build_report
from .summary import DEFAULT_METRICS, Options, ReportError, read_rows, summarize

__all__ = ["DEFAULT_METRICS", "Options", "ReportError", "build_report", "read_rows", "summarize"]
