"""SMORE (Ong and Khong, WSDM 2025): spectrum-based modality representation fusion graph convolution."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..graphs import item_matrix, propagate_mean, row_degree_norm, weighted_knn
from ..graphs.knn import TIE_RULE
from .layers import ContentSideContrast, feature_projections, gate


def max_pool_graphs(first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor], n: int) -> tuple[Tensor, Tensor]:
    """The union of two (edge_index, weight) graphs, an edge present in both keeping the larger weight."""
    edge_index = torch.cat([first[0], second[0]], dim=1)
    weight = torch.cat([first[1], second[1]])
    key = edge_index[0] * n + edge_index[1]
    unique, inverse = torch.unique(key, return_inverse=True)
    pooled = torch.full((unique.numel(),), float("-inf"), dtype=weight.dtype, device=weight.device)
    pooled = pooled.scatter_reduce(0, inverse, weight, reduce="amax")
    return torch.stack([unique // n, unique % n]), pooled


class SMORE(ContentSideContrast):
    r"""Modality features denoised and fused in the frequency domain, three item-item views, preference gates.

    From the `"Spectrum-based Modality Representation Fusion Graph Convolutional Network for Multimodal
    Recommendation" <https://arxiv.org/abs/2412.14978>`_ paper (WSDM 2025).

    .. math::
        \mathbf f^m = \mathbf P_m \mathbf x^m,\quad
        \bar{\mathbf f}^m = \mathcal F^{-1}\big(\mathcal F(\mathbf f^m)\odot\mathbf w_m\big),\quad
        \bar{\mathbf f}^{f} = \mathcal F^{-1}\big(\mathcal F(\mathbf f^{img})\odot\mathcal F(\mathbf f^{txt})\odot\mathbf w_f\big)

        \mathbf h^k_{items} = (\mathbf S^k)^{L_m}\big(\mathbf e^{item}\odot\sigma(\mathbf G_k\bar{\mathbf f}^k)\big),\quad
        \mathbf h^k_{users} = \mathbf R\,\mathbf h^k_{items},\qquad k\in\{img, txt, f\},\
        \mathbf S^{f} = \max(\mathbf S^{img}, \mathbf S^{txt})

        \mathbf E = \mathrm{mean}_{l\le L}\tilde{\mathbf A}^l[\mathbf e^{user};\mathbf e^{item}],\quad
        \mathbf a^m = \mathrm{softmax}_{dim}(\mathbf Q_m\mathbf h^f)\odot\mathbf h^m

        \mathbf s = \mathrm{mean}\big(\mathbf p_{img}\odot\mathbf a^{img},\ \mathbf p_{txt}\odot\mathbf a^{txt},\
            \mathbf p_f\odot\mathbf h^f\big),\quad \mathbf p_k = \mathrm{dropout}(\sigma(\mathbf W_k\mathbf E)),
        \qquad \hat y_{ui} = (\mathbf E + \mathbf s)_u^\top(\mathbf E + \mathbf s)_i

        \mathcal L = \mathrm{BPR} + \mu\,\tfrac12\lVert\cdot\rVert^2/B
          + \lambda_c\big(\mathrm{InfoNCE}_{0.2}(\mathbf s_{i^+}, \mathbf E_{i^+}) + \mathrm{InfoNCE}_{0.2}(\mathbf s_u, \mathbf E_u)\big)

    F: the real FFT along the embedding dimension (orthonormal); w_m, w_f: learnable complex filters of
    d/2 + 1 frequencies (standard-normal init, as MMRec). S^img, S^txt: cosine-weighted top-k kNN graphs of
    the raw features (``image_knn_k``, ``text_knn_k``), D^-1/2 S D^-1/2 with row sums, built once; S^f their
    element-wise max over the union of edges. Ã = D^-1/2 A D^-1/2, R its user-item block. The feature
    tables are fine-tuned and projected for all items at every step.
    Shapes: e^user (n_users, d), e^item (n_items, d), f^m (n_items, d), S^k (n_items, n_items).

    Args:
        embedding_size (int): width d of the user and item ID embeddings. (default: 64)
        n_ui_layers (int): L, propagation layers on the user-item graph. (default: 3)
        n_layers (int): L_m, propagation layers on each item graph S^k. (default: 1)
        image_knn_k (int): neighbours per item in the image kNN graph. (default: 10)
        text_knn_k (int): neighbours per item in the text kNN graph. (default: 10)
        reg_weight (float): μ, weight of the half squared norm penalty. (default: 1e-05)
        dropout_rate (float): dropout on the preference gates p_k. (default: 0.0)
        cl_loss (float): λ_c, weight of the contrastive terms. (default: 0.01)
        lr_decay (list): (gamma, every): the trainer's learning rate after epoch e is lr * gamma ** (e / every),
            MMRec's ``learning_rate_scheduler``. (default: [0.96, 50])
    """

    modalities = ("text", "image")
    requires_every_modality = True
    # search: 128 points, MMRec's SMORE.yaml grid (n_ui_layers 2 x image_knn_k 4 x text_knn_k 4 x reg_weight 2
    # x dropout_rate 2); learning rate 1e-3 (not searched) decayed by 0.96 every 50 epochs
    defaults = {"embedding_size": 64, "n_ui_layers": 3, "n_layers": 1, "image_knn_k": 10, "text_knn_k": 10,
                "reg_weight": 1e-5, "dropout_rate": 0.0, "cl_loss": 0.01, "lr_decay": [0.96, 50]}
    search_space = {"n_ui_layers": [3, 4], "image_knn_k": [10, 15, 20, 40], "text_knn_k": [10, 15, 20, 40],
                    "reg_weight": [1e-5, 1e-4], "dropout_rate": [0.0, 0.1]}
    departures = (TIE_RULE,)
    views = ("image", "text", "fusion")

    def __init__(self, graph, features, **hparams):
        super().__init__(graph, features, **hparams)
        hp = self.hparams
        d = hp["embedding_size"]
        self.projections = feature_projections(features, self.used, d)
        raw = {}
        for m in self.used:
            edge_index, weight = weighted_knn(features[m], hp[f"{m}_knn_k"])
            raw[m] = (edge_index, row_degree_norm(edge_index, weight, self.n_items))
        raw["fusion"] = max_pool_graphs(raw["image"], raw["text"], self.n_items)
        for k in self.views:
            self.register_graph(f"{k}_item_adj", item_matrix(*raw[k], self.n_items))
        self.filters = nn.ParameterDict({k: nn.Parameter(torch.randn(d // 2 + 1, 2)) for k in self.views})
        self.purifiers = nn.ModuleDict({k: gate(d) for k in self.views})
        self.prefer = nn.ModuleDict({k: gate(d) for k in self.views})
        self.queries = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d, bias=False))
                                      for m in ("image", "text")})
        self.dropout = nn.Dropout(hp["dropout_rate"])

    def spectrum(self) -> dict[str, Tensor]:
        """Filtered image and text projections and their frequency-domain fusion, each (n_items, d)."""
        d = self.hparams["embedding_size"]
        freq = {m: torch.fft.rfft(self.projections[m](self.feature(m)), dim=1, norm="ortho")
                for m in ("image", "text")}
        w = {k: torch.view_as_complex(self.filters[k]) for k in self.views}
        out = {m: torch.fft.irfft(freq[m] * w[m], n=d, dim=1, norm="ortho") for m in ("image", "text")}
        out["fusion"] = torch.fft.irfft(freq["image"] * freq["text"] * w["fusion"], n=d, dim=1, norm="ortho")
        return out

    def forward_all(self) -> tuple[Tensor, Tensor, Tensor]:
        content = propagate_mean(self.conv, torch.cat([self.user_embedding, self.item_embedding]), self.adj,
                                 self.hparams["n_ui_layers"])
        h = {}
        for k, f in self.spectrum().items():
            x = self.item_embedding * self.purifiers[k](f)
            for _ in range(self.hparams["n_layers"]):
                x = self.conv(x, getattr(self, f"{k}_item_adj"))
            h[k] = torch.cat([self.conv(x, self.user_item), x])
        parts = [self.dropout(self.prefer[m](content)) * torch.softmax(self.queries[m](h["fusion"]), dim=-1) * h[m]
                 for m in ("image", "text")]
        parts.append(self.dropout(self.prefer["fusion"](content)) * h["fusion"])
        side = torch.stack(parts).mean(0)
        return content + side, side, content
