"""Parts several models share: initialisation, projections and gates, losses, the modality GCNs and sampled user
graph with the common part of DualGNN and DRAGON, and the content/side contrast of MGCN and SMORE. A model file
imports from here and from `base`, never from another model file."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..graphs import (ConstantLGConv, InteractionGraph, mixed_knn_adjacency, sample_user_graph, spmm,
                      user_cooccurrence_topk)
from .base import Recommender

# initialisation


def id_table(rows: int, dim: int) -> nn.Parameter:
    """A trainable (rows, dim) embedding table, Xavier-uniform (MMRec's ID embeddings)."""
    return nn.Parameter(nn.init.xavier_uniform_(torch.empty(rows, dim)))


def xavier_normal_init(module: nn.Module) -> None:
    """MMRec's default initialisation: Xavier-normal embeddings and linear weights, zero biases."""
    if isinstance(module, (nn.Embedding, nn.Linear)):
        nn.init.xavier_normal_(module.weight)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


def feature_projections(features: dict[str, Tensor], modalities: list[str], dim: int,
                        init: Callable[[Tensor], Tensor] | None = None) -> nn.ModuleDict:
    """One `nn.Linear(F_m, dim)` per modality m of `modalities` (F_m the width of ``features[m]``), created in
    that order, each weight re-initialised by `init` when given (PyTorch's default initialisation otherwise)."""
    projections = nn.ModuleDict()
    for m in modalities:
        projections[m] = nn.Linear(features[m].shape[1], dim)
        if init is not None:
            init(projections[m].weight)
    return projections


def frozen_item_graph(features: dict[str, Tensor], modalities: list[str], hparams: dict) -> Tensor:
    """FREEDOM's, DRAGON's and PGL's item graph S = α kNN(X^image) + (1 - α) kNN(X^text) (binary top-``knn_k``
    cosine graphs, D^-1/2 A D^-1/2; α = ``mm_image_weight``), (n_items, n_items) CSR; built once from the
    features the model is given, so an eval-only knockout, which builds the model again, swaps it."""
    return mixed_knn_adjacency({m: features[m] for m in modalities}, hparams["knn_k"], hparams["mm_image_weight"])


def gate(dim: int) -> nn.Sequential:
    """x -> sigmoid(W x + b), (.., dim) -> (.., dim): MGCN's and SMORE's purifier and preference gates."""
    return nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid())


# losses


def take_rows(table: Tensor, *ids: Tensor) -> tuple[Tensor, ...]:
    """table[ids_1], table[ids_2], ... by one gather: in the backward, one scatter into one table-sized
    gradient instead of one per group (and their sum)."""
    return table.index_select(0, torch.cat(ids)).split([i.numel() for i in ids])


class _BPRLoss(torch.autograd.Function):
    """-mean log σ(x), x = <u, i+ - i->, with its gradient in one backward node: d/dx = -σ(-x) / B, so
    ∂/∂u = c (i+ - i-), ∂/∂i+ = c u, ∂/∂i- = -c u with c = -σ(-x) / B (autograd's graph of the same
    expression has a dozen nodes, each a pass over a (B, d) tensor)."""

    @staticmethod
    def forward(ctx, user: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        diff = pos - neg
        x = (user * diff).sum(-1)
        ctx.save_for_backward(user, diff, x)
        return -F.logsigmoid(x).mean()

    @staticmethod
    def backward(ctx, grad: Tensor):
        user, diff, x = ctx.saved_tensors
        c = torch.sigmoid(-x).mul_(-grad / max(1, x.numel())).unsqueeze(-1)
        grad_pos = c * user if ctx.needs_input_grad[1] or ctx.needs_input_grad[2] else None
        return (c * diff if ctx.needs_input_grad[0] else None, grad_pos,
                -grad_pos if ctx.needs_input_grad[2] else None)


def bpr_loss(user: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """-mean log sigmoid(<u, i+> - <u, i->): user, pos, neg are (B, d)."""
    return _BPRLoss.apply(user, pos, neg)


def log2_bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """-mean log2 sigmoid(s+ - s-): DualGNN's and DRAGON's BPR (base 2, i.e. the natural one / ln 2)."""
    return -F.logsigmoid(pos_scores - neg_scores).mean() / math.log(2.0)


class _NormSum(torch.autograd.Function):
    """Σ_k ‖e_k‖ / B with its gradient in one backward node: ∂/∂e_k = e_k / (B ‖e_k‖), 0 where ‖e_k‖ = 0 (as
    autograd's norm gives)."""

    @staticmethod
    def forward(ctx, *embeddings: Tensor) -> Tensor:
        norms = torch.stack([e.norm(p=2) for e in embeddings])
        ctx.save_for_backward(norms, *embeddings)
        return norms.sum() / embeddings[-1].shape[0]

    @staticmethod
    def backward(ctx, grad: Tensor):
        norms, *embeddings = ctx.saved_tensors
        scale = torch.where(norms > 0, grad / embeddings[-1].shape[0] / norms, torch.zeros_like(norms))
        return tuple(e * s if needed else None
                     for e, s, needed in zip(embeddings, scale.unbind(), ctx.needs_input_grad))


def embedding_norm_loss(*embeddings: Tensor) -> Tensor:
    """MMRec's EmbLoss: the sum of the embeddings' Frobenius norms (not squared), over the batch size."""
    return _NormSum.apply(*embeddings)


def half_squared_norm(*embeddings: Tensor) -> Tensor:
    """MMRec's in-model regulariser of the item-graph models (LATTICE, MGCN, SMORE): (1/2) sum of squared
    entries, over the batch size.

    MMRec divides by the configured batch size (2048); here by the batch's own size, which is the same
    except on an epoch's last, shorter batch.
    """
    return sum(e.pow(2).sum() for e in embeddings) / (2 * embeddings[0].shape[0])


def node_and_preference_penalty(id_embedding: Tensor, users: Tensor, item_nodes: Tensor,
                                image_preference: Tensor | None) -> Tensor:
    """MMGCN's and GRCN's regulariser (MMRec): mean e_u² over the batch's users + mean e_i² over its item nodes
    of the (n_users + n_items, d) ID table, + mean p² over the whole image preference table when the model
    reads images (`image_preference` None otherwise)."""
    reg = (id_embedding[users] ** 2).mean() + (id_embedding[item_nodes] ** 2).mean()
    if image_preference is not None:
        reg = reg + (image_preference**2).mean()
    return reg


class _CosineInfoNCE(torch.autograd.Function):
    """mean_i [log Σ_j exp(a_i·c_j / t) - a_i·b_i / t] for unit rows a, b (B, d) and c (N, d).

    Cosines are at most 1, so exp((a_i·c_j - 1) / t) never overflows and the shift by 1/t is exact; the
    B x N buffer is turned into the softmax P in place and kept for the backward:
    ∂/∂a = (P c - b) / (B t), ∂/∂c = Pᵀ a / (B t), ∂/∂b = -a / (B t).
    Same value and gradients as the logsumexp form, with half its B x N passes.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, c: Tensor, temperature: float) -> Tensor:
        prob = (a @ c.T).sub_(1.0).mul_(1.0 / temperature).exp_()
        total = prob.sum(1, keepdim=True)
        loss = (total.log().squeeze(1) + (1.0 - (a * b).sum(1)) / temperature).mean()
        ctx.save_for_backward(a, b, c, prob.div_(total))
        ctx.temperature = temperature
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b, c, prob = ctx.saved_tensors
        scale = grad / (a.shape[0] * ctx.temperature)
        weighted = prob * scale  # not in place: a retained graph may run this backward again
        return weighted @ c - scale * b, -scale * a, weighted.T @ a, None


def info_nce(view1: Tensor, view2: Tensor, temperature: float, candidates: Tensor | None = None) -> Tensor:
    """Mean over rows i of -log softmax_j(cos(v1_i, c_j) / t) taken at the positive cos(v1_i, v2_i) / t.

    Candidates c default to view2 itself (in-batch negatives: MGCN, SMORE, PGL); LGMRec passes every
    user or item.
    """
    a, b = F.normalize(view1, dim=1), F.normalize(view2, dim=1)
    c = b if candidates is None else F.normalize(candidates, dim=1)
    return _CosineInfoNCE.apply(a, b, c, temperature)


# per-modality graph convolution and user-user graph (DualGNN, DRAGON)


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


def modality_gcns(features: dict[str, Tensor], modalities: list[str], n_users: int, dim: int) -> nn.ModuleDict:
    """One `ModalityGCN` per modality, in the order of `modalities`."""
    return nn.ModuleDict({m: ModalityGCN(n_users, features[m].shape[1], dim) for m in modalities})


def modality_weights(rows: int) -> nn.Parameter:
    """(rows, 2, 1) learned weights of two modalities per row, Xavier-normal then a softmax over the two (near
    0.5 each): DualGNN's and DRAGON's per-user fusion weights."""
    return nn.Parameter(torch.softmax(nn.init.xavier_normal_(torch.empty(rows, 2, 1)), dim=1))


class SampledUserGraph(nn.Module):
    r"""DualGNN's and DRAGON's user-user graph: each user's top-``k`` co-interacting users (by shared training
    items, `ablate.graphs.user_cooccurrence_topk`), padded by random redraws that `resample()` draws again
    (MMRec's per-epoch sampler, `ablate.graphs.sample_user_graph`).

    .. math::
        \mathbf u = \mathbf u' + \sum_{v \in N_k(u)} \mathrm{softmax}_v(c_{uv})\,\mathbf u'_v

    ``forward(x)``: x (n_users, d) -> x + W x, W the current sample (n_users, n_users) sparse CSR.
    """

    def __init__(self, graph: InteractionGraph, k: int):
        super().__init__()
        for name, value in zip(("neighbours", "counts", "size"), user_cooccurrence_topk(graph, k)):
            self.register_buffer(name, value, persistent=False)
        self.register_buffer("adj", None, persistent=False)

    def resample(self) -> None:
        self.adj = sample_user_graph(self.neighbours, self.counts, self.size)

    # the current sample is part of the model's state (``state_dict``'s extra state): the state restored at
    # the best epoch scores with that epoch's graph
    def get_extra_state(self) -> dict:
        return {"adj": self.adj}

    def set_extra_state(self, state: dict) -> None:
        self.adj = state["adj"]

    def forward(self, x: Tensor) -> Tensor:
        return x + spmm(self.adj, x)


class DualGraphRecommender(Recommender):
    """The part DualGNN and DRAGON share: the frozen features, one `ModalityGCN` per modality over the user-item
    graph Ã (``n_layers``), per-user modality weights w_u, the user co-occurrence graph (``user_k``, re-drawn
    every epoch), and the loss -mean log2 σ(u·i+ − u·i−) + λ·`penalty` (λ = ``reg_weight``).

    A subclass builds what else it needs, then calls ``on_epoch_start(0)`` (the first draw of the user graph,
    after every other random initialisation, as MMRec), and defines ``final_embeddings``.
    """

    def __init__(self, graph: InteractionGraph, features: dict[str, Tensor], **hparams):
        super().__init__(graph, features, **hparams)
        d = self.hparams["embedding_size"]  # MMRec hard-codes its latent width 64, equal to embedding_size
        self.register_features(features)  # frozen, as MMRec
        self.gcns = modality_gcns(features, self.used, self.n_users, d)
        self.weight_u = modality_weights(self.n_users)  # w_u
        self.register_graph("adj", graph.norm_adj)
        self.user_graph = SampledUserGraph(graph, self.hparams["user_k"])

    def on_epoch_start(self, epoch: int) -> None:
        self.user_graph.resample()

    def modality_reps(self) -> list[Tensor]:
        """r^m (n_users + n_items, d) per modality in ``used``."""
        return [self.gcns[m](self.feature(m), self.adj, self.hparams["n_layers"]) for m in self.used]

    def penalty(self, users: Tensor) -> Tensor:
        """mean p^m_u² over the batch's users per modality + mean w_u²."""
        return sum((self.gcns[m].preference[users] ** 2).mean() for m in self.used) + (self.weight_u**2).mean()

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        user_emb, item_emb = self.final_embeddings()
        u, (i, j) = user_emb[users], take_rows(item_emb, pos, neg)
        loss = log2_bpr_loss((u * i).sum(-1), (u * j).sum(-1))
        return loss + self.hparams["reg_weight"] * self.penalty(users)


# content/side contrast (MGCN, SMORE)


class ContentSideContrast(Recommender):
    """Scoring and loss shared by MGCN and SMORE, which differ only in how they build the side embeddings.

    `forward_all()` returns (E + s, s, E) stacked over users then items: E the content (ID, LightGCN) and s
    the side (modality) embeddings. Scores are dot products of E + s; the loss is BPR + reg_weight * half
    squared norms + cl_loss * (InfoNCE(s, E) over the batch's positive items + over its users).
    """

    temperature = 0.2

    def __init__(self, graph: InteractionGraph, features: dict[str, Tensor], **hparams):
        """The common part: ID tables e^user, e^item, the fine-tuned feature tables, Ã and R."""
        super().__init__(graph, features, **hparams)
        d = self.hparams["embedding_size"]
        self.user_embedding, self.item_embedding = id_table(self.n_users, d), id_table(self.n_items, d)
        self.register_features(features, trainable=True)
        self.register_graph("adj", graph.norm_adj)
        self.register_graph("user_item", graph.user_item_adjacency)  # R: the user-item block of adj
        self.conv = ConstantLGConv()

    def forward_all(self) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def final_embeddings(self):
        out, _, _ = self.forward_all()
        return self.split_nodes(out)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        out, side, content = self.forward_all()
        item_pos = self.n_users + pos
        u, p, n = take_rows(out, users, item_pos, self.n_users + neg)
        loss = bpr_loss(u, p, n) + self.hparams["reg_weight"] * half_squared_norm(u, p, n)
        t = self.temperature
        side_items, side_users = take_rows(side, item_pos, users)
        content_items, content_users = take_rows(content, item_pos, users)
        cl = info_nce(side_items, content_items, t) + info_nce(side_users, content_users, t)
        return loss + self.hparams["cl_loss"] * cl
