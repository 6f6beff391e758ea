"""Modality knockout: replace a modality's item features with uninformative vectors of the same shape.

Conditions say which modalities are knocked out, fills say what replaces them. Everything here is a pure
function of (features, condition, fill, seed): the same inputs give the same arrays, and the input arrays
are never modified (they may be read-only views into Ray's object store).

Phases: ``retrain`` knocks out for training and evaluation (the study's protocol); ``eval_only`` trains on
the real features and knocks out at evaluation only (what a trained model relies on, without retraining).

`Knockout` is one (condition, fill, phase) setting, checked and normalised: ``baseline`` knocks nothing out,
so it has no fill (``none``) and is always retrained. The command line, the grid, the trial and the report
all use this one vocabulary.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .options import OptionError

CONDITIONS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "text_only": ("image",),  # the paper's "Image Knockout"
    "image_only": ("text",),  # the paper's "Text Knockout"
    "id_only": ("text", "image"),  # the paper's "Dual Knockout"
}
FILLS = ("noise", "constant_one", "constant_zero", "mean", "gaussian", "shuffle")
PAPER_FILLS = ("noise", "constant_one", "constant_zero")
PHASES = ("retrain", "eval_only")
BASELINE = "baseline"
NO_FILL = "none"  # the fill of the baseline: nothing is knocked out


@dataclass(frozen=True)
class Knockout:
    """One knockout setting; invalid values are an `OptionError`, a baseline gets fill ``none`` and phase
    ``retrain`` whatever was given (every fill of a baseline is the same trial)."""

    condition: str = BASELINE
    fill: str = NO_FILL
    phase: str = "retrain"

    def __post_init__(self):
        if self.condition not in CONDITIONS:
            raise OptionError("condition", f"one of {tuple(CONDITIONS)}", self.condition)
        if self.condition == BASELINE:
            object.__setattr__(self, "fill", NO_FILL)
            object.__setattr__(self, "phase", "retrain")
            return
        if self.fill not in FILLS:
            raise OptionError("fill", f"one of {FILLS}", self.fill)
        if self.phase not in PHASES:
            raise OptionError("phase", f"one of {PHASES}", self.phase)

    @property
    def knocked(self) -> tuple[str, ...]:
        """The modalities replaced by the fill."""
        return CONDITIONS[self.condition]

    @property
    def order(self) -> tuple[int, int, int]:
        """Sort key: phase, then condition, then fill, in the order of the vocabulary."""
        fills = (NO_FILL, *FILLS)
        return PHASES.index(self.phase), list(CONDITIONS).index(self.condition), fills.index(self.fill)


def settings(conditions, fills, phases) -> list[Knockout]:
    """Every distinct setting of conditions x fills x phases (one baseline, whatever the fills and phases)."""
    out: list[Knockout] = []
    for condition in conditions:
        for fill_name in fills:
            for phase in phases:
                setting = Knockout(condition, fill_name, phase)
                if setting not in out:
                    out.append(setting)
    return out


def _rng(seed: int, modality: str) -> np.random.Generator:
    # one independent, reproducible stream per (seed, modality)
    return np.random.default_rng([int(seed), zlib.crc32(modality.encode())])


def fill(features: np.ndarray, how: str, seed: int, modality: str = "") -> np.ndarray:
    """An uninformative replacement for `features` (n_items, dim): same shape, float32.

    noise          i.i.d. N(1, 0.1^2) per item and dimension (the paper's; rows are nearly parallel)
    constant_one   every entry 1
    constant_zero  every entry 0
    mean           every item gets the mean feature vector
    gaussian       i.i.d. N(mean_d, std_d^2) with each dimension's real mean and std: the real marginals,
                   no item information
    shuffle        the real rows, permuted across items (same vectors, wrong items)
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (n_items, dim), got shape {features.shape}")
    shape = features.shape
    if how == "noise":
        return (1.0 + 0.1 * _rng(seed, modality).standard_normal(shape)).astype(np.float32)
    if how == "constant_one":
        return np.ones(shape, dtype=np.float32)
    if how == "constant_zero":
        return np.zeros(shape, dtype=np.float32)
    if how == "mean":
        return np.broadcast_to(features.mean(axis=0, dtype=np.float64), shape).astype(np.float32)
    if how == "gaussian":
        mean = features.mean(axis=0, dtype=np.float64)
        std = features.std(axis=0, dtype=np.float64)
        return (mean + std * _rng(seed, modality).standard_normal(shape)).astype(np.float32)
    if how == "shuffle":
        return np.ascontiguousarray(features[_rng(seed, modality).permutation(shape[0])], dtype=np.float32)
    raise OptionError("fill", f"one of {FILLS}", how)


def apply(features: dict[str, np.ndarray], condition: str, how: str, seed: int) -> dict[str, np.ndarray]:
    """The features a model sees under `condition`: knocked-out modalities replaced by `fill(how)`."""
    setting = Knockout(condition, how)
    return {m: fill(x, setting.fill, seed, m) if m in setting.knocked else x for m, x in features.items()}
