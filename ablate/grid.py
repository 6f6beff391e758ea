"""The grid spec: one declarative object naming what a knockout study runs, and its expansion into cells.

A `GridSpec` names datasets, models, conditions, fills, phases, seeds, encoder variants, the training
protocol, per-trial resources, and how hyper-parameters are chosen. It comes from a preset (`demo`,
`paper`, `full`), a YAML file, or a Python file defining ``SPEC`` (a `GridSpec` or a dict).

Hyper-parameters are chosen in two stages. The *search* stage trains at every point of the model's
``search_space`` (or a deterministic subset of ``max_points``) and picks the point with the best mean
*validation* metric over the search seeds; test metrics are never looked at. With ``hparams.protocol:
baseline`` (the default) each (dataset, model) is searched once, on ``baseline``, and every knockout cell uses
that choice; with ``per_condition`` every (dataset, model, condition, fill, phase, encoders) cell is searched
on its own, as the paper re-tuned each knockout variant (on test there, on validation here).
The *knockout* stage then runs every condition x fill x phase x seed x encoder cell with the chosen values.
A knockout cell that equals a search trial (same hyper-parameters and seed) has the same key, so it is not
trained twice; the knockout stage's cells are recorded by key (``<results>/cells``) for the report.
"""
from __future__ import annotations

import itertools
import json
import os
import random
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from . import knockout, models, options
from .options import OptionError
from .train import TrainConfig
from .trial import TrialConfig

PAPER_MODELS = ("VBPR", "MMGCN", "GRCN", "DualGNN", "LATTICE", "SLMRec", "BM3", "FREEDOM", "MGCN", "DRAGON",
                "LGMRec", "DA-MRS", "SMORE", "PGL")
ID_MODELS = ("BPR", "LightGCN")
PAPER_DATASETS = ("baby", "sports", "clothing")
# kNN item graphs rebuilt in training, batch x item buffers, fine-tuned feature tables, all-user contrast
HEAVY_MODELS = ("MMGCN", "LATTICE", "BM3", "FREEDOM", "MGCN", "DRAGON", "LGMRec", "DA-MRS", "SMORE", "PGL")
PROTOCOLS = ("baseline", "per_condition")


class SpecError(ValueError):
    """A grid spec is malformed; the message names the source, the field and what was expected."""


@dataclass
class HParamSearch:
    """How the knockout stage's hyper-parameters are chosen (on validation, at `baseline`)."""

    search: str = "grid"  # "grid": search each model's search_space; "none": use the model's defaults
    max_points: int = 0  # 0: every point; else a deterministic sample of this many points per model
    seeds: list[int] | None = None  # seeds of the search stage; default: the grid's first seed
    fixed: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> {name: value}, not searched
    protocol: str = "baseline"  # "baseline": one choice per (dataset, model); "per_condition": one per knockout cell


@dataclass
class GridSpec:
    name: str = "grid"
    datasets: list[str] = field(default_factory=lambda: ["synthetic"])
    models: list[str] = field(default_factory=lambda: ["BPR", "VBPR"])
    conditions: list[str] = field(default_factory=lambda: list(knockout.CONDITIONS))
    fills: list[str] = field(default_factory=lambda: ["noise"])
    phases: list[str] = field(default_factory=lambda: ["retrain"])
    seeds: list[int] = field(default_factory=lambda: [0])
    # encoder variants: a list of {modality: variant} ({} = the dataset's defaults), or "all" (every variant
    # of one modality at a time, the others at their default)
    encoders: list[dict[str, str]] | str = field(default_factory=lambda: [{}])
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    # per trial: CPUs, GPUs (a fraction shares one GPU), memory (GiB of RAM Ray reserves; absent or 0: none)
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    model_resources: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> changes to `resources`
    max_concurrent_trials: int = 0  # 0: no limit (the cluster's size limits it)
    hparams: HParamSearch = field(default_factory=HParamSearch)
    max_failures: int = 2  # retries of a trial whose worker or node died
    data_root: str = ""  # where dataset names that are not paths or `synthetic...` live
    wandb_project: str = "ablate"

    # ---- construction and validation ----
    @classmethod
    def from_dict(cls, values: Any, source: str = "grid spec") -> "GridSpec":
        if not isinstance(values, dict):
            raise SpecError(f"{source}: expected a mapping of grid fields, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SpecError(f"{source}: unknown field(s) {unknown}; expected some of {sorted(known)}")
        values = dict(values)
        hp = values.get("hparams", {})
        if isinstance(hp, dict):
            hp_known = {f.name for f in fields(HParamSearch)}
            bad = sorted(set(hp) - hp_known)
            if bad:
                raise SpecError(f"{source}: field 'hparams': unknown key(s) {bad}; expected some of {sorted(hp_known)}")
            values["hparams"] = HParamSearch(**hp)
        elif not isinstance(hp, HParamSearch):
            raise SpecError(f"{source}: field 'hparams': expected a mapping, got {hp!r}")
        spec = cls(**values)
        spec.validate(source)
        return spec

    def validate(self, source: str = "grid spec") -> "GridSpec":
        def fail(name, expected, got):
            raise SpecError(f"{source}: field {name!r}: expected {expected}, got {got!r}")

        for name in ("datasets", "models", "conditions", "fills", "phases", "seeds"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not value:
                fail(name, "a non-empty list", value)
        for name in ("datasets", "models", "conditions", "fills", "phases"):
            if not all(isinstance(v, str) for v in getattr(self, name)):
                fail(name, "a list of names", getattr(self, name))
        if not isinstance(self.name, str) or not self.name or any(c in self.name for c in "/\\ "):
            fail("name", "a non-empty name without '/', '\\' or spaces", self.name)
        for name, allowed in (("conditions", knockout.CONDITIONS), ("fills", knockout.FILLS),
                              ("phases", knockout.PHASES)):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad:
                fail(name, f"values from {list(allowed)}", bad)
        unknown = [m for m in self.models if m not in models.MODELS]
        if unknown:
            fail("models", f"registered models {sorted(models.MODELS)}", unknown)
        if not all(options.is_int(s) for s in self.seeds):
            fail("seeds", "a list of integers", self.seeds)
        for name in ("data_root", "wandb_project"):
            if not isinstance(getattr(self, name), str):
                fail(name, "a string", getattr(self, name))
        if self.encoders != "all":
            if not isinstance(self.encoders, list) or not self.encoders or not all(
                    isinstance(e, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in e.items())
                    for e in self.encoders):
                fail("encoders", "'all' or a non-empty list of {modality: variant} mappings ({} for defaults)",
                     self.encoders)
        if not isinstance(self.train, dict):
            fail("train", "a mapping of training options", self.train)
        try:
            TrainConfig.from_dict(self.train)
        except OptionError as exc:
            fail(f"train.{exc.name}", exc.expected, exc.got)
        _check_resources(fail, "resources", self.resources)
        if not isinstance(self.model_resources, dict):
            fail("model_resources", "a mapping model -> {cpu, gpu, memory}", self.model_resources)
        for model, changes in self.model_resources.items():
            if model not in models.MODELS or not isinstance(changes, dict):
                fail("model_resources", f"model names from {sorted(models.MODELS)} mapping to {{cpu, gpu, memory}}",
                     model)
            _check_resources(fail, f"model_resources.{model}", self.trial_resources(model))
        if not options.is_int(self.max_concurrent_trials) or self.max_concurrent_trials < 0:
            fail("max_concurrent_trials", "an integer >= 0 (0: no limit)", self.max_concurrent_trials)
        if not options.is_int(self.max_failures) or self.max_failures < 0:
            fail("max_failures", "an integer >= 0", self.max_failures)
        hp = self.hparams
        if hp.search not in ("grid", "none"):
            fail("hparams.search", "'grid' or 'none'", hp.search)
        if hp.protocol not in PROTOCOLS:
            fail("hparams.protocol", "'baseline' or 'per_condition'", hp.protocol)
        if not options.is_int(hp.max_points) or hp.max_points < 0:
            fail("hparams.max_points", "an integer >= 0 (0: every point)", hp.max_points)
        if hp.seeds is not None and (not isinstance(hp.seeds, list) or not hp.seeds
                                     or not all(options.is_int(s) for s in hp.seeds)):
            fail("hparams.seeds", "a non-empty list of integers", hp.seeds)
        if not isinstance(hp.fixed, dict):
            fail("hparams.fixed", "a mapping model -> {name: value}", hp.fixed)
        for model, values in hp.fixed.items():
            if model not in models.MODELS or not isinstance(values, dict):
                fail("hparams.fixed", f"model names from {sorted(models.MODELS)} mapping to {{name: value}}", model)
            try:
                hp.fixed[model] = models.check_hparams(model, values)
            except OptionError as exc:
                fail(f"hparams.fixed.{model}.{exc.name}", exc.expected, exc.got)
        return self

    def trial_resources(self, model: str) -> dict[str, float]:
        """What one trial of `model` asks for: `resources` with the model's `model_resources` applied."""
        return {"cpu": 1, "gpu": 0, **self.resources, **self.model_resources.get(model, {})}

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **changes) -> "GridSpec":
        values = self.to_dict()
        for key, value in changes.items():
            if value is None:
                continue
            if key == "epochs":
                values["train"] = {**values["train"], "epochs": value}
            else:
                values[key] = value
        return GridSpec.from_dict(values, source=f"grid spec {self.name!r} with overrides")

    # ---- expansion ----
    def dataset_source(self, name: str) -> str:
        """Where dataset `name` is loaded from: `synthetic...`, a URI, `data_root/name` (`data_root` may be
        ``s3://bucket/path``) or a path. A local path is made absolute: a cell's key holds it, and the same
        data reached from another working directory is the same cell."""
        if name == "synthetic" or name.startswith("synthetic:") or "://" in name:
            return name
        if "://" in self.data_root and not Path(name).is_absolute():
            return f"{self.data_root.rstrip('/')}/{name}"
        return os.path.abspath(Path(self.data_root) / name if self.data_root else name)

    def search_points(self, model: str) -> list[dict]:
        """The hyper-parameter points searched for `model` (fixed values applied, {} = defaults only)."""
        fixed = dict(self.hparams.fixed.get(model, {}))
        if self.hparams.search == "none":
            return [fixed]
        space = {k: list(v) for k, v in sorted(models.get(model).search_space.items()) if k not in fixed}
        points = [dict(zip(space, combo), **fixed) for combo in itertools.product(*space.values())] or [fixed]
        if self.hparams.max_points and len(points) > self.hparams.max_points:
            rng = random.Random(f"{model}:{self.hparams.max_points}")
            points = [points[i] for i in sorted(rng.sample(range(len(points)), self.hparams.max_points))]
        return points

    def search_seeds(self) -> list[int]:
        return list(self.hparams.seeds or self.seeds[:1])

    def search_cells(self, datasets: dict | None = None) -> list[TrialConfig]:
        """Stage 1: every point x search seed of each (dataset, model) on baseline with default encoders, or,
        under the ``per_condition`` protocol, of each knockout cell (`datasets` as for `knockout_cells`)."""
        train = TrainConfig.from_dict(self.train)
        if self.hparams.protocol == "per_condition":
            if datasets is None:
                raise ValueError("the per_condition protocol searches every knockout cell: pass the loaded datasets")
            cells = [TrialConfig(dataset=source, model=m, condition=c, fill=f, phase=p, seed=s, encoders=enc,
                                 hparams=point, train=train)
                     for source, m, c, f, p, s, enc in self._coordinates(datasets, self.search_seeds())
                     for point in self.search_points(m)]
            return _unique(cells)
        cells = [TrialConfig(dataset=self.dataset_source(d), model=m, condition="baseline", seed=s,
                             hparams=point, train=train)
                 for d in self.datasets for m in self.models for point in self.search_points(m)
                 for s in self.search_seeds()]
        return _unique(cells)

    def choice_slot(self, cell: TrialConfig) -> tuple:
        """What one hyper-parameter choice covers: (dataset source, model) under the ``baseline`` protocol;
        (dataset source, model, condition, fill, phase, encoders as JSON) under ``per_condition``."""
        if self.hparams.protocol == "per_condition":
            return (cell.dataset, cell.model, cell.condition, cell.fill, cell.phase,
                    json.dumps(cell.encoders, sort_keys=True))
        return (cell.dataset, cell.model)

    def knockout_cells(self, chosen: dict[tuple, dict], datasets: dict) -> list[TrialConfig]:
        """Stage 2: the knockout grid, each cell with the hyper-parameters `chosen[self.choice_slot(cell)]`
        (`datasets` as for `knockout_slots`)."""
        return _unique([replace(cell, hparams=dict(chosen[slot]))
                        for slot, cells in self.knockout_slots(datasets).items() for cell in cells])

    def knockout_slots(self, datasets: dict) -> dict[tuple, list[TrialConfig]]:
        """The knockout grid's cells (at the model's defaults) by choice slot (`choice_slot`): the cells one
        choice of hyper-parameters covers.

        `datasets[source]` is the loaded `Dataset` (its encoder variants expand ``encoders: all`` and check
        named variants). An ID-only model runs under ``baseline`` only: knocking out features it never reads
        would retrain the same model under another name.
        """
        train = TrainConfig.from_dict(self.train)
        out: dict[tuple, list[TrialConfig]] = {}
        for source, m, c, f, p, s, enc in self._coordinates(datasets, self.seeds):
            cell = TrialConfig(dataset=source, model=m, condition=c, fill=f, phase=p, seed=s, encoders=enc,
                               train=train)
            out.setdefault(self.choice_slot(cell), []).append(cell)
        return out

    def _coordinates(self, datasets: dict, seeds: list[int]):
        """(source, model, condition, fill, phase, seed, encoders) of every knockout cell, for `seeds`."""
        every = knockout.settings(self.conditions, self.fills, self.phases)  # one baseline, whatever the fills
        for d in self.datasets:
            source = self.dataset_source(d)
            data = datasets[source]
            for m in self.models:
                reads = [x for x in models.get(m).modalities if x in data.features]
                settings = every if reads else [k for k in every if not k.knocked]
                for enc in (self.encoder_sets(data, reads) if reads else [{}]):
                    for k, s in itertools.product(settings, seeds):
                        yield source, m, k.condition, k.fill, k.phase, s, enc

    def encoder_sets(self, data, reads: list[str]) -> list[dict[str, str]]:
        """The encoder settings a model reading `reads` runs with on dataset `data`."""
        if self.encoders == "all":  # the defaults, then every other variant of one modality at a time
            out = [{}]
            for modality in reads:
                default = data.default_variants.get(modality, "default")
                out += [{modality: v} for v in data.variants(modality) if v != default]
            return _unique_dicts(out)
        for enc in self.encoders:
            for modality, variant in enc.items():
                if modality in data.features and variant not in data.features[modality]:
                    raise SpecError(f"grid spec {self.name!r}: field 'encoders': dataset {data.name!r} has no "
                                    f"{modality} variant {variant!r}; it has {data.variants(modality)}")
        # a variant of a modality the model does not read changes nothing: drop it
        return _unique_dicts([{k: v for k, v in enc.items() if k in reads} for enc in self.encoders])


def _check_resources(fail, name: str, res) -> None:
    if not isinstance(res, dict) or set(res) - {"cpu", "gpu", "memory"} or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in res.values()) \
            or res.get("cpu", 1) <= 0:
        fail(name, "{cpu: > 0, gpu: >= 0, memory: GiB >= 0} (gpu may be fractional, for example 0.25)", res)
    if res.get("gpu", 0) > 1 and res["gpu"] != int(res["gpu"]):
        fail(name, "gpu <= 1, or a whole number of GPUs", res)


def _unique(cells: list[TrialConfig]) -> list[TrialConfig]:
    seen, out = set(), []
    for cell in cells:
        if cell.key() not in seen:
            seen.add(cell.key())
            out.append(cell)
    return out


def _unique_dicts(items: list[dict]) -> list[dict]:
    seen, out = set(), []
    for item in items:
        text = json.dumps(item, sort_keys=True)
        if text not in seen:
            seen.add(text)
            out.append(item)
    return out


# ---- presets ----
def preset(name: str) -> GridSpec:
    if name == "demo":
        # laptop-sized: synthetic data with planted text and image signal and no popularity bias (so a model
        # that learns beats the popularity ranking), three models, three seeds (a paired test over 3 seeds can
        # reach Holm-corrected p < 0.05), a short training at a learning rate of 0.01
        return GridSpec(
            name="demo",
            datasets=["synthetic:n_users=400,n_items=250,text_dim=32,image_dim=32,popularity=0.0,seed=0"],
            models=["BPR", "VBPR", "FREEDOM"],
            conditions=list(knockout.CONDITIONS), fills=["noise"], seeds=[0, 1, 2],
            train={"epochs": 20, "eval_every": 2, "patience": 3, "batch_size": 512, "lr": 0.01},
            resources={"cpu": 1, "gpu": 0},
            hparams=HParamSearch(search="grid", max_points=2),
        ).validate("preset 'demo'")
    if name in ("paper", "full"):
        registered = [m for m in PAPER_MODELS + ID_MODELS if m in models.MODELS]
        spec = GridSpec(
            name=name,
            datasets=list(PAPER_DATASETS),
            models=registered,
            conditions=list(knockout.CONDITIONS),
            fills=list(knockout.PAPER_FILLS),
            seeds=[0, 1, 2],
            train={"epochs": 1000, "patience": 20, "valid_metric": "ndcg@5"},
            resources={"cpu": 1, "gpu": 0.25},  # four trials on a 4-vCPU, 1-GPU T4 node
            # the models with the larger working sets take half a GPU, two per T4 (a trial of 1 epoch and its
            # evaluation on Amazon Baby, CPU, benchmarks/trial_memory.py: 0.95-1.6 GB above the loaded data for
            # those that finished, 0.37-0.84 GB for the others; about 3x that on Clothing)
            model_resources={m: {"cpu": 2, "gpu": 0.5} for m in HEAVY_MODELS if m in models.MODELS},
            hparams=HParamSearch(search="grid"),
        )
        if name == "full":
            spec.name, spec.fills, spec.phases = "full", list(knockout.FILLS), list(knockout.PHASES)
            spec.encoders, spec.seeds = "all", [0, 1, 2, 3, 4]
        return spec.validate(f"preset {name!r}")
    raise SpecError(f"unknown preset {name!r}; expected one of {PRESETS} or a .yaml/.yml/.py file")


PRESETS = ("demo", "paper", "full")


def load_spec(source: str | Path) -> GridSpec:
    """A preset name, a YAML file (the `GridSpec` fields), or a Python file defining ``SPEC``."""
    text = str(source)
    if text in PRESETS:
        return preset(text)
    path = Path(text)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        if not path.is_file():
            raise SpecError(f"grid spec {path}: no such file")
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise SpecError(f"grid spec {path}: not valid YAML ({exc})") from None
        if isinstance(values, dict) and "preset" in values:  # a preset with some fields changed
            base = preset(values.pop("preset")).to_dict()
            values = {**base, **values}
        return GridSpec.from_dict(values, source=f"grid spec {path}")
    if path.suffix == ".py":
        if not path.is_file():
            raise SpecError(f"grid spec {path}: no such file")
        scope: dict = {"__file__": str(path), "__name__": "ablate_grid_spec"}
        exec(compile(path.read_text(), str(path), "exec"), scope)
        if "SPEC" not in scope:
            raise SpecError(f"grid spec {path}: expected a variable SPEC (a GridSpec or a dict)")
        spec = scope["SPEC"]
        if isinstance(spec, GridSpec):
            return spec.validate(f"grid spec {path}")
        return GridSpec.from_dict(spec, source=f"grid spec {path}")
    raise SpecError(f"grid spec {text!r}: expected a preset {PRESETS}, a .yaml/.yml file or a .py file")
