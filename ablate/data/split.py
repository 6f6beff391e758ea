"""Per-user train/valid/test splits."""
from __future__ import annotations

import numpy as np

from .dataset import TEST, TRAIN, VALID


def split_per_user(
    users: np.ndarray,
    seed: int,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    order: np.ndarray | None = None,
    min_for_ratio: int = 10,
) -> np.ndarray:
    """Split labels (int8, 0/1/2) for interactions grouped by user.

    MMRec's rule: each user's interactions are shuffled (or ordered by `order`, e.g. timestamps, for a
    time-ordered split) and cut by `ratios`; a user with fewer than `min_for_ratio` interactions gives one
    to valid and one to test (when it has at least 3). The last positions go to test, those before to valid.
    """
    users = np.asarray(users)
    rng = np.random.default_rng(seed)
    key = rng.random(users.shape[0]) if order is None else np.asarray(order, dtype=np.float64)
    idx = np.lexsort((key, users))  # grouped by user, shuffled (or time-ordered) within
    sorted_users = users[idx]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    counts = np.diff(np.r_[starts, sorted_users.size])
    n_valid = np.where(counts < min_for_ratio, 1, np.round(counts * ratios[1])).astype(np.int64)
    n_test = np.where(counts < min_for_ratio, 1, np.round(counts * ratios[2])).astype(np.int64)
    too_few = counts < 3
    n_valid[too_few] = 0
    n_test[too_few] = 0
    position = np.arange(sorted_users.size) - np.repeat(starts, counts)
    remaining = np.repeat(counts, counts) - position  # 1 for the user's last interaction
    labels_sorted = np.full(sorted_users.size, TRAIN, dtype=np.int8)
    labels_sorted[remaining <= np.repeat(n_test + n_valid, counts)] = VALID
    labels_sorted[remaining <= np.repeat(n_test, counts)] = TEST
    labels = np.empty_like(labels_sorted)
    labels[idx] = labels_sorted
    return labels
