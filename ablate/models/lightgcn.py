"""LightGCN (He et al., SIGIR 2020), ID only, on PyG's `LGConv` (its symmetric-adjacency form)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..graphs import ConstantLGConv, propagate_mean
from .base import Recommender
from .layers import bpr_loss, embedding_norm_loss, id_table, take_rows


class LightGCN(Recommender):
    r"""Linear propagation over the normalised user-item graph, layers averaged.

    From the `"LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation"
    <https://arxiv.org/abs/2002.02126>`_ paper (SIGIR 2020).

    .. math::
        \mathbf E^{(l+1)} = \tilde{\mathbf A}\,\mathbf E^{(l)}, \quad
        \tilde{\mathbf A} = \mathbf D^{-1/2}\mathbf A\mathbf D^{-1/2}, \quad
        \mathbf E = \frac{1}{L+1}\sum_{l=0}^{L}\mathbf E^{(l)}

    BPR loss on E, with the norm penalty on the layer-0 (ego) embeddings, as MMRec.
    Shapes: E^(l) (n_users + n_items, d); Ã (N, N) sparse, pre-normalised once.

    Args:
        embedding_size (int): width d of the user and item ID embeddings. (default: 64)
        n_layers (int): L, propagation layers. (default: 2)
        reg_weight (float): λ, weight of the norm penalty on the layer-0 embeddings. (default: 0.0001)
    """

    defaults = {"embedding_size": 64, "n_layers": 2, "reg_weight": 1e-4}
    # search: 20 points, MMRec's LightGCN.yaml grid (n_layers 4 x reg_weight 5)
    search_space = {"n_layers": [1, 2, 3, 4], "reg_weight": [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]}

    def __init__(self, graph, features, **hparams):
        super().__init__(graph, features, **hparams)
        d = self.hparams["embedding_size"]
        self.user_embedding, self.item_embedding = id_table(self.n_users, d), id_table(self.n_items, d)
        self.conv = ConstantLGConv()
        self.register_graph("adj", graph.norm_adj)

    def propagate(self) -> Tensor:
        """E (n_users + n_items, d): users, then items."""
        x = torch.cat([self.user_embedding, self.item_embedding])
        return propagate_mean(self.conv, x, self.adj, self.hparams["n_layers"])

    def final_embeddings(self):
        return self.split_nodes(self.propagate())

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        u, i, j = take_rows(self.propagate(), users, pos + self.n_users, neg + self.n_users)
        reg = embedding_norm_loss(self.user_embedding[users], *take_rows(self.item_embedding, pos, neg))
        return bpr_loss(u, i, j) + self.hparams["reg_weight"] * reg
