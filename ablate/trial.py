"""One knockout trial, end to end: features -> knockout -> graph -> model -> fit -> one result row.

`run_trial` is what `ablate trial` runs and what every Ray Tune trial wraps; it takes an already loaded
`Dataset` (the data is loaded once, by the caller) and a `TrialConfig`.
"""
from __future__ import annotations

import hashlib
import json
import platform
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import torch

from . import __version__, knockout, models, options
from .data import TRAIN, Dataset
from .graphs import InteractionGraph
from .options import OptionError
from .train import (COLLAPSED, FINISHED, TrainConfig, evaluate, fit, make_evaluators, popularity_metrics,
                    seed_everything)


@dataclass
class TrialConfig:
    dataset: str = "synthetic"
    model: str = "BPR"
    condition: str = "baseline"
    fill: str = "noise"
    phase: str = "retrain"
    seed: int = 0
    encoders: dict[str, str] = field(default_factory=dict)  # modality -> encoder variant; default if absent
    hparams: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    device: str = "auto"  # "auto": CUDA when present, else CPU

    def __post_init__(self):
        """Every option checked before any work: an `OptionError` names the first wrong one (``train.epochs``,
        ``hparams.reg_weight``, ``fill``...); the knockout setting is normalised (a baseline has no fill)."""
        if isinstance(self.train, dict):
            try:
                self.train = TrainConfig.from_dict(self.train)
            except OptionError as exc:
                raise exc.within("train") from None
        setting = knockout.Knockout(self.condition, self.fill, self.phase)
        self.condition, self.fill, self.phase = setting.condition, setting.fill, setting.phase
        if not options.is_int(self.seed):
            raise OptionError("seed", "an integer", self.seed)
        self.seed = int(self.seed)
        if not isinstance(self.encoders, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                          for k, v in self.encoders.items()):
            raise OptionError("encoders", "a mapping modality -> variant name", self.encoders)
        try:
            hparams = models.check_hparams(self.model, self.hparams)
        except OptionError as exc:
            raise exc.within("hparams") from None
        self.hparams = {**models.get(self.model).defaults, **hparams}

    def identity(self) -> dict:
        """Everything that defines the trial's outcome (not where it runs)."""
        out = asdict(self)
        out.pop("device")
        out["train"].pop("profile")
        return out

    def key(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    @classmethod
    def from_dict(cls, values: dict) -> "TrialConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown trial option(s) {sorted(unknown)}; expected {sorted(known)}")
        return cls(**values)


def resolve_device(name: str) -> torch.device:
    """`name` as a torch device (``auto``: CUDA when present, else CPU); one that is not here is an `OptionError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise OptionError("device", "auto, cpu, cuda or cuda:N", name) from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise OptionError("device", f"a device of this machine ({torch.cuda.device_count()} CUDA device(s))", name)
    return device


def run_trial(dataset: Dataset, config: TrialConfig, on_eval: Callable[[dict], None] | None = None,
              checkpoint_every: int = 0, on_checkpoint: Callable[[dict], None] | None = None,
              resume: dict | None = None) -> dict:
    """Run one trial and return its result row (columns: `ablate.results.schema`).

    `on_eval`, `checkpoint_every`, `on_checkpoint` and `resume` (a state `on_checkpoint` was given) go to
    `ablate.train.fit`: a trial resumed from a checkpoint ends as the uninterrupted one would.
    """
    started = time.time()
    device = resolve_device(config.device)
    seed_everything(config.seed, device)
    features = dataset.select_features(config.encoders)
    knocked = knockout.apply(features, config.condition, config.fill, config.seed)
    graph = InteractionGraph(*dataset.pairs(TRAIN), dataset.n_users, dataset.n_items, device=device)
    model = models.build(config.model, graph, features if config.phase == "eval_only" else knocked, config.hparams)
    train = config.train.with_model_hparams(config.hparams)
    valid, test = make_evaluators(dataset, train, device)
    floor = popularity_metrics(dataset, valid)[train.valid_metric]
    result = fit(model, graph, valid, test, train, on_eval=on_eval, checkpoint_every=checkpoint_every,
                 on_checkpoint=on_checkpoint, resume=resume)
    # degenerate: finished, but the trained model's best valid metric is below the popularity ranking's
    degenerate = result.status == FINISHED and result.valid.get(train.valid_metric, -1.0) < floor
    if config.phase == "eval_only" and result.status == FINISHED:
        knocked_model = models.build(config.model, graph, knocked, config.hparams)
        trained = {k: v for k, v in model.state_dict().items() if k not in model.feature_keys}
        missing, unexpected = knocked_model.load_state_dict(trained, strict=False)
        if set(missing) != knocked_model.feature_keys or unexpected:
            raise RuntimeError(f"{config.model}: eval-only swap expected to replace exactly its feature-derived "
                               f"tensors {sorted(knocked_model.feature_keys)}; missing {missing}, unexpected {unexpected}")
        for split, evaluator in (("valid", valid), ("test", test)):
            metrics, reason = evaluate(knocked_model, evaluator, config.seed)
            setattr(result, split, metrics)
            if reason:
                result.status, result.reason = COLLAPSED, f"{reason} on the {split} split with knocked-out features"
                break
    row = make_row(config, dataset, result, device, time.time() - started)
    row.update(popularity_valid=float(floor), degenerate=bool(degenerate))
    return row


def make_row(config: TrialConfig, dataset: Dataset, result, device, wall_seconds: float) -> dict:
    from .results import metric_columns

    ok = result.status == FINISHED
    model_class = models.get(config.model)
    reads = sorted(m for m in model_class.modalities if m in dataset.features)
    row = {
        "key": config.key(),
        "dataset": dataset.name,
        "data_source": config.dataset,
        "model": config.model,
        "condition": config.condition,
        "fill": config.fill,
        "phase": config.phase,
        "seed": config.seed,
        "encoders": json.dumps({m: config.encoders.get(m, dataset.default_variants.get(m, "default"))
                                for m in sorted(dataset.features)}, sort_keys=True),
        # what the model read, so that the rows alone tell an ID-only model and which data a result is of
        "modalities": json.dumps(reads),
        "scores_read_features": bool(model_class.scores_read_features),
        "data_hash": dataset.content_hash(config.encoders, reads),
        "hparams": json.dumps(config.hparams, sort_keys=True),
        # the training settings as given; a model's learning_rate / lr_decay (in hparams) replace lr / lr_decay
        "train_config": json.dumps(asdict(config.train), sort_keys=True),
        "status": result.status,
        "reason": result.reason,
        "best_epoch": result.best_epoch,
        "epochs": result.epochs,
        "seconds_per_epoch": result.seconds_per_epoch,
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
        "wall_seconds": wall_seconds,
        "curve": json.dumps(result.curve),
        "ablate_version": __version__,
        "torch_version": torch.__version__,
        "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    row.update(popularity_valid=float("nan"), degenerate=False)
    for split in ("valid", "test"):
        values = getattr(result, split)
        for column in metric_columns(split, config.train.ks):
            name = column.split("_", 1)[1]
            row[column] = float(values[name]) if ok and name in values else float("nan")
    return row
