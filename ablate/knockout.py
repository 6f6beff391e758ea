"""Modality knockout: replace a modality's item features with uninformative vectors of the same shape.

Conditions say which modalities are knocked out, fills say what replaces them. Everything here is a pure
function of (features, condition, fill, seed): the same inputs give the same arrays, and the input arrays
are never modified (they may be read-only views into Ray's object store).

Phases: ``retrain`` knocks out for training and evaluation (the study's protocol); ``eval_only`` trains on
the real features and knocks out at evaluation only (what a trained model relies on, without retraining).
"""
from __future__ import annotations

import zlib

import numpy as np

CONDITIONS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "text_only": ("image",),  # the paper's "Image Knockout"
    "image_only": ("text",),  # the paper's "Text Knockout"
    "id_only": ("text", "image"),  # the paper's "Dual Knockout"
}
FILLS = ("noise", "constant_one", "constant_zero", "mean", "gaussian", "shuffle")
PAPER_FILLS = ("noise", "constant_one", "constant_zero")
PHASES = ("retrain", "eval_only")


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
    raise ValueError(f"unknown fill {how!r}; expected one of {FILLS}")


def apply(features: dict[str, np.ndarray], condition: str, how: str, seed: int) -> dict[str, np.ndarray]:
    """The features a model sees under `condition`: knocked-out modalities replaced by `fill(how)`."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; expected one of {tuple(CONDITIONS)}")
    knocked = set(CONDITIONS[condition])
    if not knocked:
        return dict(features)  # baseline: nothing to fill
    if how not in FILLS:
        raise ValueError(f"unknown fill {how!r}; expected one of {FILLS}")
    return {m: fill(x, how, seed, m) if m in knocked else x for m, x in features.items()}
