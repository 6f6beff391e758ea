"""BPR-MF (Rendle et al., UAI 2009), ID only."""
from __future__ import annotations

from torch import Tensor, nn

from .base import Recommender
from .layers import bpr_loss, embedding_norm_loss, take_rows, xavier_normal_init


class BPR(Recommender):
    r"""Matrix factorisation trained with the BPR loss.

    From the `"BPR: Bayesian Personalized Ranking from Implicit Feedback" <https://arxiv.org/abs/1205.2618>`_
    paper (UAI 2009).

    .. math::
        \hat y_{ui} = \mathbf{e}_u^\top \mathbf{e}_i, \qquad
        \mathcal L = -\log\sigma(\hat y_{ui^+} - \hat y_{ui^-})
                     + \lambda\,(\|\mathbf e_u\| + \|\mathbf e_{i^+}\| + \|\mathbf e_{i^-}\|)/B

    Shapes: user embeddings (n_users, d), item embeddings (n_items, d), d = ``embedding_size``.

    Args:
        embedding_size (int): width d of the user and item ID embeddings. (default: 64)
        reg_weight (float): λ, weight of the embedding norm penalty. (default: 0.0001)
    """

    defaults = {"embedding_size": 64, "reg_weight": 1e-4}
    # search: 7 points, MMRec's BPR.yaml grid (reg_weight 7)
    search_space = {"reg_weight": [2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5]}

    def __init__(self, graph, features, **hparams):
        super().__init__(graph, features, **hparams)
        d = self.hparams["embedding_size"]
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_embedding = nn.Embedding(self.n_items, d)
        self.apply(xavier_normal_init)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        u, (i, j) = self.user_embedding(users), take_rows(self.item_embedding.weight, pos, neg)
        return bpr_loss(u, i, j) + self.hparams["reg_weight"] * embedding_norm_loss(u, i, j)

    def final_embeddings(self):
        return self.user_embedding.weight, self.item_embedding.weight
