import numpy as np
import torch

from ablate.graphs import InteractionGraph, knn_graph, knn_normalized_adjacency


def test_normalized_adjacency_matches_dense():
    users, items = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2])
    graph = InteractionGraph(users, items, n_users=3, n_items=3)
    a = np.zeros((6, 6))
    for u, i in zip(users, items):
        a[u, 3 + i] = a[3 + i, u] = 1
    d = a.sum(1)
    expected = a / np.sqrt(np.outer(d, d))
    np.testing.assert_allclose(graph.norm_adj.to_dense().numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(graph.interaction_matrix.to_dense().numpy()[users, items], 1)
    assert graph.interaction_matrix.to_dense().sum() == 4


def test_knn_neighbours_are_the_most_similar():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    edges = knn_graph(x, k=2)
    neighbours = {int(s): set() for s in edges[0]}
    for s, t in edges.T.tolist():
        neighbours[s].add(t)
    assert neighbours[0] == {0, 1} and neighbours[2] == {2, 3} and neighbours[4] == {4, 2}


def test_knn_adjacency_is_row_normalised_like_mmrec():
    x = torch.randn(30, 8)
    adj = knn_normalized_adjacency(x, k=5).to_dense()
    assert torch.allclose(adj.sum(1), torch.ones(30))  # every row has k entries of 1/k
    assert ((adj > 0).sum(1) == 5).all()
    assert torch.allclose(adj.diagonal(), torch.full((30,), 0.2))  # an item is its own nearest neighbour


def test_degenerate_features_give_a_finite_deterministic_graph():
    for features in (torch.zeros(12, 4), torch.ones(12, 4)):
        a = knn_normalized_adjacency(features, k=3).to_dense()
        b = knn_normalized_adjacency(features, k=3).to_dense()
        assert torch.isfinite(a).all() and torch.equal(a, b)
        assert torch.allclose(a.sum(1), torch.ones(12))
        assert (a.diagonal() > 0).all()  # ties go to the item itself first


def test_symmetric_lgconv_matches_lgconv():
    from torch_geometric.nn import LGConv

    from ablate.graphs import SymmetricLGConv

    graph = InteractionGraph(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), n_users=3, n_items=3)
    weights = torch.randn(graph.num_nodes, 4)
    outs, grads = [], []
    for conv in (LGConv(normalize=False), SymmetricLGConv()):
        x = torch.randn(graph.num_nodes, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
        out = conv(conv(x, graph.norm_adj), graph.norm_adj)
        (out * weights).sum().backward()
        outs.append(out.detach())
        grads.append(x.grad)
    assert torch.allclose(outs[0], outs[1]) and torch.allclose(grads[0], grads[1])
    dense = graph.norm_adj.to_dense()
    assert torch.equal(dense, dense.T)  # the user-item adjacency is symmetric, as SymmetricLGConv requires
