"""k-core filtering of an interaction list: drop users and items with fewer than k interactions, repeatedly,
until every remaining user has at least ``k_user`` and every remaining item at least ``k_item``."""
from __future__ import annotations

import numpy as np


def kcore_mask(users: np.ndarray, items: np.ndarray, k_user: int, k_item: int | None = None,
               max_rounds: int = 1000) -> tuple[np.ndarray, int]:
    """Boolean mask of the interactions that survive, and the number of filtering rounds it took.

    ``users`` and ``items`` are integer codes (any range); ``k <= 1`` keeps everything on that side.
    Each round drops every interaction whose user or item is below its threshold, then recounts; the loop
    stops when a round drops nothing (a fixed point: the result no longer depends on the order of removal).
    """
    k_item = k_user if k_item is None else k_item
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    keep = np.ones(users.shape[0], dtype=bool)
    if users.size == 0:
        return keep, 0
    n_u, n_i = int(users.max()) + 1, int(items.max()) + 1
    for round_ in range(1, max_rounds + 1):
        u_count = np.bincount(users[keep], minlength=n_u)
        i_count = np.bincount(items[keep], minlength=n_i)
        bad = keep & ((u_count[users] < k_user) | (i_count[items] < k_item))
        if not bad.any():
            return keep, round_ - 1
        keep &= ~bad
    raise RuntimeError(f"k-core filtering did not converge in {max_rounds} rounds")


def encode(values) -> tuple[np.ndarray, np.ndarray]:
    """(codes, uniques): ``uniques[codes] == values``, uniques sorted (numerically for numbers, else as text)."""
    array = np.asarray(values)
    uniques, codes = np.unique(array, return_inverse=True)
    return codes.astype(np.int64).reshape(-1), uniques
