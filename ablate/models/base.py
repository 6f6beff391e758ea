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


def embedding_norm_loss(*embeddings: Tensor) -> Tensor:
    """MMRec's EmbLoss: the sum of the embeddings' Frobenius norms (not squared), over the batch size."""
    return sum(e.norm(p=2) for e in embeddings) / embeddings[-1].shape[0]


def xavier_normal_init(module: nn.Module) -> None:
    """MMRec's default initialisation: Xavier-normal embeddings and linear weights, zero biases."""
    if isinstance(module, (nn.Embedding, nn.Linear)):
        nn.init.xavier_normal_(module.weight)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
