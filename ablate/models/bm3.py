"""BM3 (Zhou et al., WWW 2023): bootstrapped multimodal latent representations, no negative sampling."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..graphs import ConstantLGConv, propagate_mean
from .base import Recommender
from .layers import embedding_norm_loss, feature_projections, id_table


def _cosine_gap(online: Tensor, target: Tensor) -> Tensor:
    """1 - mean cosine similarity of matching rows; the target carries no gradient."""
    return 1.0 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


class BM3(Recommender):
    r"""A LightGCN backbone on IDs; dropout makes the target view, a shared predictor the online view.

    From the `"Bootstrap Latent Representations for Multi-modal Recommendation"
    <https://arxiv.org/abs/2207.05969>`_ paper (WWW 2023).

    .. math::
        [\mathbf H_u; \bar{\mathbf H}_i] = \mathrm{mean}_{l \le L}\,\tilde{\mathbf A}^{l}\,[\mathbf e^{user};
        \mathbf e^{item}], \qquad \mathbf h_i = \bar{\mathbf h}_i + \mathbf e^{item}_i, \qquad
        \mathbf x^m_i \mapsto \mathbf z^m_i = \mathbf W_m \mathbf x^m_i + \mathbf b_m

        \text{online: } f_p(\cdot) = \mathbf W_p(\cdot) + \mathbf b_p, \qquad
        \text{target: } \tilde{\cdot} = \mathrm{dropout}_p(\mathrm{sg}(\cdot))

        \mathcal L = c(f_p(\mathbf h_u), \tilde{\mathbf h}_i) + c(f_p(\mathbf h_i), \tilde{\mathbf h}_u)
          + \lambda_{cl} \sum_m \big[c(f_p(\mathbf z^m_i), \tilde{\mathbf h}_i)
          + c(f_p(\mathbf z^m_i), \tilde{\mathbf z}^m_i)\big]
          + \lambda\,(\|\mathbf H_u\|_F + \|\mathbf H_i\|_F) / n_{items}

    with c(a, b) = 1 - mean cos(a, b) over the batch's (u, i) pairs: graph reconstruction (first two terms),
    inter-modality alignment (z^m with the item's ID view) and intra-modality alignment (z^m with its own
    dropped-out copy). Scores: f_p(h_u)^T f_p(h_i). No negatives: ``uses_negatives = False``.

    The feature tables x^m are fine-tuned (MMRec: ``nn.Embedding.from_pretrained(freeze=False)``). Features
    enter only the training loss, never the scores: knocking a modality out changes BM3 through training
    alone, and an ``eval_only`` knockout leaves its scores unchanged.

    Cheaper, same math: the projections and the target dropout are applied to the distinct users and items
    a batch touches, then gathered (MMRec projects and drops out whole tables, then indexes): same values,
    same gradients, and a user or item repeated in a batch shares one dropout mask, as in MMRec. The norm
    penalty stays on the full propagated tables, as in MMRec.
    Shapes: e^user (n_users, d), e^item (n_items, d), x^m (n_items, F_m), W_m (d, F_m), W_p (d, d).

    Args:
        embedding_size (int): width d of the user and item ID embeddings. (default: 64)
        n_layers (int): L, propagation layers. (default: 1)
        dropout (float): p, dropout rate of the target view. (default: 0.5)
        reg_weight (float): λ, weight of the norm penalty. (default: 0.1)
        cl_weight (float): λ_cl, weight of the modality alignment terms. (default: 2.0)
    """

    modalities = ("text", "image")
    modality_order = ("text", "image")  # MMRec's
    scores_read_features = False
    uses_negatives = False
    # search: 8 points, MMRec's BM3.yaml grid (n_layers 2 x dropout 2 x reg_weight 2); defaults: the best point
    # for Amazon Baby given by the authors (n_layers 1, reg_weight 0.1, dropout 0.5). MMRec ties feat_embed_dim
    # to embedding_size.
    defaults = {"embedding_size": 64, "n_layers": 1, "dropout": 0.5, "reg_weight": 0.1, "cl_weight": 2.0}
    search_space = {"n_layers": [1, 2], "dropout": [0.3, 0.5], "reg_weight": [0.1, 0.01]}

    def __init__(self, graph, features, **hparams):
        super().__init__(graph, features, **hparams)
        d = self.hparams["embedding_size"]
        self.user_embedding, self.item_embedding = id_table(self.n_users, d), id_table(self.n_items, d)
        # MMRec initialises the linear weights Xavier-normal and leaves PyTorch's default bias init
        self.predictor = nn.Linear(d, d)
        nn.init.xavier_normal_(self.predictor.weight)
        self.register_features(features, trainable=True)
        self.projections = feature_projections(features, self.used, d, nn.init.xavier_normal_)
        self.register_graph("adj", graph.norm_adj)
        self.conv = ConstantLGConv()

    def propagate(self) -> tuple[Tensor, Tensor]:
        """(H_u (n_users, d), h (n_items, d)): layer-mean LightGCN, the ID embedding added to items."""
        x = torch.cat([self.user_embedding, self.item_embedding])
        out = propagate_mean(self.conv, x, self.adj, self.hparams["n_layers"])
        return out[: self.n_users], out[self.n_users :] + self.item_embedding

    def final_embeddings(self):
        user_emb, item_emb = self.propagate()
        return self.predictor(user_emb), self.predictor(item_emb)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor | None = None) -> Tensor:
        hp = self.hparams
        user_emb, item_emb = self.propagate()
        user_ids, user_row = torch.unique(users, return_inverse=True)
        item_ids, item_row = torch.unique(pos, return_inverse=True)
        h_u, h_i = user_emb[users], item_emb[pos]
        with torch.no_grad():
            target_u = F.dropout(user_emb[user_ids], hp["dropout"])[user_row]
            target_i = F.dropout(item_emb[item_ids], hp["dropout"])[item_row]
        loss = _cosine_gap(self.predictor(h_u), target_i) + _cosine_gap(self.predictor(h_i), target_u)
        loss = loss + hp["reg_weight"] * embedding_norm_loss(user_emb, item_emb)
        alignment = 0.0
        for m in self.used:
            z_distinct = self.projections[m](self.feature(m)[item_ids])
            with torch.no_grad():
                target_z = F.dropout(z_distinct, hp["dropout"])[item_row]
            online_z = self.predictor(z_distinct[item_row])
            alignment = alignment + _cosine_gap(online_z, target_i) + _cosine_gap(online_z, target_z)
        return loss + hp["cl_weight"] * alignment
