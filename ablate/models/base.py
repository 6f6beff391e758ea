"""The one model interface every recommender implements.

A model is built from the training graph, the item features it is given (already knocked out: it never
sees which condition it runs under) and its hyper-parameters. The trainer calls:

- ``on_epoch_start(epoch)``: per-epoch work (edge dropout, graph re-sampling, structure learning);
- ``loss(users, pos, neg)``: the training loss of a batch of (user, positive, negative) ids (``neg`` is
  ``None`` for a model with ``uses_negatives = False``);
- ``eval_state()`` once per evaluation, then ``score(users, state)`` per user chunk: (B, n_items) scores.
  By default the state is ``final_embeddings()`` and scores are dot products.

Item features reach a model only as ``features`` (modality -> float tensor (n_items, dim)); feature-derived
tensors are registered with ``register_feature`` so that ``eval_only`` knockout can swap them after training.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..graphs import InteractionGraph


class Recommender(nn.Module):
    #: modalities the model reads (subset of the dataset's); () for an ID-only model
    modalities: ClassVar[tuple[str, ...]] = ()
    #: modalities the model needs at least one of; a model with modalities needs one
    uses_negatives: ClassVar[bool] = True
    #: default hyper-parameters (MMRec's config, one point of its grid where it has a grid)
    defaults: ClassVar[dict[str, Any]] = {}
    #: MMRec's hyper-parameter grid: name -> candidate values
    search_space: ClassVar[dict[str, list]] = {}

    def __init__(self, graph: InteractionGraph, features: dict[str, Tensor], **hparams):
        super().__init__()
        unknown = set(hparams) - set(self.defaults)
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown hyper-parameter(s) {sorted(unknown)}; "
                             f"it takes {sorted(self.defaults)}")
        self.hparams = {**self.defaults, **hparams}
        self.n_users, self.n_items = graph.n_users, graph.n_items
        self.feature_keys: set[str] = set()

    def register_feature(self, name: str, value: Tensor, trainable: bool = False) -> None:
        """Keep a feature-derived tensor as a parameter (fine-tuned) or buffer, marked as feature-derived."""
        if trainable:
            self.register_parameter(name, nn.Parameter(value.clone()))
        else:
            self.register_buffer(name, value)
        self.feature_keys.add(name)

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor | None) -> Tensor:
        raise NotImplementedError

    def final_embeddings(self) -> tuple[Tensor, Tensor]:
        """(user (n_users, d), item (n_items, d)) representations whose dot products are the scores."""
        raise NotImplementedError

    def eval_state(self) -> Any:
        return self.final_embeddings()

    def score(self, users: Tensor, state: Any) -> Tensor:
        user_emb, item_emb = state
        return user_emb[users] @ item_emb.T


def bpr_loss(user: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """-mean log sigmoid(<u, i+> - <u, i->): user, pos, neg are (B, d)."""
    return -F.logsigmoid((user * pos).sum(-1) - (user * neg).sum(-1)).mean()


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


def embedding_norm_loss(*embeddings: Tensor) -> Tensor:
    """MMRec's EmbLoss: the sum of the embeddings' Frobenius norms (not squared), over the batch size."""
    return sum(e.norm(p=2) for e in embeddings) / embeddings[-1].shape[0]


def xavier_normal_init(module: nn.Module) -> None:
    """MMRec's default initialisation: Xavier-normal embeddings and linear weights, zero biases."""
    if isinstance(module, (nn.Embedding, nn.Linear)):
        nn.init.xavier_normal_(module.weight)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
