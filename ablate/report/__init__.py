"""The report of a knockout study: tables with confidence intervals and significance, reliance, figures.

`build_report(results, out)` writes index.html, report.md, tables/*.tex, plots/*.png and summary.parquet;
`summarize(rows)` gives the numbers alone (one row per cell and metric). The names are imported on first use,
so that the command line can read the report's options without loading pandas, SciPy and matplotlib.
"""
from importlib import import_module

_HOMES = {"build_report": ".build", "DEFAULT_METRICS": ".summary", "Options": ".summary", "ReportError": ".summary",
          "read_rows": ".summary", "summarize": ".summary"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_HOMES[name], __name__), name)
