"""`ablate report` and `ablate analyze features`: the study's report and the feature analysis."""
from __future__ import annotations

import sys
import time
from pathlib import Path


def cmd_report(args) -> int:
    from .report import Options, ReportError, build_report

    try:
        options = Options(metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()),
                          split=args.split, level=args.level, alpha=args.alpha, correction=args.correction,
                          primary=args.primary, fill=args.fill, curves=args.curves, paper=not args.no_paper)
        written = build_report(args.results, args.out, options)
    except ReportError as exc:
        print(f"ablate report: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print(f"report written to {out}/: index.html, report.md, {len(written['tables'])} LaTeX tables in tables/, "
          f"{len(written['plots'])} plots in plots/, summary.parquet")
    return 0


def cmd_analyze_features(args) -> int:
    from . import analysis
    from .data import DataError, load
    from .report.tables import markdown

    started = time.perf_counter()
    try:
        dataset = load(args.dataset)
        fills = tuple(f for f in args.fills.split(",") if f) if args.fills else ()
        table = analysis.analyze(dataset, k=args.k, fills=fills, max_items=args.max_items)
    except (DataError, ValueError) as exc:
        print(f"ablate analyze features: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shown = table.drop(columns=["seconds"])
    headers = list(shown.columns)
    rows = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r] for r in shown.itertuples(index=False)]
    text = markdown(headers, rows)
    line = analysis.compactness_line(table)
    print(f"{dataset.name}: {dataset.n_items} items, kNN k={args.k}")
    print(text)
    if line:
        print(line)
    table.to_csv(out / "features.csv", index=False)
    (out / "features.md").write_text(f"# Feature analysis: {dataset.name}\n\n{text}\n" + (f"\n{line}\n" if line else ""))
    if not args.no_tsne:
        path = analysis.tsne_map(dataset, out / "tsne.png", max_items=args.max_items)
        print(f"t-SNE map: {path}")
    print(f"written to {out}/ in {time.perf_counter() - started:.1f} s")
    return 0


def add_report_commands(sub) -> None:
    from .report.stats import CORRECTIONS
    from .report.summary import DEFAULT_METRICS

    report = sub.add_parser("report", help="tables, statistics and plots of a knockout study from its results")
    report.add_argument("results", help="results directory or URI (Parquet rows), or one .parquet / .csv file")
    report.add_argument("--out", default="report", help="output directory (default: report/)")
    report.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated, e.g. recall@20,ndcg@10")
    report.add_argument("--primary", default="recall@20", help="metric of the reliance ranking and the plots")
    report.add_argument("--split", default="test", choices=["test", "valid"])
    report.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    report.add_argument("--alpha", type=float, default=0.05, help="significance level after correction")
    report.add_argument("--correction", default="holm", choices=list(CORRECTIONS),
                        help="multiple-comparison correction within each model's family of knockouts")
    report.add_argument("--fill", default=None, help="fill of the reliance ranking and bars (default: noise if present)")
    report.add_argument("--curves", default="all", help="learning curves: all, none, MODEL or MODEL@DATASET")
    report.add_argument("--no-paper", action="store_true", help="leave out the paper's column")
    report.set_defaults(func=cmd_report)

    analyze = sub.add_parser("analyze", help="analyses of datasets")
    analyze_sub = analyze.add_subparsers(dest="analyze_command", required=True)
    features = analyze_sub.add_parser("features", help="dispersion of item features, kNN agreement with "
                                       "co-interactions, t-SNE map")
    features.add_argument("dataset", help="dataset directory (MMRec layout) or 'synthetic[:key=value,...]'")
    features.add_argument("--out", default="analysis", help="output directory (default: analysis/)")
    features.add_argument("--k", type=int, default=10, help="neighbours for the kNN overlap")
    features.add_argument("--fills", default="noise", help="knockout fills to analyse as reference rows ('' for none)")
    features.add_argument("--max-items", type=int, default=4000, help="item sample for the pairwise and t-SNE parts")
    features.add_argument("--no-tsne", action="store_true", help="skip the t-SNE map")
    features.set_defaults(func=cmd_analyze_features)
