"""DA-MRS (Xv et al., KDD 2024): denoising and aligning multi-modal recommender systems (on LightGCN)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..graphs import ConstantLGConv, cooccurrence_topk, cosine_rows, item_matrix, sym_norm, propagate_mean
from .base import Recommender
from .layers import id_table, take_rows


def consistent_knn(image: Tensor, text: Tensor, k: int, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """DA-MRS's denoised kNN graphs: (image edge_index, text edge_index), rows i / neighbours j.

    Cosine similarities below their matrix's global mean, in either modality, are zeroed in both; item i then
    keeps its top min(k, c_i) neighbours in each modality, c_i = the number of non-zero text similarities
    left in row i. Computed by row chunks (two passes: the means, then the top-k), never n x n at once.
    """
    n = image.shape[0]
    xs = {"image": cosine_rows(image.double()), "text": cosine_rows(text.double())}
    means = {m: (x @ x.sum(0)).sum() / (n * n) for m, x in xs.items()}  # mean of X X^T without forming it
    k = min(k, n)
    rows, cols = {"image": [], "text": []}, {"image": [], "text": []}
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        sims = {m: xs[m][start:stop] @ xs[m].T for m in xs}
        noisy = (sims["image"] < means["image"]) | (sims["text"] < means["text"])
        for m in sims:
            sims[m][noisy] = 0.0
        keep = (sims["text"] != 0).sum(1).clamp_max(k)  # c_i, at most k
        mask = torch.arange(k, device=image.device).unsqueeze(0) < keep.unsqueeze(1)
        row_ids = torch.arange(start, stop, device=image.device).unsqueeze(1).expand(-1, k)
        for m in sims:
            top = sims[m].topk(k, dim=1).indices
            rows[m].append(row_ids[mask])
            cols[m].append(top[mask])
    return tuple(torch.stack([torch.cat(rows[m]), torch.cat(cols[m])]) for m in ("image", "text"))


def binary_sym_matrix(edge_index: Tensor, n: int) -> Tensor:
    """Binary A[i, j] over the edges, D^-1/2 A D^-1/2 with row counts + 1e-7 (MMRec's DA-MRS)."""
    return item_matrix(edge_index, sym_norm(edge_index, n, eps=1e-7), n)


def symmetric_bernoulli_kl(logit_p: Tensor, logit_q: Tensor) -> Tensor:
    """KL(Bern(p) || Bern(q)) + KL(Bern(q) || Bern(p)) for p = sigmoid(logit_p), q = sigmoid(logit_q).

    The two KLs' log terms combine exactly into (p - q)(logit_p - logit_q): no logarithm to overflow or NaN
    (MMRec's log(sigmoid) form is NaN once a sigmoid saturates to 1 in float32), and far fewer passes.
    """
    return (torch.sigmoid(logit_p) - torch.sigmoid(logit_q)) * (logit_p - logit_q)


class DAMRS(Recommender):
    r"""LightGCN plus three item-item views (denoised image / text kNN, behaviour co-occurrence), with
    neighbour discrimination, user-preference KL alignment and a re-weighted (denoised) BPR.

    From the `"Improving Multi-modal Recommender Systems by Denoising and Aligning Multi-modal Content and User
    Feedback" <https://arxiv.org/abs/2406.12501>`_ paper (KDD 2024).

    .. math::
        \mathbf h^m = (\mathbf S^m)^{L_m}\mathbf e^{item},\ m\in\{t, v, s\},\qquad
        \mathbf E = \mathrm{mean}_{l\le L}\tilde{\mathbf A}^l[\mathbf e^{user};\mathbf e^{item}],\qquad
        \hat y_{ui} = \mathbf E_u^\top\big(\mathbf E_i + \tfrac13\textstyle\sum_m\mathbf h^m_i\big)

        \mathcal L = \mathrm{wBPR} + \lambda_n\,\tfrac13\textstyle\sum_m \mathcal L^m_{nd}
            + \lambda_{kl}\,\mathrm{mean}_{u,i}\big[\mathrm{KL}(p^g_{ui}\Vert p^t_{ui}) + \mathrm{KL}(p^t_{ui}\Vert p^g_{ui})\big]

    S^v, S^t: kNN graphs of the raw features denoised by cross-modal consistency (`consistent_knn`,
    ``knn_k``), binary, D^-1/2 S D^-1/2. S^s: each item, itself, and its ``session_k`` items sharing the
    most training users (at least 2), binary, normalised the same way; DA-MRS builds it offline into
    ``item_graph_dict_2.npy`` (top-2); here it comes from the training interactions at construction.
    wBPR: -mean(w^+ log σ(ŷ_ui - ŷ_uj) + w^- log σ(ŷ_uj - ŷ_ui)), with detached weights from the
    agreement of the three views on (u, i) (mean × exp(-variance)², clamped to [0, 1]) and, where a
    positive looks worse than the batch's negatives on average, w^- = max view score - negatives' mean.
    L_nd (per view m, on the batch's unique items I): InfoNCE-like with 10 cross-view pseudo-positives
    (top of the summed softmax similarities of the other views plus twice its own) and 10 single-view ones,
    temperature 0.2. p^g_ui = σ(E_u · E_i/‖E_i‖), p^t_ui = σ(E_u · h̄_i/‖h̄_i‖) over the batch's unique users
    and items; the symmetric KL of the two Bernoulli distributions is computed as (p - q)(logit p - logit q),
    its exact closed form (MMRec sums two KLs of log(sigmoid) terms: the same value, NaN at saturation).
    Shapes: e^user (n_users, d), e^item (n_items, d), h^m (n_items, d), S^m (n_items, n_items).

    Args:
        embedding_size (int): width d of the user and item ID embeddings. (default: 64)
        n_ui_layers (int): L, propagation layers on the user-item graph. (default: 2)
        n_mm_layers (int): L_m, propagation layers on each item-item view. (default: 1)
        knn_k (int): neighbours per item in the denoised kNN graphs. (default: 10)
        session_k (int): co-occurring items kept per item in the behaviour graph. (default: 2)
        kl_weight (float): λ_kl, weight of the preference alignment (KL) term. (default: 1.0)
        neighbor_weight (float): λ_n, weight of the neighbour discrimination term. (default: 0.001)
        learning_rate (float): Adam's learning rate, read by the trainer in place of the training settings'
            ``lr``. (default: 0.001)
    """

    modalities = ("text", "image")
    requires_every_modality = True
    defaults = {"embedding_size": 64, "n_ui_layers": 2, "n_mm_layers": 1, "knn_k": 10, "session_k": 2,
                "kl_weight": 1.0, "neighbor_weight": 0.001, "learning_rate": 1e-3}
    # search: 1 point, MMRec's DAMRS.yaml grid (one value each, the learning rate included)
    search_space = {"n_ui_layers": [2], "n_mm_layers": [1], "kl_weight": [1.0], "neighbor_weight": [0.001],
                    "learning_rate": [0.001]}
    departures = ("the behaviour (session) item graph is built from the training interactions; MMRec reads "
                  "item_graph_dict_2.npy",)
    views = ("t", "v", "s")  # item-item views: text kNN, image kNN, behaviour co-occurrence
    temperature = 0.2
    n_pseudo = 10  # pseudo-positive neighbours per item, fixed in DA-MRS
    min_cooccurrence = 2  # shared users for a behaviour edge, fixed in DA-MRS's graph builder

    def __init__(self, graph, features, **hparams):
        super().__init__(graph, features, **hparams)
        hp = self.hparams
        d = hp["embedding_size"]
        self.user_embedding, self.item_embedding = id_table(self.n_users, d), id_table(self.n_items, d)
        self.register_features(features)  # frozen (MMRec: from_pretrained(freeze=True)); its projections are unused
        image_edges, text_edges = consistent_knn(features["image"], features["text"], hp["knn_k"])
        co_edges, _ = cooccurrence_topk(graph.users, graph.items, self.n_items, hp["session_k"], self.min_cooccurrence)
        loops = torch.arange(self.n_items, device=graph.device)
        session_edges = torch.cat([torch.stack([loops, loops]), co_edges], dim=1)
        for view, edges in (("t", text_edges), ("v", image_edges), ("s", session_edges)):
            self.register_graph(f"{view}_item_adj", binary_sym_matrix(edges, self.n_items))
        self.register_graph("adj", graph.normalized_adjacency(graph.users, graph.items, eps=1e-7))
        self.conv = ConstantLGConv()

    def forward_all(self) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        out = propagate_mean(self.conv, torch.cat([self.user_embedding, self.item_embedding]), self.adj,
                             self.hparams["n_ui_layers"])
        views = {}
        for m in self.views:
            h = self.item_embedding
            for _ in range(self.hparams["n_mm_layers"]):
                h = self.conv(h, getattr(self, f"{m}_item_adj"))
            views[m] = h
        return out[: self.n_users], out[self.n_users :], views

    def final_embeddings(self):
        user_emb, item_emb, h = self.forward_all()
        return user_emb, item_emb + (h["t"] + h["v"] + h["s"]) / 3

    @torch.no_grad()
    def pseudo_positives(self, items: Tensor, h: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """Per view m, (cross-view, single-view) pseudo-positive item ids (|items|, 10).

        With P^m the row softmax of the cosine similarities of `items` to every item in view m: cross-view =
        top-k of Σ_{m' != m} P^{m'} + 2 P^m (= Σ_all P + P^m); single-view = top-k of P^m without those.
        """
        prob = {m: torch.softmax(F.normalize(v[items], dim=1) @ F.normalize(v, dim=1).T, dim=1) for m, v in h.items()}
        first, *rest = prob.values()
        total = first + rest[0]  # |items| x n_items buffers: summed in place, one scratch for Σ P + P^m
        for p in rest[1:]:
            total.add_(p)
        scratch = torch.empty_like(total)
        k = min(self.n_pseudo, self.n_items)
        out = {}
        for m, own in prob.items():
            cross = torch.add(total, own, out=scratch).topk(k, dim=1).indices
            single = own.scatter_(1, cross, 0.0).topk(k, dim=1).indices  # P^m is not needed after this
            out[m] = (cross, single)
        return out

    def neighbour_discrimination(self, items: Tensor, h: Tensor, cross: Tensor, single: Tensor) -> Tensor:
        anchor = F.normalize(h[items], dim=1) / self.temperature  # 1/t folded in before the |I| x n_items product
        every = F.normalize(h, dim=1)
        cross_score = torch.exp((anchor.unsqueeze(1) * every[cross]).sum(-1)).sum(1)
        single_score = torch.exp((anchor.unsqueeze(1) * every[single]).sum(-1)).sum(1)
        total = (anchor @ every.T).exp_().sum(1)
        return (-torch.log(cross_score / total + 1e-9) - torch.log(single_score / (total - cross_score) + 1e-9)).mean()

    @torch.no_grad()
    def sample_weights(self, u: Tensor, pos: Tensor, neg: Tensor, h: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(w^+, w^-) per batch row from the three views' sigmoid scores of the positive and the negative."""
        p = torch.sigmoid(torch.stack([(u * F.normalize(h[m][pos], dim=-1)).sum(1) for m in ("t", "s", "v")]))
        n = torch.sigmoid(torch.stack([(u * F.normalize(h[m][neg], dim=-1)).sum(1) for m in ("t", "s", "v")]))
        p_mean, n_mean = p.mean(0), n.mean()  # the negatives' mean is over the whole batch, as DA-MRS
        pos_weight = (p_mean * torch.exp(-p.var(0)).pow(2)).clamp(0, 1)
        neg_weight = ((p.max(0).values - n_mean) * (p_mean < n_mean).float()).clamp(0, 1)
        return pos_weight, neg_weight

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        hp = self.hparams
        user_emb, item_emb, h = self.forward_all()
        batch_users = torch.unique(users)
        batch_items = torch.unique(torch.cat([pos, neg]))
        nd = 0.0
        for own, (cross, single) in self.pseudo_positives(batch_items, h).items():
            nd = nd + self.neighbour_discrimination(batch_items, h[own], cross, single)
        mean_view = (h["t"] + h["s"] + h["v"]) / 3
        u = user_emb[batch_users]
        logit_g = u @ F.normalize(item_emb[batch_items], dim=-1).T
        logit_t = u @ F.normalize(mean_view[batch_items], dim=-1).T
        kl = symmetric_bernoulli_kl(logit_g, logit_t).mean()
        u = user_emb[users]
        pos_weight, neg_weight = self.sample_weights(u, pos, neg, h)
        items = item_emb + mean_view
        item_pos, item_neg = take_rows(items, pos, neg)
        diff = (u * item_pos).sum(1) - (u * item_neg).sum(1)
        bpr = -(F.logsigmoid(diff) * pos_weight + F.logsigmoid(-diff) * neg_weight).mean()
        return bpr + hp["neighbor_weight"] * nd / 3 + hp["kl_weight"] * kl
