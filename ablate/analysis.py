"""Feature analysis: how dispersed each modality's item features are, and whether they agree with behaviour.

Per modality and encoder variant (item features X, n items x d dims):

- mean pairwise cosine: the mean of cos(x_i, x_j) over all pairs i != j (over a seeded sample of
  `max_items` items when there are more). Near 1: the vectors point one way (anisotropy); a cosine kNN graph
  built from them carries little. The paper's "noise" fill gives about 0.99.
- effective rank (Roy and Vetterli, 2007): exp of the entropy of the normalised singular values of the
  centred X; how many directions the features really use (1 <= erank <= min(n, d)). Also the number of
  principal components that explain 90% of the variance.
- norm spread: the coefficient of variation (std / mean) of the row norms, and the ratio of their 95th to
  5th percentile.
- kNN overlap: for each item, the share of its `k` nearest co-interaction neighbours (items with the most
  shared training users, normalised as c_ij / sqrt(d_i d_j)) that are also among its `k` nearest feature
  neighbours (cosine); averaged over items with at least one co-interaction neighbour. Chance is
  k / (n - 1); `lift` is overlap / chance.
- a 2-D t-SNE map (scikit-learn's Barnes-Hut t-SNE, 500 iterations, on the top 50 principal components), items coloured by
  their training popularity.

Reference rows computed the same way on knockout fills (by default the paper's `noise`) put the numbers in
scale: those are what a knocked-out model sees.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import knockout
from .data import TRAIN, Dataset


def _unit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norms = np.linalg.norm(x, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    return x / safe[:, None], norms


def mean_pairwise_cosine(x: np.ndarray, max_items: int = 4000, seed: int = 0) -> float:
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] > max_items:
        x = x[np.random.default_rng(seed).choice(x.shape[0], max_items, replace=False)]
    unit, norms = _unit(x)
    unit = unit[norms > 0]
    n = unit.shape[0]
    if n < 2:
        return math.nan
    total = unit.sum(axis=0)
    # sum over i != j of <u_i, u_j> = |sum u|^2 - sum |u_i|^2
    return float((total @ total - n) / (n * (n - 1)))


def effective_rank(x: np.ndarray) -> tuple[float, int]:
    """(effective rank of the centred matrix, principal components for 90% of the variance)."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    gram = centred.T @ centred if centred.shape[1] <= centred.shape[0] else centred @ centred.T
    s = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0, None))[::-1]  # singular values, largest first
    if s.sum() <= 0:
        return 1.0, 0
    p = s / s.sum()
    p = p[p > 0]
    erank = float(np.exp(-(p * np.log(p)).sum()))
    variance = np.cumsum(s**2) / (s**2).sum()
    return erank, int(np.searchsorted(variance, 0.9) + 1)


def norm_spread(x: np.ndarray) -> tuple[float, float]:
    norms = np.linalg.norm(np.asarray(x, dtype=np.float64), axis=1)
    mean = norms.mean()
    cv = float(norms.std() / mean) if mean > 0 else math.nan
    low, high = np.percentile(norms, [5, 95])
    return cv, float(high / low) if low > 0 else math.inf


def feature_neighbours(x: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """(n, k) indices of each item's k most cosine-similar other items."""
    unit, _ = _unit(np.asarray(x, dtype=np.float32))
    n = unit.shape[0]
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        sims = unit[start:start + chunk] @ unit.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf
        out[start:start + chunk] = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return out


def cointeraction_neighbours(dataset: Dataset, k: int) -> list[np.ndarray]:
    """Per item, up to k items with the highest normalised count of shared training users (none if none)."""
    users, items = dataset.pairs(TRAIN)
    b = sp.csr_matrix((np.ones(users.size, dtype=np.float32), (users, items)),
                      shape=(dataset.n_users, dataset.n_items))
    b.data[:] = 1.0  # duplicates count once
    co = (b.T @ b).tocsr()
    co.setdiag(0)
    co.eliminate_zeros()
    degree = np.asarray(b.sum(axis=0)).ravel()
    out = []
    for i in range(dataset.n_items):
        start, stop = co.indptr[i], co.indptr[i + 1]
        cols, vals = co.indices[start:stop], co.data[start:stop]
        if cols.size == 0:
            out.append(cols)
            continue
        score = vals / np.sqrt(degree[i] * degree[cols])
        take = min(k, cols.size)
        out.append(cols[np.argpartition(-score, take - 1)[:take]])
    return out


def knn_overlap(x: np.ndarray, co_neighbours: list[np.ndarray], k: int) -> tuple[float, float]:
    """(mean overlap, lift over chance)."""
    feats = feature_neighbours(x, k)
    shares = [np.intersect1d(feats[i], nb).size / nb.size for i, nb in enumerate(co_neighbours) if nb.size]
    if not shares:
        return math.nan, math.nan
    overlap = float(np.mean(shares))
    chance = k / (x.shape[0] - 1)
    return overlap, overlap / chance


def analyze(dataset: Dataset, k: int = 10, fills: tuple[str, ...] = ("noise",), max_items: int = 4000) -> pd.DataFrame:
    """One row per (modality, variant) of the dataset, and per reference fill of each default variant."""
    if not dataset.features:
        raise ValueError(f"dataset {dataset.name!r} has no item features to analyse")
    with _one_thread():
        return _analyze(dataset, k, fills, max_items)


def _one_thread():
    """BLAS and OpenMP on one thread: on a small shared machine, oversubscribed threads cost 5-10x."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _analyze(dataset, k, fills, max_items) -> pd.DataFrame:
    co = cointeraction_neighbours(dataset, k)
    rows = []
    for modality in sorted(dataset.features):
        for variant in dataset.variants(modality):
            x = dataset.features[modality][variant]
            rows.append(_stats(x, modality, variant, "", co, k, max_items))
        default = dataset.default_variants.get(modality, dataset.variants(modality)[0])
        for how in fills:
            x = knockout.fill(dataset.features[modality][default], how, 0, modality)
            rows.append(_stats(x, modality, default, how, co, k, max_items))
    return pd.DataFrame(rows)


def _stats(x, modality, variant, fill, co, k, max_items) -> dict:
    started = time.perf_counter()
    erank, dims90 = effective_rank(x if x.shape[0] <= max_items else
                                   x[np.random.default_rng(0).choice(x.shape[0], max_items, replace=False)])
    cv, ratio = norm_spread(x)
    overlap, lift = knn_overlap(x, co, k)
    return {"modality": modality, "variant": variant, "fill": fill or "real", "items": x.shape[0],
            "dim": x.shape[1], "mean_cosine": mean_pairwise_cosine(x, max_items), "effective_rank": erank,
            "effective_rank_share": erank / min(x.shape), "dims_90pct": dims90, "norm_cv": cv,
            "norm_p95_p5": ratio, f"knn{k}_overlap": overlap, f"knn{k}_lift": lift,
            "seconds": time.perf_counter() - started}


def tsne_map(dataset: Dataset, path: Path, max_items: int = 3000, seed: int = 0) -> Path:
    """A 2-D t-SNE of every (modality, variant), side by side; colour: log training popularity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    panels = [(m, v) for m in sorted(dataset.features) for v in dataset.variants(m)]
    _, items = dataset.pairs(TRAIN)
    popularity = np.log1p(np.bincount(items, minlength=dataset.n_items))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(dataset.n_items, max_items, replace=False)) if dataset.n_items > max_items \
        else np.arange(dataset.n_items)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), squeeze=False)
    for ax, (modality, variant) in zip(axes[0], panels):
        x = np.asarray(dataset.features[modality][variant], dtype=np.float64)[chosen]
        x = x - x.mean(axis=0)
        components = min(50, x.shape[1], x.shape[0] - 1)
        with _one_thread():
            reduced = PCA(n_components=components, random_state=seed).fit_transform(x) if components >= 2 else x
        perplexity = float(min(30, max(2, (len(chosen) - 1) // 3)))
        with _one_thread():
            coords = TSNE(n_components=2, perplexity=perplexity, init="pca", max_iter=500,
                          random_state=seed).fit_transform(reduced)
        points = ax.scatter(coords[:, 0], coords[:, 1], c=popularity[chosen], s=4, cmap="viridis")
        ax.set_title(f"{dataset.name}: {modality} ({variant}, {dataset.features[modality][variant].shape[1]}-d)",
                     fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(points, ax=axes[0].tolist(), label="log(1 + training interactions)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compactness_line(table: pd.DataFrame) -> str | None:
    """The text-versus-image comparison in one sentence (real default features), when both are there."""
    real = table[table["fill"] == "real"].drop_duplicates("modality")
    if not {"text", "image"} <= set(real["modality"]):
        return None
    t = real[real["modality"] == "text"].iloc[0]
    i = real[real["modality"] == "image"].iloc[0]
    return (f"text ({t['variant']}): mean cosine {t['mean_cosine']:.3f}, effective rank {t['effective_rank']:.1f} "
            f"of {t['dim']} dims; image ({i['variant']}): mean cosine {i['mean_cosine']:.3f}, effective rank "
            f"{i['effective_rank']:.1f} of {i['dim']} dims")
