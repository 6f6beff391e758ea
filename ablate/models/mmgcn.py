"""MMGCN (Wei et al., ACM MM 2019): multi-modal graph convolution network, in MMRec's form."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..graphs import spmm, to_adjacency
from .base import Recommender
from .layers import bpr_loss, node_and_preference_penalty, take_rows

#: MMRec gives the image branch a 256-d latent projection and feeds the text features in raw
LATENT = {"image": 256, "text": None}


class ModalityBranch(nn.Module):
    r"""One modality's three graph-convolution layers over the user-item graph.

    .. math::
        \mathbf x^{(0)} = \mathrm{normalize}([\mathbf p ;\; \mathbf X \text{ or } \mathrm{Linear}(\mathbf X)]),\qquad
        \mathbf h^{(l)} = \sigma(\bar{\mathbf A}\,\mathbf x^{(l)}\mathbf W^{(l)}),\qquad
        \hat{\mathbf x}^{(l)} = \sigma(\mathrm{Linear}^{(l)}(\mathbf x^{(l)})) + \mathbf e

        \mathbf x^{(l+1)} = \sigma(\mathrm{Linear}_g^{(l)}([\mathbf h^{(l)} ; \hat{\mathbf x}^{(l)}]))

    σ = LeakyReLU, Ā = D^-1 A (mean over neighbours), e (N, d) the shared ID embeddings, p the users'
    preference vectors for the modality (width: ``latent`` when given, else the feature width F).
    """

    def __init__(self, n_users: int, feature_dim: int, dim: int, latent: int | None):
        super().__init__()
        width = latent or feature_dim
        self.project = nn.Linear(feature_dim, latent) if latent else None
        # MMRec creates the preferences as plain tensors, not parameters: they are never trained
        self.register_buffer("preference", nn.init.xavier_normal_(torch.empty(n_users, width)))
        widths = [width, dim, dim]
        self.conv_weights = nn.ParameterList(
            [nn.Parameter(nn.init.xavier_normal_(torch.empty(w, w if l == 0 else dim))) for l, w in enumerate(widths)]
        )
        self.linears = nn.ModuleList([nn.Linear(w, dim) for w in widths])
        self.gates = nn.ModuleList([nn.Linear(w + dim, dim) for w in widths])
        for layer in self.linears:
            nn.init.xavier_normal_(layer.weight)
        nn.init.xavier_normal_(self.gates[0].weight)  # MMRec re-initialises only the first gate

    def forward(self, features: Tensor, adj: Tensor, id_embedding: Tensor) -> Tensor:
        items = self.project(features) if self.project is not None else features
        x = F.normalize(torch.cat([self.preference, items]))
        for weight, linear, gate in zip(self.conv_weights, self.linears, self.gates):
            h = F.leaky_relu(spmm(adj, x @ weight))
            x_hat = F.leaky_relu(linear(x)) + id_embedding
            x = F.leaky_relu(gate(torch.cat([h, x_hat], dim=1)))
        return x


class MMGCN(Recommender):
    r"""Per-modality graph convolutions over the user-item graph; the modalities' outputs averaged.

    From the `"MMGCN: Multi-modal Graph Convolution Network for Personalized Recommendation of Micro-video"
    <https://doi.org/10.1145/3343031.3351034>`_ paper (ACM MM 2019).

    .. math::
        \mathbf E = \frac{1}{M}\sum_{m} \mathrm{Branch}_m(\mathbf X^m), \qquad
        \hat y_{ui} = \mathbf E_u^\top \mathbf E_i

    Each branch (`ModalityBranch`) has three layers: mean aggregation of the neighbours, a per-node
    transform plus the ID embedding, and a gate on their concatenation (MMRec's ``concate`` flag is the
    string 'False', hence true: the concatenating gate). The image branch first projects its features to
    256-d; the text branch reads them raw (so its first layer is F_t x F_t), as MMRec.
    Loss: BPR + λ(mean e_u² + mean e_i² over the batch + mean p_image²).

    Follows MMRec where it differs from the paper: the ID embeddings e and the preferences p are created as
    plain tensors, so they stay at their random initialisation (the penalty λ(...) is then a constant: it
    changes the loss value, not the gradients); three layers whatever MMRec's ``n_layers`` (not read, so not
    a hyper-parameter here); the modalities are averaged, not summed. MMRec scores with the representation
    of the last training batch; here the final weights are used (one optimizer step apart).
    Shapes: X^m (n_items, F_m); e (n_users + n_items, d); E (n_users + n_items, d).

    Args:
        embedding_size (int): width d of the ID embeddings and of every layer's output. (default: 64)
        reg_weight (float): λ, weight of the ID and preference penalty. (default: 0.001)
        learning_rate (float): Adam's learning rate, read by the trainer in place of the training settings'
            ``lr``. (default: 0.001)
    """

    modalities = ("text", "image")
    defaults = {"embedding_size": 64, "reg_weight": 1e-3, "learning_rate": 1e-3}
    # search: 30 points, MMRec's MMGCN.yaml grid (reg_weight 6 x learning_rate 5)
    search_space = {"reg_weight": [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
                    "learning_rate": [0.0001, 0.0005, 0.001, 0.005, 0.01]}
    departures = ("scores with the final weights; MMRec with the representation of the last training batch (one "
                  "optimizer step apart)",)

    def __init__(self, graph, features, **hparams):
        super().__init__(graph, features, **hparams)
        d = self.hparams["embedding_size"]
        self.register_features(features)
        self.branches = nn.ModuleDict({m: ModalityBranch(self.n_users, features[m].shape[1], d, LATENT[m])
                                       for m in self.used})
        self.register_buffer("id_embedding", nn.init.xavier_normal_(torch.empty(graph.num_nodes, d)))
        # mean aggregation: A[dst, src] = 1 / in-degree(dst)
        edge_index = graph.edge_index
        deg = torch.bincount(edge_index[1], minlength=graph.num_nodes).float()
        self.register_graph("adj", to_adjacency(edge_index, 1.0 / deg[edge_index[1]], graph.num_nodes))

    def representation(self) -> Tensor:
        outs = [self.branches[m](self.feature(m), self.adj, self.id_embedding) for m in self.used]
        return sum(outs) / len(outs)

    def final_embeddings(self):
        return self.split_nodes(self.representation())

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        user_emb, item_emb = self.final_embeddings()
        loss = bpr_loss(user_emb[users], *take_rows(item_emb, pos, neg))
        image = self.branches["image"].preference if "image" in self.used else None
        reg = node_and_preference_penalty(self.id_embedding, users, torch.cat([pos, neg]) + self.n_users, image)
        return loss + self.hparams["reg_weight"] * reg
