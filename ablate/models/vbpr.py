"""VBPR (He and McAuley, AAAI 2016), in MMRec's multimodal form."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Recommender
from .layers import bpr_loss, embedding_norm_loss, id_table, xavier_normal_init


class VBPR(Recommender):
    r"""BPR with a content part: item vector = [ID embedding ; linear projection of its features].

    From the `"VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback"
    <https://arxiv.org/abs/1510.01784>`_ paper (AAAI 2016).

    .. math::
        \mathbf q_i = [\,\mathbf e_i \,;\, \mathbf W \mathbf x_i + \mathbf b\,], \qquad
        \hat y_{ui} = \mathbf p_u^\top \mathbf q_i

    with x_i the concatenation [text ; image] of the item's features (MMRec; the paper used image only).
    Shapes: p (n_users, 2d), e (n_items, d), x (n_items, F), W (d, F). Loss: BPR + λ·(norms of p_u, q_i+,
    q_i-)/B as MMRec. Items are projected only for the distinct rows a batch touches: the same values and
    gradients as projecting the whole table, without the n_items x F x d product at every step.

    Args:
        embedding_size (int): width d of the item ID embedding and of the feature projection (user vectors are
            2d wide). (default: 64)
        reg_weight (float): λ, weight of the norm penalty. (default: 0.0001)
    """

    modalities = ("text", "image")
    modality_order = ("text", "image")  # [text ; image], as MMRec
    defaults = {"embedding_size": 64, "reg_weight": 1e-4}
    # search: 7 points, MMRec's VBPR.yaml grid (reg_weight 7)
    search_space = {"reg_weight": [2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5]}

    def __init__(self, graph, features, **hparams):
        super().__init__(graph, features, **hparams)
        d = self.hparams["embedding_size"]
        raw = torch.cat([features[m] for m in self.used], dim=1)
        self.register_feature("item_features", raw)
        self.user_embedding, self.item_embedding = id_table(self.n_users, 2 * d), id_table(self.n_items, d)
        self.item_linear = nn.Linear(raw.shape[1], d)
        self.apply(xavier_normal_init)

    def item_vectors(self, items: Tensor | None = None) -> Tensor:
        if items is None:
            return torch.cat([self.item_embedding, self.item_linear(self.item_features)], dim=1)
        return torch.cat([self.item_embedding[items], self.item_linear(self.item_features.index_select(0, items))], dim=1)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        items, inverse = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        i, j = self.item_vectors(items)[inverse].split(pos.numel())
        u = self.user_embedding[users]
        return bpr_loss(u, i, j) + self.hparams["reg_weight"] * embedding_norm_loss(u, i, j)

    def final_embeddings(self):
        return self.user_embedding, self.item_vectors()
