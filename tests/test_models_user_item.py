"""User-item graph family (MMGCN, GRCN, DualGNN, LGMRec, DRAGON): graph builders and MMRec behaviours."""
import numpy as np
import torch

from ablate import models
from ablate.data import TRAIN
from ablate.graphs import InteractionGraph, sample_user_graph, user_cooccurrence_topk


def dense_topk(users, items, n_users, n_items, k):
    r = np.zeros((n_users, n_items))
    r[users, items] = 1
    c = r @ r.T
    np.fill_diagonal(c, 0)
    out = []
    for u in range(n_users):
        order = sorted((v for v in range(n_users) if c[u, v] > 0), key=lambda v: (-c[u, v], v))[:k]
        out.append((order, [c[u, v] for v in order]))
    return out


def test_user_cooccurrence_topk_matches_dense_counts():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 40, 300), rng.integers(0, 30, 300)
    users = np.append(users, [40, 40])  # repeated pair: counts once; user 41 has no items at all
    items = np.append(items, [29, 29])
    graph = InteractionGraph(users, items, 42, 30)
    neighbours, counts, size = user_cooccurrence_topk(graph, k=6)
    expected = dense_topk(users, items, 42, 30, 6)
    for u, (order, values) in enumerate(expected):
        assert int(size[u]) == len(order)
        assert neighbours[u, : len(order)].tolist() == order
        assert counts[u, : len(order)].tolist() == values
        assert (counts[u, len(order):] == 0).all()
    assert int(size[41]) == 0
    # cached by content: the same pairs give the same tensors, other pairs a fresh build
    assert user_cooccurrence_topk(InteractionGraph(users, items, 42, 30), k=6)[0] is neighbours
    other = user_cooccurrence_topk(InteractionGraph(users[:-3], items[:-3], 42, 30), k=6)[0]
    assert other is not neighbours


def test_sampled_user_graph_weights():
    # user 0 shares 2 items with user 1 and 1 item with user 2; users 1 and 2 share nothing; user 3 is alone
    users = np.array([0, 0, 0, 1, 1, 2, 3])
    items = np.array([0, 1, 2, 0, 1, 2, 5])
    graph = InteractionGraph(users, items, 4, 6)
    neighbours, counts, size = user_cooccurrence_topk(graph, k=3)
    torch.manual_seed(0)
    w = sample_user_graph(neighbours, counts, size).to_dense()
    assert torch.allclose(w.sum(1), torch.tensor([1.0, 1.0, 1.0, 0.0]))  # softmax rows; a loner gets none
    # user 0 has 2 real neighbours, padded to 3 slots by redrawing one of them
    assert w[0, 0] == 0 and w[0, 3] == 0
    copy_1 = torch.softmax(torch.tensor([2.0, 1.0, 2.0]), 0)  # slot 2 redrew user 1 (2 shared items)
    copy_2 = torch.softmax(torch.tensor([2.0, 1.0, 1.0]), 0)  # slot 2 redrew user 2 (1 shared item)
    candidates = [torch.stack([copy_1[0] + copy_1[2], copy_1[1]]), torch.stack([copy_2[0], copy_2[1] + copy_2[2]])]
    assert any(torch.allclose(w[0, 1:3], c) for c in candidates)
    # users 1 and 2 each have user 0 only: all three slots are user 0
    assert w[1, 0] == 1 and w[2, 0] == 1


def test_dualgnn_fuses_like_mmrec(tiny):
    """MMRec adds text to image in place before fusing: slot 1 holds image + text."""
    graph = InteractionGraph(*tiny.pairs(TRAIN), tiny.n_users, tiny.n_items)
    torch.manual_seed(0)
    model = models.build("DualGNN", graph, tiny.select_features())
    image, text = torch.randn(tiny.n_users + tiny.n_items, 64), torch.randn(tiny.n_users + tiny.n_items, 64)
    fused = model.fuse_users([image, text])
    w = model.weight_u.detach()[:, :, 0]
    expected = w[:, :1] * (image + text)[: tiny.n_users] + w[:, 1:] * text[: tiny.n_users]
    assert torch.allclose(fused, expected, atol=1e-6)


def test_grcn_attention_is_a_softmax_per_node(tiny):
    graph = InteractionGraph(*tiny.pairs(TRAIN), tiny.n_users, tiny.n_items)
    model = models.build("GRCN", graph, tiny.select_features())
    _, alpha = model.content("text")
    totals = torch.zeros(graph.num_nodes).index_add_(0, model.edges.index[1], alpha)
    has_edges = torch.bincount(graph.edge_index[1], minlength=graph.num_nodes) > 0
    assert torch.allclose(totals[has_edges], torch.ones(int(has_edges.sum())), atol=1e-5)


def test_mmgcn_keeps_mmrec_untrained_id_embeddings(tiny):
    """MMRec's MMGCN never registers its ID embeddings and preferences with the optimizer."""
    graph = InteractionGraph(*tiny.pairs(TRAIN), tiny.n_users, tiny.n_items)
    model = models.build("MMGCN", graph, tiny.select_features())
    trained = {id(p) for p in model.parameters()}
    assert id(model.id_embedding) not in trained
    assert all(id(b.preference) not in trained for b in model.branches.values())
    rows = model.adj.to_dense().sum(1)  # mean aggregation
    assert torch.allclose(rows[rows > 0], torch.ones(int((rows > 0).sum())))


def test_info_nce_with_candidates_matches_the_formula_and_its_gradients():
    """LGMRec's form: every user / item is a negative candidate; MMRec sums over the batch rows."""
    from ablate.models.layers import info_nce

    n = torch.nn.functional.normalize
    gen = torch.Generator().manual_seed(1)
    x, y, z = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen), torch.randn(12, 8, generator=gen)
    results = []
    for form in ("fused", "reference"):
        a, b, all_b = (t.clone().requires_grad_() for t in (x, y, z))
        if form == "fused":
            loss = info_nce(a, b, 0.2, candidates=all_b) * 5
        else:
            pos = torch.exp((n(a) * n(b)).sum(1) / 0.2)
            total = torch.exp(n(a) @ n(all_b).T / 0.2).sum(1)
            loss = -torch.log(pos / total).sum()
        loss.backward()
        results.append((loss.detach(), a.grad, b.grad, all_b.grad))
    for fused, reference in zip(*results):
        assert torch.allclose(fused, reference, rtol=1e-5, atol=1e-6)


def test_bpr_and_norm_losses_match_autograd_of_their_formulas():
    """The losses with their own backward give the values and gradients of autograd over the plain formulas, and
    a zero embedding gets gradient 0 from the norm penalty (as autograd's norm gives), not NaN."""
    from ablate.models.layers import bpr_loss, embedding_norm_loss

    gen = torch.Generator().manual_seed(2)
    values = [torch.randn(7, 4, generator=gen, dtype=torch.float64) for _ in range(3)]
    values.append(torch.zeros(7, 4, dtype=torch.float64))
    results = []
    for form in ("fused", "reference"):
        u, i, j, zero = (t.clone().requires_grad_() for t in values)
        if form == "fused":
            loss = bpr_loss(u, i, j) + 0.3 * embedding_norm_loss(u, i, j, zero)
        else:
            loss = (-torch.nn.functional.logsigmoid((u * i).sum(-1) - (u * j).sum(-1)).mean()
                    + 0.3 * sum(e.norm(p=2) for e in (u, i, j, zero)) / 7)
        loss.backward()
        results.append((loss.detach(), u.grad, i.grad, j.grad, zero.grad))
    for fused, reference in zip(*results):
        assert torch.allclose(fused, reference, rtol=1e-10, atol=1e-12)
    assert torch.equal(results[0][-1], torch.zeros(7, 4, dtype=torch.float64))


def test_dragon_item_graph_survives_constant_features(tiny):
    graph = InteractionGraph(*tiny.pairs(TRAIN), tiny.n_users, tiny.n_items)
    zeros = {m: np.zeros_like(x) for m, x in tiny.select_features().items()}
    model = models.build("DRAGON", graph, zeros)
    adj = model.item_adj.to_dense()
    assert torch.isfinite(adj).all() and ((adj > 0).sum(1) >= 10).all()
