"""The names of the ranking metrics and their default cut-offs (no torch: the results table and the report
read them without loading the metrics' implementation in `ablate.metrics`)."""

METRICS = ("recall", "ndcg", "precision", "map", "hit")
DEFAULT_KS = (5, 10, 20, 50)
