"""The one model interface every recommender implements.

A model is built from the training graph, the item features it is given (already knocked out: it never
sees which condition it runs under) and its hyper-parameters. The trainer calls:

- ``on_epoch_start(epoch)``: per-epoch work (edge dropout, graph re-sampling, structure learning);
- ``loss(users, pos, neg)``: the training loss of a batch of (user, positive, negative) ids (``neg`` is
  ``None`` for a model with ``uses_negatives = False``);
- ``eval_state()`` once per evaluation, then ``score(users, state, out)`` per user chunk: (B, n_items) scores,
  written into the evaluator's buffer `out`. By default the state is ``final_embeddings()`` and scores are
  dot products.

Hyper-parameters named ``learning_rate`` and ``lr_decay`` (MMRec's ``learning_rate_scheduler``, (gamma, every))
are read by the trainer, not by the model: a model lists them in ``defaults`` / ``search_space`` where MMRec's
config sets or searches them, and they replace the training config's rate and decay for its trials.

Item features reach a model only as ``features`` (modality -> float tensor (n_items, dim)); feature-derived
tensors are registered with ``register_feature`` (``register_features`` for the raw tables of the modalities
present, ``used``) so that ``eval_only`` knockout can swap them after training. Graphs (adjacencies, edge lists,
sampling tables) are registered with ``register_graph``: non-persistent buffers, so ``.to()`` moves them and
``state_dict`` leaves them out. Parts several models share are in `ablate.models.layers`.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..graphs import InteractionGraph


class Recommender(nn.Module):
    #: modalities the model reads (subset of the dataset's); () for an ID-only model. `models.build` refuses
    #: a model with modalities on a dataset that has none of them.
    modalities: ClassVar[tuple[str, ...]] = ()
    #: the order in which the model reads its modalities (``used``): MMRec's, the image first
    modality_order: ClassVar[tuple[str, ...]] = ("image", "text")
    #: True for a model that fuses every one of its modalities and cannot run with one missing
    requires_every_modality: ClassVar[bool] = False
    #: whether the trainer draws a negative item per positive (False: ``loss`` gets ``neg=None``)
    uses_negatives: ClassVar[bool] = True
    #: default hyper-parameters (MMRec's config, one point of its grid where it has a grid)
    defaults: ClassVar[dict[str, Any]] = {}
    #: MMRec's hyper-parameter grid: name -> candidate values
    search_space: ClassVar[dict[str, list]] = {}
    #: whether the scores read the features (False: features shape training only, so an eval_only knockout
    #: cannot change the scores and its rows say nothing)
    scores_read_features: ClassVar[bool] = True
    #: where this implementation departs from MMRec's, one short sentence each (the report lists them)
    departures: ClassVar[tuple[str, ...]] = ()

    def __init__(self, graph: InteractionGraph, features: dict[str, Tensor], **hparams):
        super().__init__()
        unknown = set(hparams) - set(self.defaults)
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown hyper-parameter(s) {sorted(unknown)}; "
                             f"it takes {sorted(self.defaults)}")
        self.hparams = {**self.defaults, **hparams}
        self.n_users, self.n_items = graph.n_users, graph.n_items
        self.feature_keys: set[str] = set()
        #: the modalities present, in `modality_order`
        self.used = [m for m in self.modality_order if m in features and m in self.modalities]
        missing = set(self.modalities) - set(self.used)
        if self.requires_every_modality and missing:
            raise ValueError(f"{type(self).__name__} fuses {' and '.join(self.modalities)} and needs every one; "
                             f"missing {sorted(missing)}")

    def register_features(self, features: dict[str, Tensor], trainable: bool = False) -> None:
        """`register_feature` for each modality in ``used``, as ``<modality>_features``; `feature(m)` reads it."""
        for m in self.used:
            self.register_feature(f"{m}_features", features[m], trainable)

    def feature(self, modality: str) -> Tensor:
        """The feature table of `modality` registered by `register_features`, (n_items, F_m)."""
        return getattr(self, f"{modality}_features")

    def register_graph(self, name: str, adjacency: Tensor | None) -> None:
        """Keep a graph tensor (an adjacency, edge list or sampling table) as a non-persistent buffer: it moves
        with ``.to()``, stays out of ``state_dict`` (it is rebuilt with the model), and a later assignment to
        ``self.<name>`` replaces it (e.g. a graph re-sampled every epoch)."""
        self.register_buffer(name, adjacency, persistent=False)

    def split_nodes(self, nodes: Tensor) -> tuple[Tensor, Tensor]:
        """(user rows, item rows) of a table over the user-item graph's nodes, users first."""
        return nodes[: self.n_users], nodes[self.n_users :]

    def register_feature(self, name: str, value: Tensor, trainable: bool = False) -> None:
        """Keep a feature-derived tensor as a parameter (fine-tuned, a copy of `value`) or buffer, marked as
        feature-derived. A buffer is `value` itself (on the CPU often a view of a table other trials share) and
        is neither trained nor written in place: best-weight snapshots and checkpoints leave it out, and it is
        rebuilt with the model."""
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

    def score(self, users: Tensor, state: Any, out: Tensor | None = None) -> Tensor:
        """(len(users), n_items) scores, written into `out` when given (the evaluator's buffer)."""
        user_emb, item_emb = state
        return torch.mm(user_emb[users], item_emb.T, out=out)
