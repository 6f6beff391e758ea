"""A seeded synthetic dataset with *planted* modality signal: the ground truth for knockout.

Users and items have latent factors z_u, z_i in R^d, cut into three blocks:

    z_i = [z_i^text | z_i^image | z_i^id]      (d_text + d_image + d_id = d)

Text features show only the text block, image features only the image block, and nothing shows the id
block: ``x_i^text = z_i^text W_text + noise`` (a modality with a zero share is pure noise). A user picks items
by sampling without replacement (Gumbel top-k) from ``softmax(strength * <z_u, z_i> / sqrt(d) + b_i)``,
with ``b_i`` a log-normal popularity bias. A model can only learn the id block from interactions, while
the text and image blocks are also readable from features, so knocking out a modality removes exactly
the share of signal that was planted in it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .dataset import DEFAULT_VARIANT, Dataset
from .split import split_per_user


@dataclass(frozen=True)
class SyntheticSpec:
    n_users: int = 1500
    n_items: int = 800
    interactions_per_user: float = 12.0  # mean; every user gets at least `min_per_user`
    min_per_user: int = 5
    latent_dim: int = 16
    text_share: float = 0.5  # share of latent dims visible through text features
    image_share: float = 0.25  # ... through image features; the rest is visible through neither
    text_dim: int = 64
    image_dim: int = 128
    feature_noise: float = 0.3  # std of additive feature noise, relative to the signal's std
    strength: float = 4.0  # preference sharpness
    popularity: float = 0.5  # std of the log-normal popularity bias
    seed: int = 0

    def blocks(self) -> tuple[int, int, int]:
        d_text = int(round(self.latent_dim * self.text_share))
        d_image = int(round(self.latent_dim * self.image_share))
        if d_text + d_image > self.latent_dim:
            raise ValueError(f"text_share + image_share must be <= 1, got {self.text_share} + {self.image_share}")
        return d_text, d_image, self.latent_dim - d_text - d_image


def _features(block: np.ndarray, dim: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    n = block.shape[0]
    if block.shape[1] == 0:
        return rng.standard_normal((n, dim)).astype(np.float32)
    projection = rng.standard_normal((block.shape[1], dim)) / np.sqrt(block.shape[1])
    signal = block @ projection
    return (signal + noise * signal.std() * rng.standard_normal((n, dim))).astype(np.float32)


def make_synthetic(spec: SyntheticSpec | None = None, name: str = "synthetic", **overrides) -> Dataset:
    """Generate a dataset from `spec` (or SyntheticSpec(**overrides)); the same spec gives the same data."""
    spec = spec or SyntheticSpec(**overrides)
    rng = np.random.default_rng(spec.seed)
    d_text, d_image, _ = spec.blocks()
    z_users = rng.standard_normal((spec.n_users, spec.latent_dim))
    z_items = rng.standard_normal((spec.n_items, spec.latent_dim))
    bias = spec.popularity * rng.standard_normal(spec.n_items)
    extra = rng.poisson(max(0.0, spec.interactions_per_user - spec.min_per_user), spec.n_users)
    counts = np.minimum(spec.min_per_user + extra, spec.n_items // 2)

    users, items = [], []
    chunk = max(1, 2**22 // spec.n_items)
    for start in range(0, spec.n_users, chunk):
        stop = min(spec.n_users, start + chunk)
        logits = spec.strength * z_users[start:stop] @ z_items.T / np.sqrt(spec.latent_dim) + bias
        gumbel = logits - np.log(-np.log(rng.random(logits.shape)))
        k = int(counts[start:stop].max())
        top = np.argpartition(-gumbel, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(gumbel, top, axis=1).argsort(axis=1)[:, ::-1]
        top = np.take_along_axis(top, order, axis=1)
        for row, user in enumerate(range(start, stop)):
            chosen = top[row, : counts[user]]
            users.append(np.full(chosen.size, user))
            items.append(chosen)
    users = np.concatenate(users).astype(np.int32)
    items = np.concatenate(items).astype(np.int32)
    split = split_per_user(users, seed=spec.seed)

    text = _features(z_items[:, :d_text], spec.text_dim, spec.feature_noise, rng)
    image = _features(z_items[:, d_text : d_text + d_image], spec.image_dim, spec.feature_noise, rng)
    return Dataset(
        name=name,
        users=users,
        items=items,
        split=split,
        n_users=spec.n_users,
        n_items=spec.n_items,
        features={"text": {DEFAULT_VARIANT: text}, "image": {DEFAULT_VARIANT: image}},
        default_variants={"text": DEFAULT_VARIANT, "image": DEFAULT_VARIANT},
    )


def spec_from_string(text: str) -> SyntheticSpec:
    """`synthetic` or `synthetic:n_users=500,text_share=1,image_share=0` -> SyntheticSpec."""
    _, _, args = text.partition(":")
    fields = {k: type(v) for k, v in asdict(SyntheticSpec()).items()}
    overrides = {}
    for part in filter(None, args.split(",")):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise ValueError(f"synthetic option {part!r}: expected key=value with key in {sorted(fields)}")
        overrides[key] = fields[key](float(value)) if fields[key] is int else fields[key](value)
    return SyntheticSpec(**overrides)
