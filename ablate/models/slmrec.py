"""SLMRec (Tao et al., IEEE TMM 2022): self-supervised learning for multimedia recommendation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..graphs import ConstantLGConv, propagate_mean
from .base import Recommender
from .layers import feature_projections, id_table


def _info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Cross-entropy of (B, B) logits a b^T / t with the matching row as the class (in-batch negatives)."""
    logits = a @ b.T / temperature
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


class SLMRec(Recommender):
    r"""One LightGCN per view (IDs, and each modality as item input), fused; InfoNCE plus FAC alignment.

    From the `"Self-supervised Learning for Multimedia Recommendation"
    <https://doi.org/10.1109/TMM.2022.3187556>`_ paper (IEEE TMM).

    .. math::
        \mathbf v^m_i = \mathbf W_m \hat{\mathbf x}^m_i + \mathbf b_m, \quad
        \hat{\mathbf x}^m_i = \mathbf x^m_i / \|\mathbf x^m_i\|, \qquad
        [\mathbf U^k; \mathbf I^k] = \mathrm{mean}_{l \le L}\,\tilde{\mathbf A}^{l}\,[\mathbf e^{user};
        \mathbf Z^k], \quad \mathbf Z^{id} = \mathbf e^{item},\ \mathbf Z^{m} = \mathbf V^m

        \mathbf u = \mathbf W_u [\mathbf U^{id}_u; \mathbf U^{img}_u; \mathbf U^{txt}_u] + \mathbf b_u, \qquad
        \mathbf i = \mathbf W_i [\mathbf I^{id}_i; \mathbf I^{img}_i; \mathbf I^{txt}_i] + \mathbf b_i, \qquad
        \hat y_{ui} = \mathbf u^\top \mathbf i

        \mathcal L = \mathrm{NCE}_\tau(\bar{\mathbf u}, \bar{\mathbf i})
          + \alpha\,\big[\mathrm{NCE}_{\tau_s}(g_1(\mathbf I^{id}), g_2(\mathbf I^{img}))
          + \mathrm{NCE}_{\tau_s}(g_4 g_3 g_1(\mathbf I^{id}), g_5(\mathbf I^{txt}))\big]
          + \tfrac{w}{2} \textstyle\sum_\theta \|\theta\|^2

    NCE_t(a, b): in-batch InfoNCE over the batch's (user, positive) pairs, cross-entropy of a b^T / t with
    the matching row as the class; \bar{·}: L2-normalised rows (main loss only). The second bracket is the
    paper's fine-and-coarse (FAC) task: the ID view is aligned with the image view in d dimensions, then,
    through two more linear maps, with the text view in d/2 dimensions (the audio stage of the paper is
    absent: MMRec drops it). g_1..g_5 are linear; Ã = D^-1/2 A D^-1/2 (MMRec's ``adj_type: pre``).
    With one modality only, the FAC loss is the first (d-dimensional) alignment with that modality.

    Following MMRec (and the authors' code): FAC is the self-supervised task (MMRec's feature-dropout and
    masking paths read an audio branch that does not exist there and do not run); the features are
    L2-normalised rows, frozen; no negatives are sampled (``uses_negatives = False``: MMRec samples them and
    ignores them). MMRec trains SLMRec with Adam ``weight_decay`` 1e-4 while the trainer here has none for
    every model, so the model adds the coupled L2 term w/2 Σ θ² over all its parameters to its loss: the
    same gradient, hence the same Adam steps, as Adam's ``weight_decay=w``. MMRec scores with
    sigmoid(u^T i) from embeddings cached at the last training batch; here u^T i is recomputed at
    evaluation (sigmoid does not change a ranking).

    Cheaper, same math: the id, image and text views share the user embeddings and the graph, so they are
    propagated together as one (N, 3d) matrix (one sparse product per layer instead of three), and fusion
    for the loss is applied to the rows a batch touches.
    Shapes: e^user (n_users, d), e^item (n_items, d), x^m (n_items, F_m), W_m (d, F_m), W_u, W_i (d, 3d).

    Args:
        recdim (int): width d of the user and item ID embeddings. (default: 64)
        layer_num (int): L, propagation layers of each view. (default: 3)
        temp (float): τ of the main InfoNCE. (default: 0.2)
        ssl_alpha (float): α, weight of the FAC loss. (default: 0.1)
        ssl_temp (float): τ_s of the FAC InfoNCE terms. (default: 0.2)
        weight_decay (float): w, the coupled L2 penalty on all parameters. (default: 0.0001)
        learning_rate (float): Adam's learning rate, read by the trainer in place of the training settings'
            ``lr``. (default: 0.001)
    """

    modalities = ("text", "image")
    uses_negatives = False
    # MMRec's SLMRec.yaml; ssl_alpha and ssl_temp defaults as the authors' configuration.
    # search: 80 points (ssl_alpha 5 x ssl_temp 4 x learning_rate 4); MMRec's grid also names ``reg`` (read
    # nowhere by the model: left out, so its 320 points are these 80 repeated)
    defaults = {"recdim": 64, "layer_num": 3, "temp": 0.2, "ssl_alpha": 0.1, "ssl_temp": 0.2,
                "weight_decay": 1e-4, "learning_rate": 1e-3}
    search_space = {"ssl_alpha": [0.01, 0.05, 0.1, 0.5, 1.0], "ssl_temp": [0.1, 0.2, 0.5, 1.0],
                    "learning_rate": [0.0001, 0.001, 0.01, 0.1]}
    departures = ("Adam's weight decay 1e-4 is a coupled L2 term of the loss (the same gradients)",
                  "scores are u.i recomputed at evaluation; MMRec takes sigmoid(u.i) of embeddings cached at the last "
                  "training batch (the same ranking, one optimizer step apart)")

    def __init__(self, graph, features, **hparams):
        super().__init__(graph, features, **hparams)
        d = self.hparams["recdim"]
        self.user_embedding, self.item_embedding = id_table(self.n_users, d), id_table(self.n_items, d)
        # views in MMRec's order: image (v) before text (t); frozen unit-length feature rows
        self.register_features({m: F.normalize(x, dim=1) for m, x in features.items()})
        self.dense = feature_projections(features, self.used, d, nn.init.xavier_uniform_)
        width = d * (len(self.used) + 1)
        self.user_fusion, self.item_fusion = self._linear(width, d), self._linear(width, d)
        # FAC heads: ID <-> first modality in d dims; then (two maps on) ID <-> second modality in d/2 dims
        self.g_id_first, self.g_first = self._linear(d, d), self._linear(d, d)
        if len(self.used) > 1:
            self.g_chain, self.g_chain_second = self._linear(d, d), self._linear(d, d // 2)
            self.g_second = self._linear(d, d // 2)
        self.register_graph("adj", graph.norm_adj)
        self.conv = ConstantLGConv()

    @staticmethod
    def _linear(n_in: int, n_out: int) -> nn.Linear:
        """MMRec's init: Xavier-uniform weight, PyTorch's default bias."""
        layer = nn.Linear(n_in, n_out)
        nn.init.xavier_uniform_(layer.weight)
        return layer

    def views(self) -> tuple[Tensor, Tensor]:
        """Propagated (n_users, V, d) and (n_items, V, d) for the V = 1 + #modalities views (id first)."""
        d = self.hparams["recdim"]
        items = [self.item_embedding] + [self.dense[m](self.feature(m)) for m in self.used]
        n_views = len(items)
        x = torch.cat([self.user_embedding.repeat(1, n_views), torch.cat(items, dim=1)])
        out = propagate_mean(self.conv, x, self.adj, self.hparams["layer_num"]).view(-1, n_views, d)
        return self.split_nodes(out)

    def final_embeddings(self):
        user_views, item_views = self.views()
        return self.user_fusion(user_views.flatten(1)), self.item_fusion(item_views.flatten(1))

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor | None = None) -> Tensor:
        hp = self.hparams
        user_views, item_views = self.views()
        u = F.normalize(self.user_fusion(user_views[users].flatten(1)), dim=1)
        i = F.normalize(self.item_fusion(item_views[pos].flatten(1)), dim=1)
        loss = _info_nce(u, i, hp["temp"])
        views = item_views[pos]  # (B, V, d): id, then the modalities
        id_first = self.g_id_first(views[:, 0])
        ssl = _info_nce(id_first, self.g_first(views[:, 1]), hp["ssl_temp"])
        if len(self.used) > 1:
            chained = self.g_chain_second(self.g_chain(id_first))
            ssl = ssl + _info_nce(chained, self.g_second(views[:, 2]), hp["ssl_temp"])
        decay = sum(p.pow(2).sum() for p in self.parameters())
        return loss + hp["ssl_alpha"] * ssl + 0.5 * hp["weight_decay"] * decay
