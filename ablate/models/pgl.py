"""PGL (Yu et al., AAAI 2025): principal graph learning for multimedia recommendation."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..graphs import ConstantLGConv, DegreePrunedEdges, propagate_mean, to_adjacency
from .base import Recommender
from ..graphs.knn import TIE_RULE
from .layers import bpr_loss, feature_projections, frozen_item_graph, id_table, info_nce, take_rows


def low_rank_principal_graph(adj: Tensor, rank: int, threshold: float = 1e-3, chunk_size: int = 2048) -> Tensor:
    """PGL's global principal subgraph of a symmetric normalised adjacency (N, N), as sparse CSR.

    With the truncated SVD A ≈ U diag(s) V^T of the ``rank`` largest singular values (descending) and
    q = rank // 4: P = U[:, :q] diag(s[:q] * s[-q:]) V[:, :q]^T, entries with |P_ij| < threshold dropped.
    P is computed by row chunks and thresholded per chunk, never held dense.
    """
    n = adj.shape[0]
    coo = adj.to_sparse_coo().coalesce().cpu()
    index, value = coo.indices().numpy(), coo.values().double().numpy()
    matrix = sp.csr_matrix((value, (index[0], index[1])), shape=(n, n))
    rank = min(rank, n - 1)
    u, s, vt = spla.svds(matrix, k=rank, random_state=0)
    order = np.argsort(-s)
    u, s, vt = u[:, order], s[order], vt[order]
    q = max(1, rank // 4)
    right = (s[:q] * s[-q:])[:, None] * vt[:q]  # (q, N)
    rows, cols, vals = [], [], []
    for start in range(0, n, chunk_size):
        block = u[start:start + chunk_size, :q] @ right
        r, c = np.nonzero(np.abs(block) >= threshold)
        rows.append(r + start)
        cols.append(c)
        vals.append(block[r, c])
    edge_index = torch.from_numpy(np.stack([np.concatenate(cols), np.concatenate(rows)])).long()
    weight = torch.from_numpy(np.concatenate(vals)).float()
    return to_adjacency(edge_index.to(adj.device), weight.to(adj.device), n)


class PGL(Recommender):
    r"""LightGCN over modality features trained on a principal subgraph, inferred on the full graph, plus a
    frozen FREEDOM-style item graph.

    From the `"Mind Individual Information! Principal Graph Learning for Multimedia Recommendation"
    <https://doi.org/10.1609/aaai.v39i12.33429>`_ paper (AAAI 2025).

    .. math::
        \mathbf e^{item}_i = [\,\overline{\mathbf P_v\mathbf x^v_i};\ \overline{\mathbf P_t\mathbf x^t_i}\,],\quad
        \mathbf e^{user}_u = [\mathbf e^{v}_u; \mathbf e^{t}_u],\quad \bar{\mathbf z} = \mathbf z/\lVert\mathbf z\rVert

        \mathbf S = \alpha\,\mathrm{kNN}(\mathbf X^{v}) + (1-\alpha)\,\mathrm{kNN}(\mathbf X^{t}),\qquad
        \mathbf h = \mathbf S^{L_m}\mathbf e^{item}

        \mathbf E = \mathrm{mean}_{l\le L}\mathbf G^l[\mathbf e^{user};\mathbf e^{item}],\qquad
        \hat y_{ui} = \mathbf E_u^\top(\mathbf E_i + \mathbf h_i)

        \mathcal L = \mathrm{BPR} + \mu\,\tfrac12\big(\mathrm{InfoNCE}_{0.2}(\delta(\mathbf E_u), \delta'(\mathbf E_u))
            + \mathrm{InfoNCE}_{0.2}(\delta(\mathbf E_{i^+}), \delta'(\mathbf E_{i^+}))\big)

    G is the principal subgraph while training and the full D^-1/2 A D^-1/2 (degrees + 1e-7) at inference.
    ``mode="local"``: each epoch keeps 30% of the training edges, drawn without replacement with probability
    proportional to d_u^-1/2 d_i^-1/2, renormalised on the kept edges. ``mode="global"``: the
    thresholded low-rank part of the full adjacency (`low_rank_principal_graph`, rank = ``embedding_size``),
    fixed. S: binary top-``knn_k`` cosine kNN per modality, D^-1/2 S D^-1/2, mixed with α = ``mm_image_weight``,
    built once from the raw features. δ, δ': two independent dropouts (``dropout``). No item ID embedding:
    items are their (fine-tuned, projected, normalised) features. With MMRec's reg_weight 0 the contrastive
    term vanishes and is skipped (same loss and gradients).
    Shapes: x^m (n_items, F_m), P_m (d_f, F_m), e^user (n_users, 2 d), e^item (n_items, 2 d_f), S (n_items, n_items).

    Args:
        embedding_size (int): width of each of the user's two modality vectors; must equal feat_embed_dim.
            (default: 64)
        feat_embed_dim (int): width d_f of the projected features. (default: 64)
        n_ui_layers (int): L, propagation layers on the user-item graph. (default: 2)
        n_mm_layers (int): L_m, propagation layers on S. (default: 1)
        knn_k (int): neighbours per item in each modality's kNN graph. (default: 10)
        mm_image_weight (float): α, weight of the image kNN graph in S. (default: 0.1)
        dropout (float): rate of the two dropouts δ, δ' of the contrastive term. (default: 0.2)
        reg_weight (float): μ, weight of the contrastive term. (default: 0.0)
        mode (str): "local" (edges resampled every epoch) or "global" (the low-rank principal subgraph).
            (default: "local")
        lr_decay (list): (gamma, every): the trainer's learning rate after epoch e is lr * gamma ** (e / every),
            MMRec's ``learning_rate_scheduler``. (default: [0.96, 50])
    """

    modalities = ("text", "image")
    requires_every_modality = True
    # search: 1 point, MMRec's PGL.yaml grid (one value each); learning rate 1e-3 (not searched) decayed by 0.96
    # every 50 epochs (its learning_rate_scheduler)
    defaults = {"embedding_size": 64, "feat_embed_dim": 64, "n_ui_layers": 2, "n_mm_layers": 1, "knn_k": 10,
                "mm_image_weight": 0.1, "dropout": 0.2, "reg_weight": 0.0, "mode": "local", "lr_decay": [0.96, 50]}
    search_space = {"dropout": [0.2], "reg_weight": [0.0], "mode": ["local"]}
    departures = (TIE_RULE,)
    keep_share = 0.3  # local mode: share of edges kept per epoch (fixed in PGL)
    temperature = 0.2

    def __init__(self, graph, features, **hparams):
        super().__init__(graph, features, **hparams)
        hp = self.hparams
        if hp["mode"] not in ("local", "global"):
            raise ValueError(f"PGL mode {hp['mode']!r}: expected 'local' or 'global'")
        if hp["embedding_size"] != hp["feat_embed_dim"]:
            raise ValueError("PGL concatenates user and projected item vectors: embedding_size must equal feat_embed_dim")
        d = hp["embedding_size"]
        self.user_image, self.user_text = id_table(self.n_users, d), id_table(self.n_users, d)
        self.register_features(features, trainable=True)
        self.projections = feature_projections(features, self.used, hp["feat_embed_dim"])
        self.register_graph("item_adj", frozen_item_graph(features, self.used, hp))  # S
        self.register_graph("adj", graph.normalized_adjacency(graph.users, graph.items, eps=1e-7))
        self.register_graph("train_adj", low_rank_principal_graph(self.adj, hp["embedding_size"])
                            if hp["mode"] == "global" else None)
        self.pruning = DegreePrunedEdges(graph)
        self.dropout = nn.Dropout(hp["dropout"])
        self.conv = ConstantLGConv()

    def on_epoch_start(self, epoch: int) -> None:
        if self.hparams["mode"] != "local":
            return
        self.train_adj = self.pruning.sample(int(self.pruning.num_edges * self.keep_share))

    def propagate(self, adj: Tensor) -> tuple[Tensor, Tensor]:
        items = torch.cat([F.normalize(self.projections[m](self.feature(m)), dim=1)
                           for m in ("image", "text")], dim=1)
        h = items
        for _ in range(self.hparams["n_mm_layers"]):
            h = self.conv(h, self.item_adj)
        out = propagate_mean(self.conv, torch.cat([torch.cat([self.user_image, self.user_text], dim=1), items]),
                             adj, self.hparams["n_ui_layers"])
        return out[: self.n_users], out[self.n_users :] + h

    def final_embeddings(self):
        return self.propagate(self.adj)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        if self.train_adj is None:  # local mode before the first epoch hook
            self.on_epoch_start(0)
        user_emb, item_emb = self.propagate(self.train_adj)
        u, (p, n) = user_emb[users], take_rows(item_emb, pos, neg)
        loss = bpr_loss(u, p, n)
        if self.hparams["reg_weight"]:
            t = self.temperature
            cl = (info_nce(self.dropout(u), self.dropout(u), t) + info_nce(self.dropout(p), self.dropout(p), t)) / 2
            loss = loss + self.hparams["reg_weight"] * cl
        return loss
