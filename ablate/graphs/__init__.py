"""Graphs the models propagate over, built once per trial (PyG conventions: `edge_index` is (2, E)).

- `InteractionGraph`: the training user-item graph, as a homogeneous graph over N = n_users + n_items nodes
  (item j is node n_users + j), with its symmetric normalisation cached.
- `knn_graph`: an item-item k-nearest-neighbour graph from features (cosine), safe on degenerate features.
- `propagate_mean`: LightGCN's layer mean, x, Ax, ..., A^L x; `spmm` / `ConstantLGConv`: products with a
  constant sparse adjacency whose backward reuses a cached transpose; `EdgeSet`: per-edge dot products and
  weighted aggregation for graphs whose edge weights are learned (GRCN), without E x d intermediates.
- `sym_norm`, `to_adjacency`: normalise edge weights and pack them as a sparse matrix for `LGConv`/`spmm`.

Adjacencies are pre-normalised once and kept as sparse CSR matrices; a constant one is multiplied through
`spmm`, whose backward reuses a transpose built once (none for a symmetric one). Forward + backward of two
64-d layers on the Amazon Baby graph, 2 threads, median of 3, other work on the machine: `spmm` 0.017 s,
`ConstantLGConv` on the symmetric adjacency 0.020 s, `torch.sparse.mm` over CSR 0.050 s / COO 0.058 s,
`LGConv` over CSR 0.051 s, `LGConv` over `edge_index` + weights 0.230 s; a learned per-edge weighting by
gather + scatter 0.318 s against `EdgeSet.aggregate` 0.023 s. `python benchmarks/propagation.py` measures
it again.
"""
from .interaction import DegreePrunedEdges, InteractionGraph, sym_norm, to_adjacency
from .item_item import cooccurrence_topk, cosine_rows, item_matrix, row_degree_norm, weighted_knn
from .knn import knn_graph, knn_normalized_adjacency, mixed_knn_adjacency
from .propagation import ConstantLGConv, EdgeSet, declare_symmetric, propagate_mean, spmm, transposed
from .user_user import sample_user_graph, user_cooccurrence_pairs, user_cooccurrence_topk

__all__ = ["DegreePrunedEdges", "InteractionGraph", "knn_graph", "knn_normalized_adjacency", "mixed_knn_adjacency", "sym_norm", "to_adjacency",
           "cooccurrence_topk", "cosine_rows", "item_matrix", "row_degree_norm", "weighted_knn",
           "sample_user_graph", "user_cooccurrence_pairs", "user_cooccurrence_topk", "propagate_mean",
           "ConstantLGConv", "EdgeSet", "declare_symmetric", "spmm", "transposed"]
