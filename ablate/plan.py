"""A study's cost before it runs: cells per stage, trial-hours, wall time, GPU-hours and cost on a node type.

Nothing is trained. Per cell, the estimate is

    trial seconds = overhead + epochs run x seconds per epoch + evaluations x seconds per evaluation

- seconds per epoch and per full-ranking evaluation: measured per node type, model and dataset shape, in
  ``timings.json`` beside this module (``python benchmarks/floor.py --json`` measures them); ``--timings
  FILE`` adds or replaces measurements (same layout). A dataset shape that was not measured is scaled from
  the measured ones: per-batch seconds follow a power law in the graph size (users + items + training
  pairs), fitted per model through the two nearest measured shapes (proportional with one), times the
  batches of an epoch; evaluation seconds scale with users x items.
- epochs run: with the grid's results given, the mean epochs run by the rows already there (finished or
  collapsed) of the same dataset, model and hyper-parameters, else of the same dataset and model; else the
  model's typical best epoch (``typical_best_epoch`` in the table) plus the early-stopping patience. Capped
  by the spec's maximum epochs; evaluations every ``eval_every`` epochs, plus the test one.
- wall time: the stage's trial-seconds spread over ``workers`` nodes, each running as many trials at once as
  its CPUs and GPUs hold at the spec's per-trial resources (a lower bound: perfect packing, and packed trials
  assumed as fast as alone); GPU-hours: the GPU share the trials hold; cost: node-hours x the price per hour.

The cells are those a run would train (`ablate.study.StudyPlan.left`): none that has a row in the results, no
knockout cell that a search trial runs; a knockout cell whose hyper-parameters are not chosen yet is counted
at the model's defaults, since its cost does not depend on which point wins.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .grid import GridSpec, SpecError
from .results import FAILED, ResultStore
from .study import StudyPlan

TIMINGS = Path(__file__).with_name("timings.json")


@dataclass(frozen=True)
class Shape:
    """What a dataset's cost depends on."""

    users: int
    items: int
    train_pairs: int

    @property
    def size(self) -> int:
        return self.users + self.items + self.train_pairs


class _ShapeOnly:
    """A dataset known only by its shape (not on this machine): text and image with their default variant."""

    def __init__(self, name: str):
        self.name = name
        self.features = {"text": {"default": None}, "image": {"default": None}}
        self.default_variants = {"text": "default", "image": "default"}

    def variants(self, modality: str) -> list[str]:
        return sorted(self.features.get(modality, {}))


@dataclass
class Timings:
    """Measured seconds per epoch and per evaluation, by node type, dataset shape and model."""

    shapes: dict[str, dict] = field(default_factory=dict)
    nodes: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, dict[str, dict[str, dict]]] = field(default_factory=dict)
    typical_best_epoch: dict[str, int] = field(default_factory=dict)
    trial_overhead_seconds: float = 0.0

    @classmethod
    def load(cls, *paths: str | Path) -> "Timings":
        """The shipped table, then each of `paths` on top (their entries add to or replace the shipped ones)."""
        out = cls()
        for path in (TIMINGS, *paths):
            try:
                values = json.loads(Path(path).read_text())
            except FileNotFoundError:
                raise SpecError(f"timings {path}: no such file") from None
            except json.JSONDecodeError as exc:
                raise SpecError(f"timings {path}: not valid JSON ({exc})") from None
            known = {"shapes", "nodes", "seconds", "typical_best_epoch", "trial_overhead_seconds", "about"}
            if not isinstance(values, dict) or set(values) - known:
                raise SpecError(f"timings {path}: expected a mapping with keys from {sorted(known)}")
            out.shapes.update(values.get("shapes", {}))
            out.nodes.update(values.get("nodes", {}))
            out.typical_best_epoch.update(values.get("typical_best_epoch", {}))
            out.trial_overhead_seconds = float(values.get("trial_overhead_seconds", out.trial_overhead_seconds))
            for node, by_shape in values.get("seconds", {}).items():
                for shape, by_model in by_shape.items():
                    for model, entry in by_model.items():
                        if not (isinstance(entry, dict) and {"epoch", "eval"} <= set(entry)):
                            raise SpecError(f"timings {path}: seconds.{node}.{shape}.{model}: expected "
                                            f"{{epoch: seconds, eval: seconds}}, got {entry!r}")
                        out.seconds.setdefault(node, {}).setdefault(shape, {})[model] = entry
        return out

    def shape(self, name: str) -> Shape:
        s = self.shapes[name]
        return Shape(int(s["users"]), int(s["items"]), int(s["train_pairs"]))

    def per_trial(self, node: str, model: str, shape: Shape, batch_size: int) -> tuple[float, float, str]:
        """(seconds per epoch, seconds per evaluation, where they come from) of `model` on `shape`; SpecError
        when `model` was not measured on `node`."""
        measured = sorted(((self.shape(name), entry) for name, by_model in self.seconds.get(node, {}).items()
                           if model in by_model for entry in [by_model[model]]),
                          key=lambda pair: abs(math.log(pair[0].size / shape.size)))
        if not measured:
            raise SpecError(f"no timings of {model} on node type {node!r}")

        def per_batch(s: Shape, entry: dict) -> float:  # the table's epochs are of batch 2048
            return float(entry["epoch"]) / math.ceil(s.train_pairs / 2048)

        (s1, e1), rest = measured[0], measured[1:]
        exponent, source = 1.0, "measured"
        if s1 != shape:
            if rest and rest[0][0].size != s1.size:
                s2, e2 = rest[0]
                exponent = math.log(per_batch(s1, e1) / per_batch(s2, e2)) / math.log(s1.size / s2.size)
            source = f"scaled (per-batch seconds ~ size^{exponent:.2f})"
        epoch = per_batch(s1, e1) * (shape.size / s1.size) ** exponent * math.ceil(shape.train_pairs / batch_size)
        evaluation = float(e1["eval"]) * (shape.users * shape.items) / (s1.users * s1.items)
        return epoch, evaluation, source


@dataclass
class StagePlan:
    name: str
    cells: int
    trial_seconds: float
    gpu_seconds: float


@dataclass
class Plan:
    spec: str
    node: str
    node_about: str
    workers: int
    slots: int
    price: float | None
    stages: list[StagePlan]
    rows: list[dict]  # per (dataset, model): epochs, seconds per epoch / evaluation, trial seconds, source
    notes: list[str]

    def wall_seconds(self, stage: StagePlan) -> float:
        return stage.trial_seconds / (self.workers * self.slots)

    def format(self) -> str:
        lines = [f"plan of grid {self.spec!r} on node type {self.node} ({self.node_about}): {self.workers} node(s), "
                 f"{self.slots} trial(s) at once per node"]
        lines.append(f"{'stage':10s} {'cells':>6s} {'trial-h':>9s} {'wall-h':>8s} {'GPU-h':>8s} {'node-h':>8s}"
                     + (f" {'cost':>10s}" if self.price is not None else ""))
        totals = StagePlan("total", 0, 0.0, 0.0)
        for stage in self.stages + [totals]:
            if stage is not totals:
                totals.cells += stage.cells
                totals.trial_seconds += stage.trial_seconds
                totals.gpu_seconds += stage.gpu_seconds
            wall = self.wall_seconds(stage)
            node_hours = wall * self.workers / 3600
            cost = f" {'$' + format(node_hours * self.price, ',.2f'):>10s}" if self.price is not None else ""
            lines.append(f"{stage.name:10s} {stage.cells:6d} {stage.trial_seconds / 3600:9.2f} {wall / 3600:8.2f} "
                         f"{stage.gpu_seconds / 3600:8.2f} {node_hours:8.2f}{cost}")
        lines.append(f"{'dataset':12s} {'model':10s} {'epochs':>6s} {'s/epoch':>8s} {'s/eval':>7s} "
                     f"{'min/trial':>9s}  source")
        for r in self.rows:
            lines.append(f"{r['dataset']:12s} {r['model']:10s} {r['epochs']:6d} {r['epoch']:8.2f} {r['eval']:7.2f} "
                         f"{r['trial'] / 60:9.1f}  {r['source']}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _dataset_shape(source: str, name: str, timings: Timings, loaded: dict):
    """(dataset or stand-in, Shape) of one of the spec's datasets: loaded when given or present here
    (synthetic, a local directory), else by its name's shape in the table."""
    from .data import TRAIN

    data = loaded.get(source)
    if data is None and (source.startswith("synthetic") or Path(source).exists()):
        from .data import load

        data = loaded[source] = load(source)
    if data is not None:
        return data, Shape(data.n_users, data.n_items, int((data.split == TRAIN).sum()))
    key = Path(source).name.lower()
    if key not in timings.shapes:
        raise SpecError(f"dataset {name!r} ({source}): not on this machine and its shape is not in the timings "
                        f"table (known: {sorted(timings.shapes)}); pass --data-root with the data, or add its shape "
                        f"with --timings")
    return _ShapeOnly(key), timings.shape(key)


def plan_grid(spec: GridSpec, node: str, workers: int = 1, price: float | None = None,
              timings: Timings | None = None, datasets: dict | None = None, results: str | None = None) -> Plan:
    """The plan of `spec` on `workers` nodes of type `node`. `datasets` (source -> Dataset): those already
    loaded, to which the ones loaded here are added; `results`: the grid's results, whose cells with a row
    are not counted and whose rows give each (dataset, model)'s epochs run."""
    timings = timings or Timings.load()
    if node not in timings.nodes:
        raise SpecError(f"node type {node!r}: not in the timings table; known: {sorted(timings.nodes)}")
    if workers < 1:
        raise SpecError(f"workers: expected at least 1, got {workers}")
    about = timings.nodes[node]
    cpu, gpu = float(spec.resources.get("cpu", 1)), float(spec.resources.get("gpu", 0))
    slots = int(about.get("cpus", 1) // cpu)
    if gpu:
        if not about.get("gpus"):
            raise SpecError(f"node type {node!r} has no GPU but the grid asks {gpu} GPU per trial")
        slots = min(slots, int(about["gpus"] // gpu))
    if slots < 1:
        raise SpecError(f"node type {node!r} ({about.get('cpus')} CPUs, {about.get('gpus', 0)} GPUs) cannot hold one "
                        f"trial of {spec.resources}")
    loaded, shapes = datasets if datasets is not None else {}, {}
    notes = []
    for name in spec.datasets:
        source = spec.dataset_source(name)
        shapes[source] = _dataset_shape(source, name, timings, loaded)
        if isinstance(shapes[source][0], _ShapeOnly) and spec.encoders == "all":
            notes.append(f"{name}: not on this machine, so encoder variants are unknown: default encoders counted")
    try:
        listing, done, measured = _rows_so_far(results)
    except OSError as exc:  # storage out of reach from here: the run itself says so
        listing, done, measured = None, set(), {}
        notes.append(f"results {results} not read ({exc}): every cell counted")
    study = StudyPlan(spec, {source: data for source, (data, _) in shapes.items()}, results or "", done, listing,
                      record=False)
    left = study.left()
    stage_cells = {"search": left["search"], "knockout": left["grid"]}
    already = sum(before for _, before in study.totals().values())
    if already:
        notes.append(f"{already} cell(s) of this grid with a row in {results} are not counted")
    per_model, missing, from_rows = {}, set(), set()
    default_best = int(timings.typical_best_epoch.get("default", 50))

    def estimate(c) -> tuple[int, float] | None:
        """(epochs run, trial seconds) of cell `c`; None when its model has no timings on `node`."""
        shape, label = shapes[c.dataset][1], shapes[c.dataset][0].name
        if (c.dataset, c.model) not in per_model:
            try:
                per_model[(c.dataset, c.model)] = timings.per_trial(node, c.model, shape, c.train.batch_size)
            except SpecError:
                missing.add(c.model)
                per_model[(c.dataset, c.model)] = None
        if per_model[(c.dataset, c.model)] is None:
            return None
        epoch, evaluation, _ = per_model[(c.dataset, c.model)]
        ran = measured.get((label, c.model, json.dumps(c.hparams, sort_keys=True)), measured.get((label, c.model)))
        if ran is not None:
            epochs = min(c.train.epochs, ran)
            from_rows.add(f"{label} {c.model}")
        else:
            best = int(timings.typical_best_epoch.get(c.model, default_best))
            epochs = min(c.train.epochs, best + c.train.patience * c.train.eval_every)
        evals = math.ceil(epochs / c.train.eval_every) + 1
        return epochs, timings.trial_overhead_seconds + epochs * epoch + evals * evaluation

    estimates = {name: [(c, estimate(c)) for c in cells] for name, cells in stage_cells.items()}
    runs = {}
    for c, run in (pair for pairs in estimates.values() for pair in pairs if pair[1] is not None):
        runs.setdefault((c.dataset, c.model), []).append(run)
    rows = [{"dataset": shapes[source][0].name, "model": model, "epochs": round(sum(e for e, _ in cells) / len(cells)),
             "epoch": per_model[(source, model)][0], "eval": per_model[(source, model)][1],
             "trial": sum(t for _, t in cells) / len(cells), "source": per_model[(source, model)][2]}
            for (source, model), cells in runs.items()]
    stages = [StagePlan(name, len(pairs), sum(run[1] for _, run in pairs if run),
                        sum(run[1] * spec.trial_resources(c.model)["gpu"] for c, run in pairs if run))
              for name, pairs in estimates.items()]
    if spec.model_resources:
        notes.append(f"wall time at {slots} trial(s) per node, the packing of `resources`; "
                     f"{', '.join(sorted(spec.model_resources))} ask their own resources (GPU-hours count them)")
    if missing:
        unestimated = sum(run is None for pairs in estimates.values() for _, run in pairs)
        notes.append(f"no timings of {', '.join(sorted(missing))} on node type {node!r}: their {unestimated} cells are "
                     f"counted but not in the hours or cost; measure them with benchmarks/floor.py --timings {node}")
    if from_rows:
        notes.append(f"epochs run: the mean of the rows in {results} at the cell's hyper-parameters (else at any) for "
                     f"{', '.join(sorted(from_rows))}; epochs and min/trial: means over the cells planned")
    if any(f"{r['dataset']} {r['model']}" not in from_rows and r["model"] not in timings.typical_best_epoch
           for r in rows):
        notes.append(f"typical best epoch {default_best} assumed for models without one in the table or rows; epochs "
                     f"run = that + patience x eval_every, at most the spec's epochs")
    if gpu and gpu < 1:
        notes.append("packed trials assumed as fast as alone on their GPU")
    return Plan(spec=spec.name, node=node, node_about=about.get("about", ""), workers=workers, slots=slots,
                price=price, stages=stages, rows=rows, notes=notes)


def _rows_so_far(results: str | None) -> tuple:
    """(one listing of `results`, the keys of the cells with a row there, the mean epochs run (rounded up) by
    its rows that did not fail (finished or collapsed) per (dataset name, model, hyper-parameters as JSON) and
    per (dataset name, model)); nothing when `results` is None, no epochs when it has no rows. Means: the plan
    adds trials up."""
    if results is None:
        return None, set(), {}
    store = ResultStore(results)
    listing = store.listing()
    done = store.done_keys(listing)
    if not done:
        return listing, done, {}
    table = store.read_table(["dataset", "model", "hparams", "status", "epochs"], listing=listing).to_pandas()
    ended = table[(table["status"] != FAILED) & table["epochs"].notna()]
    means = {**ended.groupby(["dataset", "model", "hparams"])["epochs"].mean().to_dict(),
             **ended.groupby(["dataset", "model"])["epochs"].mean().to_dict()}
    return listing, done, {key: int(math.ceil(value)) for key, value in means.items()}
