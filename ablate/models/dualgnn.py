"""DualGNN (Wang et al., IEEE TMM 2021): dual graph neural network for multimedia recommendation."""
from __future__ import annotations

import torch
from torch import Tensor

from .layers import DualGraphRecommender, modality_weights


class DualGNN(DualGraphRecommender):
    r"""Single-modality GCNs fused per user, then smoothed over a user-user co-occurrence graph.

    From the `"DualGNN: Dual Graph Neural Network for Multimedia Recommendation"
    <https://doi.org/10.1109/TMM.2021.3138298>`_ paper (IEEE TMM).

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
    only, u' = r^m_u. Scores use the representations of the current epoch's sampled user graph, as MMRec; the
    graph is part of the model's state, so the best epoch's state is scored with its own graph.
    Shapes: X^m (n_items, F_m); r^m (n_users + n_items, d); w (n_users, 2).

    Args:
        embedding_size (int): width d of the preferences and of each modality's representation. (default: 64)
        n_layers (int): L, propagation layers of each modality GCN. (default: 2)
        user_k (int): k, co-interacting users kept per user. (default: 40)
        reg_weight (float): λ, weight of the preference and fusion-weight penalty. (default: 0.001)
        learning_rate (float): Adam's learning rate, read by the trainer in place of the training settings'
            ``lr``. (default: 0.001)
    """

    modalities = ("text", "image")
    defaults = {"embedding_size": 64, "n_layers": 2, "user_k": 40, "reg_weight": 1e-3, "learning_rate": 1e-3}
    # search: 25 points, MMRec's DualGNN.yaml grid (reg_weight 5 x learning_rate 5; its aggr_mode has the one
    # value "add", the only mode here)
    search_space = {"reg_weight": [0.1, 0.01, 0.001, 0.0001, 0.00001],
                    "learning_rate": [0.1, 0.01, 0.001, 0.0001, 0.00001]}
    departures = ("the user co-occurrence graph is built from the training interactions; MMRec reads a pre-made file",)

    def __init__(self, graph, features, **hparams):
        super().__init__(graph, features, **hparams)
        self.weight_i = modality_weights(self.n_items)  # regularised only, never used (as MMRec)
        self.on_epoch_start(0)

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
        return self.user_graph(users), items

    def penalty(self, users: Tensor) -> Tensor:
        return super().penalty(users) + (self.weight_i**2).mean()
