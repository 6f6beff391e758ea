"""FREEDOM (Zhou and Shen, ACM MM 2023): freezing and denoising graph structures."""
from __future__ import annotations

import torch
from torch import Tensor

from ..graphs import ConstantLGConv, DegreePrunedEdges, propagate_mean
from ..graphs.knn import TIE_RULE
from .base import Recommender
from .layers import bpr_loss, feature_projections, frozen_item_graph, id_table, take_rows


class FREEDOM(Recommender):
    r"""LightGCN on a degree-pruned user-item graph, plus a *frozen* item-item graph from the features.

    From the `"A Tale of Two Graphs: Freezing and Denoising Graph Structures for Multimodal Recommendation"
    <https://arxiv.org/abs/2211.06924>`_ paper (ACM MM 2023).

    .. math::
        \mathbf S = \alpha\,\mathrm{kNN}(\mathbf X^{img}) + (1-\alpha)\,\mathrm{kNN}(\mathbf X^{txt}),
        \qquad \mathbf h = \mathbf S^{L_m}\,\mathbf e^{item}

        \mathbf E = \mathrm{mean}_{l \le L}\,(\tilde{\mathbf A}_{drop})^{l}\,[\mathbf e^{user};\mathbf e^{item}],
        \qquad \hat y_{ui} = \mathbf E_u^\top(\mathbf E_i + \mathbf h_i)

        \mathcal L = \mathrm{BPR}(\mathbf E_u, \mathbf E_i + \mathbf h_i)
          + \lambda \sum_{m} \mathrm{BPR}(\mathbf E_u, \mathbf W_m \mathbf x^m_i + \mathbf b_m)

    kNN graphs: top-``knn_k`` cosine neighbours, binary, D^-1/2 A D^-1/2; built once from the initial features
    and frozen. Each epoch keeps a share 1 - ``dropout`` of the training edges, sampled without replacement
    with probability proportional to 1 / sqrt(d_u d_i) (degree-sensitive pruning); evaluation uses all edges.
    The feature tables x^m are fine-tuned (MMRec: ``nn.Embedding.from_pretrained(freeze=False)``); they only
    enter the λ-weighted BPR terms, projected once for each distinct item a batch touches (same values and
    gradients as projecting the whole table, or each positive and negative apart).
    Shapes: e^user (n_users, d), e^item (n_items, d), x^m (n_items, F_m), W_m (d_f, F_m), S (n_items, n_items).

    Args:
        embedding_size (int): width d of the user and item ID embeddings. (default: 64)
        feat_embed_dim (int): width d_f of the feature projections W_m. (default: 64)
        knn_k (int): neighbours per item in each modality's kNN graph. (default: 10)
        mm_image_weight (float): α, weight of the image kNN graph in S. (default: 0.1)
        n_mm_layers (int): L_m, propagation layers on S. (default: 1)
        n_ui_layers (int): L, propagation layers on the user-item graph. (default: 2)
        dropout (float): share of the training edges pruned every epoch. (default: 0.8)
        reg_weight (float): λ, weight of the feature BPR terms. (default: 0.0001)
    """

    modalities = ("text", "image")
    defaults = {"embedding_size": 64, "feat_embed_dim": 64, "knn_k": 10, "mm_image_weight": 0.1,
                "n_mm_layers": 1, "n_ui_layers": 2, "dropout": 0.8, "reg_weight": 1e-4}
    # search: 8 points, MMRec's FREEDOM.yaml grid (dropout 2 x reg_weight 4)
    search_space = {"dropout": [0.8, 0.9], "reg_weight": [0.0, 1e-5, 1e-4, 1e-3]}
    departures = (TIE_RULE,)

    def __init__(self, graph, features, **hparams):
        super().__init__(graph, features, **hparams)
        hp = self.hparams
        d = hp["embedding_size"]
        self.user_embedding, self.item_embedding = id_table(self.n_users, d), id_table(self.n_items, d)
        self.register_features(features, trainable=True)
        self.projections = feature_projections(features, self.used, hp["feat_embed_dim"])
        self.register_graph("item_adj", frozen_item_graph(features, self.used, hp))  # S
        # the training graph: full for evaluation, degree-pruned per epoch for training
        self.register_graph("adj", graph.normalized_adjacency(graph.users, graph.items, eps=1e-7))
        self.register_graph("train_adj", self.adj)
        self.pruning = DegreePrunedEdges(graph)
        self.conv = ConstantLGConv()

    def on_epoch_start(self, epoch: int) -> None:
        keep = int(self.pruning.num_edges * (1.0 - self.hparams["dropout"]))
        self.train_adj = self.adj if keep >= self.pruning.num_edges else self.pruning.sample(keep)

    def propagate(self, adj: Tensor) -> tuple[Tensor, Tensor]:
        h = self.item_embedding
        for _ in range(self.hparams["n_mm_layers"]):
            h = self.conv(h, self.item_adj)
        x = torch.cat([self.user_embedding, self.item_embedding])
        out = propagate_mean(self.conv, x, adj, self.hparams["n_ui_layers"])
        return out[: self.n_users], out[self.n_users :] + h

    def final_embeddings(self):
        return self.propagate(self.adj)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        user_emb, item_emb = self.propagate(self.train_adj)
        u = user_emb[users]
        loss = bpr_loss(u, *take_rows(item_emb, pos, neg))
        items, inverse = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        for m in self.used:
            table, project = self.feature(m), self.projections[m]
            p, n = project(table.index_select(0, items))[inverse].split(pos.numel())
            loss = loss + self.hparams["reg_weight"] * bpr_loss(u, p, n)
        return loss
