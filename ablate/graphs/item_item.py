"""Item-item graphs beyond binary kNN: similarity-weighted kNN, degree normalisation, co-occurrence.

Graphs are returned as (edge_index (2, E), weight (E,)) with edge_index[0] = the row item i and
edge_index[1] = its neighbour j, i.e. the sparse matrix A[i, j] = weight and (A @ x)_i = sum_j A[i, j] x_j.
`item_matrix` packs them as CSR for propagation. Nothing here builds a dense n_items x n_items matrix:
similarities are computed in row chunks and only the top-k of each row is kept.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .interaction import to_adjacency
from .knn import knn_graph


def cosine_rows(features: Tensor) -> Tensor:
    """Rows scaled to unit length; an all-zero row stays zero (cosine 0 to everything, never NaN)."""
    return features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)


def weighted_knn(features: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Each item's top-k cosine neighbours (itself included) weighted by the cosine (MMRec's LATTICE/MGCN kNN).

    The neighbour choice is made without gradient (ties as in `knn_graph`); the weights cos(x_i, x_j) are
    recomputed for the chosen pairs only, so they carry gradient to `features` when it has one (the same
    values and gradients as MMRec's dense top-k of the full similarity matrix, at n_items x k memory).
    """
    with torch.no_grad():
        edge_index = knn_graph(features.detach(), k)
    x = cosine_rows(features)
    # in chunks of edges: one gather of all n_items * k edges of 4096-d features would be 1.2 GB on Baby
    step = max(1, 2**24 // max(1, x.shape[1]))
    weight = torch.cat([(x[edge_index[0, s : s + step]] * x[edge_index[1, s : s + step]]).sum(-1)
                        for s in range(0, edge_index.shape[1], step)])
    return edge_index, weight


def row_degree_norm(edge_index: Tensor, weight: Tensor, n: int) -> Tensor:
    """MMRec's `compute_normalized_laplacian` on a sparse graph: w_ij d_i^-1/2 d_j^-1/2, d = row sums of A.

    Duplicate (i, j) pairs count as their sum. A row whose sum is not positive gets d^-1/2 = 0 (MMRec only
    zeroes infinities; a negative row sum, possible with negative cosines, would be NaN there).
    """
    deg = torch.zeros(n, dtype=weight.dtype, device=weight.device).index_add(0, edge_index[0], weight)
    inv_sqrt = torch.where(deg > 0, deg.clamp_min(1e-30).pow(-0.5), torch.zeros_like(deg))
    return inv_sqrt[edge_index[0]] * weight * inv_sqrt[edge_index[1]]


def item_matrix(edge_index: Tensor, weight: Tensor, n: int) -> Tensor:
    """(n, n) CSR with A[i, j] = weight (duplicates summed), for `ConstantLGConv` / `spmm`."""
    return to_adjacency(edge_index.flip(0), weight, n)


def cooccurrence_topk(users: Tensor, items: Tensor, n_items: int, k: int, min_count: int = 1) -> tuple[Tensor, Tensor]:
    """Each item's top-k co-interacted items by the number of users they share (at least `min_count`).

    C = R^T R with the diagonal removed, R the (n_users, n_items) binary interaction matrix; entries below
    `min_count` are dropped; per row, the k largest counts are kept (ties to the lower item id).
    Returns (edge_index (2, E) rows i / neighbours j, counts (E,) float).
    """
    device = items.device
    n_users = int(users.max()) + 1 if users.numel() else 0
    r = torch.sparse_coo_tensor(torch.stack([users, items]), torch.ones(users.numel(), device=device),
                                (n_users, n_items), check_invariants=False).coalesce()
    # duplicates count once
    r = torch.sparse_coo_tensor(r.indices(), torch.ones_like(r.values()), r.shape, check_invariants=False)
    with warnings.catch_warnings():  # "sparse CSR support is in beta", raised inside sparse.mm
        warnings.simplefilter("ignore", UserWarning)
        c = torch.sparse.mm(r.t().coalesce(), r).coalesce()
    row, col = c.indices()
    count = c.values()
    keep = (row != col) & (count >= min_count)
    row, col, count = row[keep], col[keep], count[keep]
    # order edges by (row asc, count desc, col asc); an edge's rank in its row is its position minus the row's start
    order = torch.argsort(col, stable=True)
    order = order[torch.argsort(-count[order], stable=True)]
    order = order[torch.argsort(row[order], stable=True)]
    row, col, count = row[order], col[order], count[order]
    starts = torch.searchsorted(row, torch.arange(n_items, device=device))
    rank = torch.arange(row.numel(), device=device) - starts[row]
    top = rank < k
    return torch.stack([row[top], col[top]]), count[top].to(torch.float32)
