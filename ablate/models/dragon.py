"""DRAGON (Zhou et al., ECAI 2023): dual representation learning over heterogeneous and homogeneous graphs."""
from __future__ import annotations

import torch

from ..graphs import spmm
from ..graphs.knn import TIE_RULE
from .layers import DualGraphRecommender, frozen_item_graph


class DRAGON(DualGraphRecommender):
    r"""Per-modality user-item GCNs, concatenated, plus a user co-occurrence graph and a frozen item kNN graph.

    From the `"Enhancing Dyadic Relations with Homogeneous Graphs for Multimodal Recommendation"
    <https://arxiv.org/abs/2301.12097>`_ paper (ECAI 2023).

    .. math::
        \mathbf r^m = \mathrm{ModalityGCN}_m \;(\text{as DualGNN}), \qquad
        \mathbf u' = [\,w_{u,1}\mathbf r^{v}_u \,;\, w_{u,2}\mathbf r^{t}_u\,], \qquad
        \mathbf i' = [\,\mathbf r^{v}_i \,;\, \mathbf r^{t}_i\,]

        \mathbf u = \mathbf u' + \sum_{v \in N_k(u)} \mathrm{softmax}_v(c_{uv})\,\mathbf u'_v, \qquad
        \mathbf i = \mathbf i' + \mathbf S^{L_m}\,\mathbf i', \qquad
        \mathbf S = \alpha\,\mathrm{kNN}(\mathbf X^{v}) + (1-\alpha)\,\mathrm{kNN}(\mathbf X^{t})

    N_k(u): u's top-k (k = ``user_k``) co-interacting users, padded by random redraws per epoch (as DualGNN;
    built here from the training graph, MMRec reads a pre-made file). kNN: top-``knn_k`` cosine neighbours,
    binary, D^-1/2 A D^-1/2, built once from the initial features and frozen; α = ``mm_image_weight``.
    w_u (n_users, 2) is a learned per-user modality weight. Scores u·i.
    Loss: -mean log2 σ(u·i+ − u·i−) + λ(mean p^m_u² per modality + mean w_u²).

    Follows MMRec: the feature tables MMRec wraps as fine-tuned embeddings (and their projections) never
    reach the output there, so they are left out; the GCNs read the frozen features. MMRec's per-modality
    item dropout is computed but never applied, and absent here. With one modality only, u' = r^m_u and
    i' = r^m_i. Scores use the current epoch's sampled user graph, as MMRec (kept in the model's state).
    Shapes: X^m (n_items, F_m); r^m (n_users + n_items, d); u, i: M·d with M modalities;
    S (n_items, n_items) sparse CSR.

    Args:
        embedding_size (int): width d of the preferences and of each modality's representation. (default: 64)
        n_layers (int): L, propagation layers of each modality GCN. (default: 2)
        n_mm_layers (int): L_m, propagation layers on the item kNN graph S. (default: 1)
        knn_k (int): neighbours per item in each modality's kNN graph. (default: 10)
        mm_image_weight (float): α, weight of the image kNN graph in S. (default: 0.1)
        user_k (int): k, co-interacting users kept per user. (default: 40)
        reg_weight (float): λ, weight of the preference and fusion-weight penalty. (default: 0.001)
        learning_rate (float): Adam's learning rate, read by the trainer in place of the training settings'
            ``lr``. (default: 0.001)
    """

    modalities = ("text", "image")
    defaults = {"embedding_size": 64, "n_layers": 2, "n_mm_layers": 1, "knn_k": 10, "mm_image_weight": 0.1,
                "user_k": 40, "reg_weight": 1e-3, "learning_rate": 1e-3}
    # search: 25 points, MMRec's DRAGON.yaml grid (reg_weight 5 x learning_rate 5; its aggr_mode has the one
    # value "add", the only mode here)
    search_space = {"reg_weight": [0.1, 0.01, 0.001, 0.0001, 0.00001],
                    "learning_rate": [0.1, 0.01, 0.001, 0.0001, 0.00001]}
    departures = ("the user co-occurrence graph is built from the training interactions; MMRec reads a pre-made file",
                  TIE_RULE)

    def __init__(self, graph, features, **hparams):
        super().__init__(graph, features, **hparams)
        self.register_graph("item_adj", frozen_item_graph(features, self.used, self.hparams))
        self.on_epoch_start(0)

    def final_embeddings(self):
        reps = self.modality_reps()
        users = [r[: self.n_users] for r in reps]
        if len(users) == 2:
            users = [users[0] * self.weight_u[:, 0], users[1] * self.weight_u[:, 1]]
        users = torch.cat(users, dim=1)
        items = torch.cat([r[self.n_users :] for r in reps], dim=1)
        h = items
        for _ in range(self.hparams["n_mm_layers"]):
            h = spmm(self.item_adj, h)
        return self.user_graph(users), items + h
