"""LATTICE (Zhang et al., ACM MM 2021): mining latent item-item structures, on a LightGCN backbone."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..graphs import ConstantLGConv, item_matrix, row_degree_norm, to_adjacency, weighted_knn, propagate_mean
from ..graphs.knn import TIE_RULE
from .base import Recommender
from .layers import bpr_loss, feature_projections, half_squared_norm, id_table, take_rows


class LATTICE(Recommender):
    r"""Per-modality kNN item graphs from the raw features, a learned kNN structure from projected features,
    mixed by softmax modality weights; one convolution on the item graph added to a LightGCN backbone.

    From the `"Mining Latent Structures for Multimedia Recommendation" <https://arxiv.org/abs/2104.09036>`_
    paper (ACM MM 2021).

    .. math::
        \mathbf S^m_{ij} = \cos(\mathbf x^m_i, \mathbf x^m_j)\ [j\in\mathrm{kNN}(i)],\qquad
        \hat{\mathbf S}^m_{ij} = \cos(\mathbf W_m \mathbf x^m_i + \mathbf b_m, \cdot)\ [\text{top-}k]

        \mathbf A = (1-\lambda)\,\mathcal N\big(\textstyle\sum_m \alpha_m \hat{\mathbf S}^m\big)
            + \lambda \textstyle\sum_m \alpha_m \mathcal N(\mathbf S^m),\quad
        \boldsymbol\alpha = \mathrm{softmax}(\mathbf w),\quad \mathcal N(\mathbf S) = \mathbf D^{-1/2}\mathbf S\mathbf D^{-1/2}

        \mathbf h = \mathbf A^{L_m}\mathbf e^{item},\quad
        \mathbf E = \mathrm{mean}_{l\le L}\,\big(\mathbf D^{-1}(\mathbf R + \mathbf I)\big)^l [\mathbf e^{user};\mathbf e^{item}],
        \quad \hat y_{ui} = \mathbf E_u^\top(\mathbf E_i + \mathbf h_i/\lVert\mathbf h_i\rVert)

        \mathcal L = \mathrm{BPR} + \mu\,\tfrac12(\lVert\mathbf u\rVert^2 + \lVert\mathbf i^+\rVert^2 + \lVert\mathbf i^-\rVert^2)/B

    D in N(.) holds row sums (kNN graphs are directed). As in MMRec: the raw-feature graphs S^m are built
    once; the learned part is rebuilt (with gradient to W_m, b_m, w and the fine-tuned feature tables x^m)
    on the first batch of every epoch and reused, detached, by the epoch's other batches; evaluation
    rebuilds it from the current weights. The user-item graph is row-normalised with self-loops (MMRec's
    LATTICE, unlike its other models). Sparse throughout: kNN by row chunks, then n_items x k edges per
    graph, so the item graph costs O(n_items k) memory (MMRec builds dense n_items x n_items matrices).
    Shapes: e^user (n_users, d), e^item (n_items, d), x^m (n_items, F_m), W_m (d_f, F_m), A (n_items, n_items).

    Args:
        embedding_size (int): width d of the user and item ID embeddings. (default: 64)
        feat_embed_dim (int): width d_f of the projected features the learned graphs are built from.
            (default: 64)
        n_ui_layers (int): L, layers on the user-item graph. (default: 2)
        n_layers (int): L_m, convolutions on the item graph A. (default: 1)
        knn_k (int): neighbours per item in the raw and the learned kNN graphs. (default: 10)
        lambda_coeff (float): λ, weight of the raw-feature graphs in A (1 - λ on the learned one).
            (default: 0.9)
        reg_weight (float): μ, weight of the half squared norm penalty. (default: 0.0)
        learning_rate (float): Adam's learning rate, read by the trainer in place of the training settings'
            ``lr``. (default: 0.001)
        lr_decay (list): (gamma, every): the trainer's learning rate after epoch e is lr * gamma ** (e / every),
            MMRec's ``learning_rate_scheduler``. (default: [0.96, 50])
    """

    modalities = ("text", "image")
    # search: 16 points, MMRec's LATTICE.yaml grid (reg_weight 4 x learning_rate 4); the learning rate decays
    # by 0.96 every 50 epochs (its learning_rate_scheduler)
    defaults = {"embedding_size": 64, "feat_embed_dim": 64, "n_ui_layers": 2, "n_layers": 1, "knn_k": 10,
                "lambda_coeff": 0.9, "reg_weight": 0.0, "learning_rate": 1e-3, "lr_decay": [0.96, 50]}
    search_space = {"reg_weight": [0.0, 1e-5, 1e-4, 1e-3], "learning_rate": [0.0001, 0.0005, 0.001, 0.005]}
    departures = (TIE_RULE,)

    def __init__(self, graph, features, **hparams):
        super().__init__(graph, features, **hparams)
        hp = self.hparams
        d = hp["embedding_size"]
        self.user_embedding, self.item_embedding = id_table(self.n_users, d), id_table(self.n_items, d)
        self.register_features(features, trainable=True)  # MMRec's order: weight[0] is the image's
        self.projections = feature_projections(features, self.used, hp["feat_embed_dim"])
        for m in self.used:  # S^m: (edges, normalised weights) of the raw features' kNN graph
            edge_index, weight = weighted_knn(features[m], hp["knn_k"])
            self.register_graph(f"{m}_knn_index", edge_index)
            self.register_graph(f"{m}_knn_weight", row_degree_norm(edge_index, weight, self.n_items))
        self.modal_weight = nn.Parameter(torch.full((len(self.used),), 0.5))
        self.register_graph("adj", self._user_item_adjacency(graph))
        self.conv = ConstantLGConv()
        self.register_graph("item_adj", None)  # the epoch's item graph, detached, as CSR
        self.rebuild = True

    @staticmethod
    def _user_item_adjacency(graph) -> Tensor:
        """D^-1 (A + I) over users and items: each node averages itself and its neighbours."""
        loops = torch.arange(graph.num_nodes, device=graph.device)
        edge_index = torch.cat([graph.edge_index, torch.stack([loops, loops])], dim=1)
        deg = torch.bincount(edge_index[1], minlength=graph.num_nodes).float()
        return to_adjacency(edge_index, 1.0 / deg[edge_index[1]], graph.num_nodes)

    def _item_graph(self) -> tuple[Tensor, Tensor]:
        """(edge_index, weight) of A from the current projections; differentiable in the weights."""
        hp = self.hparams
        alpha = F.softmax(self.modal_weight, dim=0) if len(self.used) > 1 else torch.ones_like(self.modal_weight)
        learned_index, learned_weight, edges, weights = [], [], [], []
        for a, m in zip(alpha, self.used):
            projected = self.projections[m](self.feature(m))
            edge_index, weight = weighted_knn(projected, hp["knn_k"])
            learned_index.append(edge_index)
            learned_weight.append(a * weight)
            edges.append(getattr(self, f"{m}_knn_index"))
            weights.append(hp["lambda_coeff"] * a * getattr(self, f"{m}_knn_weight"))
        learned_index = torch.cat(learned_index, dim=1)
        learned = row_degree_norm(learned_index, torch.cat(learned_weight), self.n_items)
        edges.append(learned_index)
        weights.append((1.0 - hp["lambda_coeff"]) * learned)
        return torch.cat(edges, dim=1), torch.cat(weights)

    def on_epoch_start(self, epoch: int) -> None:
        self.rebuild = True

    def _item_term(self, differentiable: bool) -> Tensor:
        """h = A^{L_m} e^item, with A rebuilt (and differentiable) or the epoch's cached, detached A."""
        if differentiable or self.item_adj is None:
            with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
                edge_index, weight = self._item_graph()
            self.item_adj = item_matrix(edge_index, weight.detach(), self.n_items)
        h = self.item_embedding
        for _ in range(self.hparams["n_layers"]):
            if differentiable:  # gather-scatter keeps the gradient to the edge weights
                h = torch.zeros_like(h).index_add(0, edge_index[0], weight.unsqueeze(1) * h[edge_index[1]])
            else:
                h = self.conv(h, self.item_adj)
        return h

    def forward_embeddings(self, differentiable: bool) -> tuple[Tensor, Tensor]:
        h = self._item_term(differentiable)
        out = propagate_mean(self.conv, torch.cat([self.user_embedding, self.item_embedding]), self.adj,
                             self.hparams["n_ui_layers"])
        return out[: self.n_users], out[self.n_users :] + F.normalize(h, dim=1)

    def final_embeddings(self):
        self.item_adj = None  # MMRec rebuilds the learned graph for every evaluation
        return self.forward_embeddings(differentiable=False)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        user_emb, item_emb = self.forward_embeddings(differentiable=self.rebuild)
        self.rebuild = False
        u, (p, n) = user_emb[users], take_rows(item_emb, pos, neg)
        return bpr_loss(u, p, n) + self.hparams["reg_weight"] * half_squared_norm(u, p, n)
