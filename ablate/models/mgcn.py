"""MGCN (Yu et al., ACM MM 2023): multi-view graph convolutional network for multimedia recommendation."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..graphs import item_matrix, propagate_mean, row_degree_norm, weighted_knn
from ..graphs.knn import TIE_RULE
from .layers import ContentSideContrast, gate


class MGCN(ContentSideContrast):
    r"""Behaviour-purified modality features on frozen kNN item graphs, fused by attention, plus contrast.

    From the `"Multi-View Graph Convolutional Network for Multimedia Recommendation"
    <https://arxiv.org/abs/2308.03588>`_ paper (ACM MM 2023).

    .. math::
        \tilde{\mathbf x}^m_i = \mathbf e^{item}_i \odot \sigma(\mathbf W_m(\mathbf P_m \mathbf x^m_i))
        \quad\text{(purifier)},\qquad
        \mathbf h^m_{items} = (\mathbf S^m)^{L_m}\tilde{\mathbf x}^m,\quad
        \mathbf h^m_{users} = \mathbf R\,\mathbf h^m_{items}

        \mathbf E = \mathrm{mean}_{l\le L}\tilde{\mathbf A}^l[\mathbf e^{user};\mathbf e^{item}],\qquad
        \boldsymbol\beta = \mathrm{softmax}_m(\mathbf q^\top\tanh(\mathbf W_q\mathbf h^m + \mathbf b_q)),\quad
        \mathbf c = \textstyle\sum_m \beta_m\mathbf h^m

        \mathbf s = \tfrac13\big(\mathbf c + \textstyle\sum_m \sigma(\mathbf W'_m\mathbf E)\odot(\mathbf h^m - \mathbf c)\big),
        \qquad \hat y_{ui} = (\mathbf E + \mathbf s)_u^\top(\mathbf E + \mathbf s)_i

        \mathcal L = \mathrm{BPR} + \mu\,\tfrac12\lVert\cdot\rVert^2/B
          + \lambda_c\big(\mathrm{InfoNCE}_{0.2}(\mathbf s_{i^+}, \mathbf E_{i^+}) + \mathrm{InfoNCE}_{0.2}(\mathbf s_u, \mathbf E_u)\big)

    S^m: top-``knn_k`` cosine neighbours of the raw features, cosine-weighted, D^-1/2 S D^-1/2 with row sums,
    built once. Ã = D^-1/2 A D^-1/2 (no self-loops) and R its user-item block. The feature tables x^m are
    fine-tuned (MMRec: ``from_pretrained(freeze=False)``) and projected (P_m) for all items at every step.
    Shapes: e^user (n_users, d), e^item (n_items, d), x^m (n_items, F_m), S^m (n_items, n_items), R (n_users, n_items).

    Args:
        embedding_size (int): width d of the user and item ID embeddings. (default: 64)
        n_ui_layers (int): L, propagation layers on the user-item graph. (default: 2)
        n_layers (int): L_m, propagation layers on each S^m. (default: 1)
        knn_k (int): neighbours per item in each modality's kNN graph. (default: 10)
        reg_weight (float): μ, weight of the half squared norm penalty. (default: 0.0001)
        cl_loss (float): λ_c, weight of the contrastive terms. (default: 0.001)
        lr_decay (list): (gamma, every): the trainer's learning rate after epoch e is lr * gamma ** (e / every),
            MMRec's ``learning_rate_scheduler``. (default: [0.96, 50])
    """

    modalities = ("text", "image")
    requires_every_modality = True
    # search: 3 points, MMRec's MGCN.yaml grid (cl_loss 3); learning rate 1e-3 (not searched) decayed by 0.96
    # every 50 epochs (its learning_rate_scheduler)
    defaults = {"embedding_size": 64, "n_ui_layers": 2, "n_layers": 1, "knn_k": 10, "reg_weight": 1e-4,
                "cl_loss": 0.001, "lr_decay": [0.96, 50]}
    search_space = {"cl_loss": [0.001, 0.01, 0.1]}
    departures = (TIE_RULE,)

    def __init__(self, graph, features, **hparams):
        super().__init__(graph, features, **hparams)
        hp = self.hparams
        d = hp["embedding_size"]
        self.projections, self.purifiers, self.prefer = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        for m in self.used:
            self.projections[m] = nn.Linear(features[m].shape[1], d)
            self.purifiers[m] = gate(d)
            self.prefer[m] = gate(d)
            edge_index, weight = weighted_knn(features[m], hp["knn_k"])
            weight = row_degree_norm(edge_index, weight, self.n_items)
            self.register_graph(f"{m}_item_adj", item_matrix(edge_index, weight, self.n_items))  # S^m
        self.query_common = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))

    def modality_views(self) -> dict[str, Tensor]:
        """h^m (n_users + n_items, d) per modality: purified ID embeddings propagated on S^m, users via R."""
        views = {}
        for m in ("image", "text"):
            x = self.projections[m](self.feature(m))
            h = self.item_embedding * self.purifiers[m](x)
            for _ in range(self.hparams["n_layers"]):
                h = self.conv(h, getattr(self, f"{m}_item_adj"))
            views[m] = torch.cat([self.conv(h, self.user_item), h])
        return views

    def forward_all(self) -> tuple[Tensor, Tensor, Tensor]:
        """(E + s, s, E) stacked over users then items: final, side (modality) and content (ID) embeddings."""
        content = propagate_mean(self.conv, torch.cat([self.user_embedding, self.item_embedding]), self.adj,
                                 self.hparams["n_ui_layers"])
        views = self.modality_views()
        att = torch.cat([self.query_common(views["image"]), self.query_common(views["text"])], dim=-1)
        beta = torch.softmax(att, dim=-1)
        common = beta[:, :1] * views["image"] + beta[:, 1:] * views["text"]
        side = common
        for m in ("image", "text"):
            side = side + self.prefer[m](content) * (views[m] - common)
        side = side / 3
        return content + side, side, content
