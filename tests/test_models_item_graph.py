"""The item-item graph family (LATTICE, MGCN, SMORE, DA-MRS, PGL): graph builders against dense hand
computations of MMRec's formulas, and degenerate features that must never pass as a score."""
import math

import numpy as np
import pytest
import torch

from ablate import models
from ablate.data import TRAIN
from ablate.graphs import InteractionGraph, cooccurrence_topk, row_degree_norm, weighted_knn
from ablate.models.damrs import consistent_knn
from ablate.models.pgl import low_rank_principal_graph
from ablate.models.smore import max_pool_graphs
from ablate.train import TrainConfig
from ablate.trial import TrialConfig, run_trial


def dense(edge_index, weight, n):
    a = torch.zeros(n, n, dtype=weight.dtype)
    a.index_put_((edge_index[0], edge_index[1]), weight, accumulate=True)
    return a


def test_weighted_knn_and_degree_norm_match_mmrec_dense_formula():
    torch.manual_seed(0)
    x = torch.randn(25, 6)
    edge_index, weight = weighted_knn(x, k=4)
    got = dense(edge_index, row_degree_norm(edge_index, weight, 25), 25)
    # MMRec: build_sim -> top-k values scattered into zeros -> D^-1/2 A D^-1/2 with row sums
    xn = x / x.norm(dim=1, keepdim=True)
    sim = xn @ xn.T
    val, ind = sim.topk(4, dim=1)
    a = torch.zeros_like(sim).scatter_(1, ind, val)
    d = a.sum(1).pow(-0.5)
    torch.testing.assert_close(got, d[:, None] * a * d[None, :], rtol=1e-5, atol=1e-6)


def test_weighted_knn_weights_carry_gradient():
    x = torch.randn(12, 5, requires_grad=True)
    _, weight = weighted_knn(x, k=3)
    weight.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_cooccurrence_topk_matches_dense_counts():
    rng = np.random.default_rng(0)
    users = torch.tensor(rng.integers(0, 30, 200))
    items = torch.tensor(rng.integers(0, 15, 200))
    edge_index, count = cooccurrence_topk(users, items, 15, k=2, min_count=2)
    r = torch.zeros(30, 15)
    r[users, items] = 1
    c = r.T @ r
    c.fill_diagonal_(0)
    c[c < 2] = 0
    for i in range(15):
        mine = edge_index[1][edge_index[0] == i]
        nonzero = int((c[i] > 0).sum())
        assert mine.numel() == min(2, nonzero)
        if nonzero:
            # the kept counts are the row's largest ones
            torch.testing.assert_close(c[i, mine].sort(descending=True).values, c[i].topk(mine.numel()).values)
            torch.testing.assert_close(count[edge_index[0] == i], c[i, mine])


def test_consistent_knn_matches_damrs_row_loop():
    torch.manual_seed(1)
    image, text = torch.randn(40, 7), torch.randn(40, 5)
    got_v, got_t = consistent_knn(image, text, k=6, chunk_size=16)
    vn, tn = image / image.norm(dim=1, keepdim=True), text / text.norm(dim=1, keepdim=True)
    v_sim, t_sim = (vn @ vn.T).double(), (tn @ tn.T).double()
    mask = (v_sim < v_sim.mean()) | (t_sim < t_sim.mean())
    v_sim[mask], t_sim[mask] = 0, 0
    for i in range(40):
        kk = min(6, int((t_sim[i] != 0).sum()))
        assert set(got_v[1][got_v[0] == i].tolist()) == set(v_sim[i].topk(kk).indices.tolist())
        assert set(got_t[1][got_t[0] == i].tolist()) == set(t_sim[i].topk(kk).indices.tolist())


def test_max_pool_graphs_is_elementwise_max_over_union():
    a = (torch.tensor([[0, 0, 1], [0, 1, 2]]), torch.tensor([0.5, 0.2, 0.7]))
    b = (torch.tensor([[0, 2], [1, 0]]), torch.tensor([0.4, 0.3]))
    edge_index, weight = max_pool_graphs(a, b, 3)
    expected = torch.tensor([[0.5, 0.4, 0.0], [0.0, 0.0, 0.7], [0.3, 0.0, 0.0]])
    torch.testing.assert_close(dense(edge_index, weight, 3), expected)


def test_pgl_global_subgraph_matches_dense_svd():
    users, items = np.array([0, 0, 1, 1, 2, 3, 3, 4]), np.array([0, 1, 1, 2, 3, 0, 4, 2])
    graph = InteractionGraph(users, items, n_users=5, n_items=5)
    adj = graph.norm_adj
    got = low_rank_principal_graph(adj, rank=8, threshold=1e-3).to_dense().double()
    u, s, vt = np.linalg.svd(adj.to_dense().double().numpy())
    prod = s[:2] * s[6:8]  # q = 8 // 4 = 2 from the top and the bottom of the 8 largest
    p = u[:, :2] @ np.diag(prod) @ vt[:2]
    p[np.abs(p) < 1e-3] = 0
    np.testing.assert_allclose(got.numpy(), p, atol=1e-5)


def test_lattice_learned_graph_gets_gradient_on_the_epochs_first_batch_only(tiny):
    torch.manual_seed(0)
    graph = InteractionGraph(*tiny.pairs(TRAIN), tiny.n_users, tiny.n_items)
    model = models.build("LATTICE", graph, tiny.select_features())
    model.on_epoch_start(0)
    grads = []
    for _ in range(2):
        model.zero_grad()
        model.loss(graph.users[:50], graph.items[:50], graph.items[50:100]).backward()
        grads.append(sum(float(p.grad.abs().sum()) for p in model.projections.parameters() if p.grad is not None))
    assert grads[0] > 0 and grads[1] == 0


@pytest.mark.parametrize("name", ["LATTICE", "MGCN", "SMORE"])
def test_constant_zero_is_never_a_silent_zero(name, tiny):
    """The paper's constant-zero artefact (exactly 0.0000): a trial must finish with real scores or collapse."""
    train = TrainConfig(epochs=2, patience=2, ks=(5, 10, 20, 50))
    row = run_trial(tiny, TrialConfig(model=name, condition="id_only", fill="constant_zero", seed=0, train=train))
    assert row["status"] in ("finished", "collapsed")
    if row["status"] == "collapsed":
        assert row["reason"], "a collapsed trial must say why"
        return
    metrics = [v for k, v in row.items() if k.startswith("test_") and isinstance(v, float)]
    assert metrics and all(math.isfinite(v) for v in metrics)
    assert max(metrics) > 0, f"{name} finished with all-zero metrics under constant_zero"


def test_info_nce_matches_the_logsumexp_form_and_its_gradients():
    from ablate.models.layers import info_nce

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 5, generator=gen), torch.randn(7, 5, generator=gen)
    y[3] = 2.5 * x[3]  # a perfectly aligned pair: cosine 1, the largest logit
    results = []
    for form in ("fused", "reference"):
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        if form == "fused":
            loss = info_nce(a, b, 0.2)
        else:
            logits = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T / 0.2
            loss = (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()
        (3.0 * loss).backward()
        results.append((loss.detach(), a.grad, b.grad))
    for fused, reference in zip(*results):
        assert torch.allclose(fused, reference, atol=1e-5)


def test_damrs_symmetric_kl_is_the_sum_of_both_bernoulli_kls():
    from ablate.models.damrs import symmetric_bernoulli_kl

    gen = torch.Generator().manual_seed(0)
    a, b = 3 * torch.randn(50, generator=gen, dtype=torch.float64), 3 * torch.randn(50, generator=gen, dtype=torch.float64)
    p, q = torch.sigmoid(a), torch.sigmoid(b)
    both = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q)) + q * torch.log(q / p) + (1 - q) * torch.log((1 - q) / (1 - p))
    assert torch.allclose(symmetric_bernoulli_kl(a, b), both)
    assert torch.isfinite(symmetric_bernoulli_kl(torch.tensor([40.0]), torch.tensor([-40.0]))).all()  # saturated
