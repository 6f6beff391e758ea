"""Item-item k-nearest-neighbour graphs from item features (cosine similarity), computed in row chunks.

Degenerate features are defined, never NaN: an all-zero row has similarity 0 to every item, and ties
(all rows equal, all zeros) are broken towards the item itself, then towards lower item ids, so a
constant feature matrix gives a deterministic, finite graph.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .interaction import sym_norm, to_adjacency
from .propagation import to_csr

TIE_RULE = ("kNN ties (constant or all-zero features under a constant or zero fill) go to the item itself, then "
            "to lower item ids, and an all-zero row has similarity 0 (MMRec's top-k picks tied hub items, and "
            "its cosine of a zero row is NaN in LATTICE, MGCN and SMORE)")


def knn_graph(features: Tensor, k: int, chunk_size: int = 2048) -> Tensor:
    """edge_index (2, n_items * k) of each item's top-k cosine neighbours (itself included, as MMRec's).

    Edge (i -> j) for j in topk(i); row chunks keep memory at chunk_size x n_items.
    """
    n = features.shape[0]
    k = min(k, n)
    x = features.to(torch.float32)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    neighbours = []
    for start in range(0, n, chunk_size):
        rows = torch.arange(start, min(n, start + chunk_size), device=x.device)
        sim = x[rows] @ x.T
        # ties go to the item itself, then to lower ids (a tiny tilt far below any real similarity gap)
        tilt = torch.arange(n, device=x.device, dtype=torch.float64) * (1e-9 / max(n, 1))
        sim = sim.to(torch.float64) - tilt
        sim[torch.arange(rows.numel(), device=x.device), rows] += 1e-6
        neighbours.append(sim.topk(k, dim=1).indices)
    dst = torch.cat(neighbours)
    src = torch.arange(n, device=x.device).repeat_interleave(k)
    return torch.stack([src, dst.reshape(-1)])


def knn_normalized_adjacency(features: Tensor, k: int) -> Tensor:
    """FREEDOM's and LATTICE's item graph: binary kNN edges, D^-1/2 A D^-1/2 with row degrees (n, n) CSR."""
    edge_index = knn_graph(features, k)
    # MMRec normalises the directed kNN graph with its row sums on both sides
    weight = sym_norm(edge_index, features.shape[0])
    # aggregation h_i = sum_j A[i, j] h_j over i's neighbours j: messages flow j -> i
    return to_adjacency(edge_index.flip(0), weight, features.shape[0])


def mixed_knn_adjacency(features: dict[str, Tensor], k: int, image_weight: float) -> Tensor:
    """FREEDOM's, DRAGON's and PGL's frozen item graph S = α S_image + (1 - α) S_text of the per-modality
    `knn_normalized_adjacency` graphs (n, n) CSR, α = `image_weight`; with one modality, its graph alone."""
    graphs = {m: knn_normalized_adjacency(x, k) for m, x in features.items()}
    if len(graphs) == 1:
        return next(iter(graphs.values()))
    mixed = image_weight * graphs["image"].to_sparse_coo() + (1.0 - image_weight) * graphs["text"].to_sparse_coo()
    return to_csr(mixed)
