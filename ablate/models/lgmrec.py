"""LGMRec (Guo et al., AAAI 2024): local and global graph learning for multimodal recommendation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..graphs import ConstantLGConv, propagate_mean, spmm
from .base import Recommender
from .layers import bpr_loss, embedding_norm_loss, id_table, info_nce, take_rows


class LGMRec(Recommender):
    r"""Collaborative LightGCN embeddings + modality graph embeddings (local) + learnable hypergraph (global).

    From the `"LGMRec: Local and Global Graph Learning for Multimodal Recommendation"
    <https://arxiv.org/abs/2312.16400>`_ paper (AAAI 2024).

    .. math::
        \mathbf E^{c} = \mathrm{mean}_{l \le L_{ui}}\,\tilde{\mathbf A}^{l}[\mathbf e^{user};\mathbf e^{item}],
        \qquad
        \mathbf E^{m} = \tilde{\mathbf A}^{L_{mm}}\,[\,\mathbf D_u^{-1}\mathbf R\,\mathbf X^m\mathbf W^m ;\;
                                                     \mathbf X^m\mathbf W^m\,]

        \mathbf H^m_i = \mathrm{GumbelSoftmax}_\tau(\mathbf X^m\mathbf V^m), \quad
        \mathbf H^m_u = \mathrm{GumbelSoftmax}_\tau(\mathbf R\,\mathbf X^m\mathbf V^m), \quad
        \boldsymbol\Lambda^m = \bar{\mathbf H}^{m\top}_i\mathbf E^{c}_{item}, \quad
        \mathbf G^m = [\bar{\mathbf H}^m_u\boldsymbol\Lambda^m ;\; \bar{\mathbf H}^m_i\boldsymbol\Lambda^m]

        \mathbf E = \mathbf E^{c} + \sum_m \mathrm{normalize}(\mathbf E^{m})
            + \alpha\,\mathrm{normalize}\big(\textstyle\sum_m \mathbf G^m\big)

    R the (n_users, n_items) 0/1 interaction matrix, Ã the normalised user-item graph, H̄ = dropout(H) with
    keep probability ``keep_rate`` (training only), τ = 0.2, ``hyper_num`` hyperedges, ``n_hyper_layer``
    rounds of Λ = H̄_i^T I, I = H̄_i Λ (users from the last round). Features X^m are frozen.
    Loss: BPR + ``cl_weight`` · (InfoNCE between the image and text hypergraph embeddings of the batch users,
    and of the positive items, τ = 0.2, summed over the batch) + ``reg_weight`` · (norms of the batch's final
    embeddings)/B.

    As MMRec, Gumbel noise is drawn at evaluation too (only the dropout is off); the trainer seeds every
    evaluation alike, so the scores are a function of the model's state.
    MMRec needs both modalities; with one, the contrastive term (between two modalities) is dropped.
    X^m W^m and X^m V^m are one product with the concatenated [W^m V^m] (same values, one pass over X^m).
    Shapes: X^m (n_items, F_m), W^m (F_m, d), V^m (F_m, hyper_num), E (n_users + n_items, d).

    Args:
        embedding_size (int): width d of the user and item ID embeddings. (default: 64)
        feat_embed_dim (int): width of the projected features; must equal embedding_size. (default: 64)
        n_ui_layers (int): L_ui, propagation layers of the collaborative embeddings. (default: 2)
        n_mm_layers (int): L_mm, propagation layers of the modality embeddings. (default: 2)
        n_hyper_layer (int): rounds of hypergraph message passing. (default: 1)
        hyper_num (int): number of hyperedges. (default: 4)
        keep_rate (float): keep probability of the hyperedge-membership dropout. (default: 0.5)
        alpha (float): α, weight of the global (hypergraph) embeddings. (default: 0.3)
        cl_weight (float): weight of the hypergraph contrastive terms. (default: 0.0001)
        reg_weight (float): weight of the norm penalty. (default: 1e-06)
    """

    modalities = ("text", "image")
    defaults = {"embedding_size": 64, "feat_embed_dim": 64, "n_ui_layers": 2, "n_mm_layers": 2,
                "n_hyper_layer": 1, "hyper_num": 4, "keep_rate": 0.5, "alpha": 0.3, "cl_weight": 1e-4,
                "reg_weight": 1e-6}
    # search: 1 point, MMRec's grid (one value each: its Baby setting; its config lists Sports: 1, 4, 0.4, 0.6 and Clothing: 2, 64, 0.2, 0.2
    # for n_hyper_layer, hyper_num, keep_rate, alpha)
    search_space = {"n_ui_layers": [2], "n_mm_layers": [2], "n_hyper_layer": [1], "hyper_num": [4],
                    "keep_rate": [0.5], "alpha": [0.3], "cl_weight": [1e-4], "reg_weight": [1e-6]}
    departures = ("the Gumbel noise of an evaluation is drawn under a fixed seed; MMRec draws it from the running "
                  "random stream",)
    tau = 0.2

    def __init__(self, graph, features, **hparams):
        super().__init__(graph, features, **hparams)
        hp = self.hparams
        d = hp["embedding_size"]
        if hp["feat_embed_dim"] != d:
            raise ValueError("LGMRec adds modality and ID embeddings: feat_embed_dim must equal embedding_size")
        self.user_embedding, self.item_embedding = id_table(self.n_users, d), id_table(self.n_items, d)
        self.register_features(features)
        self.transforms = nn.ParameterDict()
        for m in self.used:
            trs = nn.init.xavier_uniform_(torch.empty(features[m].shape[1], hp["feat_embed_dim"]))
            hyper = nn.init.xavier_uniform_(torch.empty(features[m].shape[1], hp["hyper_num"]))
            self.transforms[m] = nn.Parameter(torch.cat([trs, hyper], dim=1))
        self.register_graph("adj", graph.normalized_adjacency(graph.users, graph.items, eps=1e-7))
        self.register_graph("r", graph.interaction_matrix)  # (n_users, n_items) 0/1
        deg = torch.bincount(graph.users, minlength=self.n_users).float()
        self.register_graph("inv_user_degree", (1.0 / (deg + 1e-7)).unsqueeze(1))
        self.drop = nn.Dropout(p=1.0 - hp["keep_rate"])
        self.conv = ConstantLGConv()

    def forward(self) -> tuple[Tensor, Tensor, dict[str, tuple[Tensor, Tensor]]]:
        hp = self.hparams
        cge = propagate_mean(self.conv, torch.cat([self.user_embedding, self.item_embedding]), self.adj,
                             hp["n_ui_layers"])
        cge_items = cge[self.n_users :]
        local, hyper_embs = cge, {}
        ghe = 0
        for m in self.used:
            projected = self.feature(m) @ self.transforms[m]
            item_feats, item_hyper = projected[:, : hp["feat_embed_dim"]], projected[:, hp["feat_embed_dim"] :]
            # local: modality graph embedding (users start as the mean of their items' features)
            mge = torch.cat([spmm(self.r, item_feats) * self.inv_user_degree, item_feats])
            for _ in range(hp["n_mm_layers"]):
                mge = spmm(self.adj, mge)
            local = local + F.normalize(mge)
            # global: hyperedge memberships of items and users, then hypergraph message passing
            user_hyper = spmm(self.r, item_hyper)
            h_i = self.drop(F.gumbel_softmax(item_hyper, self.tau, dim=1))
            h_u = self.drop(F.gumbel_softmax(user_hyper, self.tau, dim=1))
            i_ret = cge_items
            for _ in range(hp["n_hyper_layer"]):
                lat = h_i.T @ i_ret
                i_ret = h_i @ lat
                u_ret = h_u @ lat
            hyper_embs[m] = (u_ret, i_ret)
            ghe = ghe + torch.cat([u_ret, i_ret])
        out = local + hp["alpha"] * F.normalize(ghe)
        return out[: self.n_users], out[self.n_users :], hyper_embs

    def final_embeddings(self):
        users, items, _ = self.forward()
        return users, items

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        user_emb, item_emb, hyper = self.forward()
        u, (i, j) = user_emb[users], take_rows(item_emb, pos, neg)
        loss = bpr_loss(u, i, j) + self.hparams["reg_weight"] * embedding_norm_loss(u, i, j)
        if len(self.used) == 2:
            (uv, iv), (ut, it) = hyper["image"], hyper["text"]
            # MMRec sums over the batch rows; every user / item is a candidate
            cl = (info_nce(uv[users], ut[users], self.tau, candidates=ut) * users.numel()
                  + info_nce(iv[pos], it[pos], self.tau, candidates=it) * pos.numel())
            loss = loss + self.hparams["cl_weight"] * cl
        return loss
