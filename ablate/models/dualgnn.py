"""DualGNN (Wang et al., IEEE TMM 2021): dual graph neural network for multimedia recommendation."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..graphs import sample_user_graph, spmm, user_cooccurrence_topk
from .base import Recommender


class ModalityGCN(nn.Module):
    r"""One modality's propagation over the user-item graph (DualGNN's and DRAGON's single-modal GCN).

    .. math::
        \mathbf x = \mathrm{normalize}([\mathbf p ;\; \mathrm{MLP}(\mathbf X^m)]), \qquad
        \mathbf r^m = \sum_{l=0}^{L} \tilde{\mathbf A}^l \mathbf x

    with p (n_users, d) the users' preference for this modality, MLP = Linear(F_m, 4d), LeakyReLU,
    Linear(4d, d), Ã = D^-1/2 A D^-1/2 the user-item graph without self-loops (sparse CSR).
    Output (n_users + n_items, d).
    """

    def __init__(self, n_users: int, feature_dim: int, dim: int):
        super().__init__()
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, dim)))
        self.mlp = nn.Sequential(nn.Linear(feature_dim, 4 * dim), nn.LeakyReLU(), nn.Linear(4 * dim, dim))

    def forward(self, features: Tensor, adj: Tensor, n_layers: int) -> Tensor:
        x = F.normalize(torch.cat([self.preference, self.mlp(features)]))
        out = x
        for _ in range(n_layers):
            x = spmm(adj, x)
            out = out + x
        return out


def log2_bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """-mean log2 sigmoid(s+ - s-): DualGNN's and DRAGON's BPR (base 2, i.e. the natural one / ln 2)."""
    return -F.logsigmoid(pos_scores - neg_scores).mean() / math.log(2.0)


def modality_gcns(model: Recommender, features: dict[str, Tensor], d: int) -> nn.ModuleDict:
    """DualGNN's and DRAGON's per-modality part: each present modality's features kept frozen (as MMRec) and
    marked feature-derived, and one `ModalityGCN` each; sets `model.used` (image first, as MMRec)."""
    model.used = [m for m in ("image", "text") if m in features]
    if not model.used:
        raise ValueError(f"{type(model).__name__} needs at least one of the modalities text, image")
    gcns = nn.ModuleDict()
    for m in model.used:
        model.register_feature(f"{m}_features", features[m])
        gcns[m] = ModalityGCN(model.n_users, features[m].shape[1], d)
    return gcns


class DualGNN(Recommender):
    r"""Single-modality GCNs fused per user, then smoothed over a user-user co-occurrence graph.

    .. math::
        \mathbf r^m = \mathrm{ModalityGCN}_m, \qquad
        \mathbf i = \sum_m \mathbf r^m_i, \qquad
        \mathbf u' = \mathbf w_{u,1}\,(\mathbf r^{v}_u + \mathbf r^{t}_u) + \mathbf w_{u,2}\,\mathbf r^{t}_u, \qquad
        \mathbf u = \mathbf u' + \sum_{v \in N_k(u)} \mathrm{softmax}_v(c_{uv})\,\mathbf u'_v

    N_k(u): u's top-k (k = ``user_k``) co-interacting users by shared training items c_uv (built from the
    training graph, `ablate.graphs.user_cooccurrence_topk`; MMRec reads a pre-made file); users with fewer
    than k get their list padded by random redraws every epoch (MMRec's sampler). w_u (n_users, 2) is a
    learned per-user fusion weight, initialised near (0.5, 0.5) by a softmax.
    Loss: -mean log2 σ(u·i+ − u·i−) + λ(mean p^m_u² per modality + mean w²(users) + mean w²(items)).

    Follows MMRec where it differs from the paper: the first fusion slot holds r^v + r^t, not r^v (MMRec adds
    the text representation to the image one in place before fusing); the item-side fusion weights w_i are
    only regularised, never used; the GCN has no per-layer weights and sums (not concatenates) its layers;
    MMRec's per-modality item dropout is computed but never applied, so it is absent here. With one modality
    only, u' = r^m_u. Scores use the representations of the current epoch's sampled user graph, as MMRec.
    Shapes: X^m (n_items, F_m); r^m (n_users + n_items, d); w (n_users, 2).
    """

    modalities = ("text", "image")
    defaults = {"embedding_size": 64, "n_layers": 2, "user_k": 40, "reg_weight": 1e-3}
    # MMRec also searches the learning rate (the trainer's) and aggr_mode over the single value "add"
    search_space = {"reg_weight": [0.1, 0.01, 0.001, 0.0001, 0.00001]}

    def __init__(self, graph, features, **hparams):
        super().__init__(graph, features, **hparams)
        hp = self.hparams
        d = hp["embedding_size"]  # MMRec hard-codes its latent width 64, equal to embedding_size
        self.gcns = modality_gcns(self, features, d)
        self.weight_u = nn.Parameter(torch.softmax(nn.init.xavier_normal_(torch.empty(self.n_users, 2, 1)), dim=1))
        self.weight_i = nn.Parameter(torch.softmax(nn.init.xavier_normal_(torch.empty(self.n_items, 2, 1)), dim=1))
        self.adj = graph.norm_adj
        self.neighbours, self.counts, self.size = user_cooccurrence_topk(graph, hp["user_k"])
        self.on_epoch_start(0)

    def on_epoch_start(self, epoch: int) -> None:
        self.user_adj = sample_user_graph(self.neighbours, self.counts, self.size)

    def modality_reps(self) -> list[Tensor]:
        return [self.gcns[m](getattr(self, f"{m}_features"), self.adj, self.hparams["n_layers"]) for m in self.used]

    def fuse_users(self, reps: list[Tensor]) -> Tensor:
        users = [r[: self.n_users] for r in reps]
        if len(users) == 1:
            return users[0]
        image, text = users
        # MMRec: slot 1 is (image + text), slot 2 text (its in-place sum aliases the image representation)
        return torch.stack([image + text, text], dim=2).matmul(self.weight_u).squeeze(2)

    def final_embeddings(self):
        reps = self.modality_reps()
        items = sum(r[self.n_users :] for r in reps)
        users = self.fuse_users(reps)
        users = users + spmm(self.user_adj, users)
        return users, items

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        user_emb, item_emb = self.final_embeddings()
        u = user_emb[users]
        loss = log2_bpr_loss((u * item_emb[pos]).sum(-1), (u * item_emb[neg]).sum(-1))
        reg = sum((self.gcns[m].preference[users] ** 2).mean() for m in self.used)
        reg = reg + (self.weight_u**2).mean() + (self.weight_i**2).mean()
        return loss + self.hparams["reg_weight"] * reg
