"""GRCN (Wei et al., ACM MM 2020): graph-refined convolutional network, in MMRec's form."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import softmax

from ..graphs import EdgeSet
from .base import Recommender
from .layers import bpr_loss, node_and_preference_penalty, take_rows


class GRCN(Recommender):
    r"""Edges of the user-item graph re-weighted by modality agreement, then an ID graph convolution on them.

    From the `"Graph-Refined Convolutional Network for Multimedia Recommendation with Implicit Feedback"
    <https://doi.org/10.1145/3394171.3413556>`_ paper (ACM MM 2020).

    Per modality m, with user preferences p^m (n_users, d_C) and item contents c^m = LeakyReLU(W_m x^m_i + b_m),
    both L2-normalised, z^m = [p^m ; c^m] over all nodes:

    .. math::
        \alpha^m_{ji} = \mathrm{softmax}_{j \in N(i)}\,\langle \mathbf z^m_j, \mathbf z^m_i\rangle, \qquad
        \mathbf r^m_i = \mathbf z^m_i + \sum_{j \in N(i)} \alpha^m_{ji}\,\mathbf z^m_j

        w_{ji} = \mathrm{ReLU}\big(\max_m\, \alpha^m_{ji}\,\kappa_{j,m}\big), \qquad
        \mathbf e' = \mathrm{normalize}(\mathbf e),\quad
        \mathbf g = \mathbf e' + \mathbf W\mathbf e' + \mathbf W^2\mathbf e', \qquad
        \mathbf E = [\,\mathbf g \,;\, \mathbf r^{1} \,;\, \dots\,]

    over the undirected edges j -> i; W is the (N, N) matrix of the refined weights w_ji, κ (N, M) a learned
    per-node, per-modality confidence of the message's source node. Scores E_u·E_i.
    Loss: BPR + λ(mean e_u² + mean e_i² (batch) + mean p^m_u² per modality (batch) + mean p^image² (all)).

    Follows MMRec where it differs from the paper: MMRec's routing passes messages from users to items only,
    so its ``n_layers`` routing iterations leave the user preferences unchanged; they are therefore not run
    here (``n_layers`` is not a hyper-parameter) and the preferences enter as normalised. No activation after
    the convolutions, no edge dropout (MMRec's settings). MMRec scores with the representation of the last
    training batch; here the final weights are used (one optimizer step apart).
    Per-edge dot products and weighted aggregations run as sparse products (`ablate.graphs.EdgeSet`): no
    E x d message tensor and no dense N x N gradient for the edge weights.
    Shapes: x^m (n_items, F_m); e (N, d) with N = n_users + n_items; E (N, d + M d_C).

    Args:
        embedding_size (int): width d of the ID embeddings e. (default: 64)
        latent_embedding (int): width d_C of the user preferences and projected item contents of each modality.
            (default: 64)
        reg_weight (float): λ, weight of the ID and preference penalty. (default: 0.001)
        learning_rate (float): Adam's learning rate, read by the trainer in place of the training settings'
            ``lr``. (default: 0.001)
    """

    modalities = ("text", "image")
    defaults = {"embedding_size": 64, "latent_embedding": 64, "reg_weight": 1e-3, "learning_rate": 1e-3}
    # search: 25 points, MMRec's GRCN.yaml grid (reg_weight 5 x learning_rate 5)
    search_space = {"reg_weight": [0.1, 0.01, 0.001, 0.0001, 0.00001], "learning_rate": [1.0, 0.1, 0.01, 0.001, 0.0001]}
    departures = ("scores with the final weights; MMRec with the representation of the last training batch (one "
                  "optimizer step apart)",
                  "routing iterations are not run: in MMRec they leave the user preferences unchanged")

    def __init__(self, graph, features, **hparams):
        super().__init__(graph, features, **hparams)
        hp = self.hparams
        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(graph.num_nodes, hp["embedding_size"])))
        self.preferences = nn.ParameterDict()
        self.projections = nn.ModuleDict()
        self.register_features(features)
        for m in self.used:
            preference = nn.init.xavier_normal_(torch.empty(self.n_users, hp["latent_embedding"]))
            self.preferences[m] = nn.Parameter(preference)
            self.projections[m] = nn.Linear(features[m].shape[1], hp["latent_embedding"])
            nn.init.xavier_normal_(self.projections[m].weight)
        self.confidence = nn.Parameter(nn.init.xavier_normal_(torch.empty(graph.num_nodes, len(self.used))))
        self.edges = EdgeSet(graph.edge_index, graph.num_nodes)  # the undirected edges j -> i, both ways

    def content(self, m: str) -> tuple[Tensor, Tensor]:
        """(r^m (N, d_C), α^m (2E,)) of modality m."""
        items = F.normalize(F.leaky_relu(self.projections[m](self.feature(m))))
        z = torch.cat([F.normalize(self.preferences[m]), items])
        alpha = softmax(self.edges.dot(z, z), self.edges.index[1], num_nodes=z.shape[0])
        return z + self.edges.aggregate(alpha, z), alpha

    def representation(self) -> Tensor:
        reps, alphas = zip(*(self.content(m) for m in self.used))
        src = self.edges.index[0]
        weight = torch.relu((torch.stack(alphas, dim=1) * self.confidence[src]).max(dim=1).values)
        x = F.normalize(self.id_embedding)
        h1 = self.edges.aggregate(weight, x)
        h2 = self.edges.aggregate(weight, h1)
        return torch.cat([x + h1 + h2, *reps], dim=1)

    def final_embeddings(self):
        return self.split_nodes(self.representation())

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        user_emb, item_emb = self.final_embeddings()
        loss = bpr_loss(user_emb[users], *take_rows(item_emb, pos, neg))
        image = self.preferences["image"] if "image" in self.used else None
        reg = node_and_preference_penalty(self.id_embedding, users, torch.cat([pos, neg]) + self.n_users, image)
        reg = reg + sum((self.preferences[m][users] ** 2).mean() for m in self.used)
        return loss + self.hparams["reg_weight"] * reg
