import numpy as np
import pytest
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


def _two_layers_and_grad(conv, adj, x0, weights):
    x = x0.clone().requires_grad_()
    out = conv(conv(x, adj), adj)
    (out * weights).sum().backward()
    return out.detach(), x.grad


def test_constant_lgconv_matches_lgconv_on_symmetric_and_directed_graphs():
    from torch_geometric.nn import LGConv

    from ablate.graphs import ConstantLGConv, to_adjacency, transposed

    graph = InteractionGraph(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), n_users=3, n_items=3)
    dense = graph.norm_adj.to_dense()
    assert torch.equal(dense, dense.T)  # declared symmetric: its transpose is itself, not a copy
    assert transposed(graph.norm_adj) is graph.norm_adj
    directed = to_adjacency(torch.tensor([[0, 1, 2, 3, 4, 0], [1, 2, 3, 4, 0, 3]]),
                            torch.tensor([0.5, 1.0, 2.0, -1.0, 0.25, 3.0]), 6)  # A[dst, src], not symmetric
    assert not torch.equal(directed.to_dense(), directed.to_dense().T)
    gen = torch.Generator().manual_seed(0)
    for adj in (graph.norm_adj, directed):
        x0, weights = torch.randn(adj.shape[0], 4, generator=gen), torch.randn(adj.shape[0], 4, generator=gen)
        out, grad = _two_layers_and_grad(LGConv(normalize=False), adj, x0, weights)
        out_c, grad_c = _two_layers_and_grad(ConstantLGConv(), adj, x0, weights)
        assert torch.allclose(out, out_c, atol=1e-6) and torch.allclose(grad, grad_c, atol=1e-6)
        assert torch.allclose(out, (adj.to_dense() @ adj.to_dense() @ x0), atol=1e-6)


def test_sparse_dense_mm_is_torch_sparse_mm_whatever_its_output_held():
    """The products of the graph layer are `torch.sparse.mm`'s exact values, over CSR and COO, with an empty row
    and a strided dense operand; the fresh output's initial values (here NaN) never reach the result."""
    from ablate.graphs.propagation import sparse_dense_mm

    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(5, 7, generator=gen) * (torch.rand(5, 7, generator=gen) < 0.4)
    dense[2] = 0  # a row without entries
    x = torch.randn(3, 7, generator=gen).T  # (7, 3), not contiguous
    for adj in (dense.to_sparse_csr(), dense.to_sparse_coo()):
        expected = torch.sparse.mm(adj, x)
        assert torch.equal(sparse_dense_mm(adj, x), expected)
        garbage = torch.full((5, 3), float("nan"))
        assert torch.equal(torch.addmm(garbage, adj, x, beta=0, out=garbage), expected)


def test_spmm_with_learned_values_keeps_their_gradient():
    from ablate.graphs import spmm, to_adjacency

    values = torch.tensor([0.5, 1.0, 2.0], requires_grad=True)
    adj = to_adjacency(torch.tensor([[0, 1, 2], [1, 2, 0]]), values, 3)
    assert adj.requires_grad
    spmm(adj, torch.ones(3, 2)).sum().backward()
    assert torch.allclose(values.grad, torch.full((3,), 2.0))


def test_edge_set_matches_gather_scatter_values_and_gradients():
    from torch_geometric.utils import scatter

    from ablate.graphs import EdgeSet

    gen = torch.Generator().manual_seed(0)
    n, d = 25, 5
    pairs = torch.randperm(n * n, generator=gen)[:140]  # distinct (source, target) pairs, unsorted
    edges = EdgeSet(torch.stack([pairs % n, pairs // n]), n)
    src, dst = edges.index
    assert torch.equal(torch.sort(dst * n + src).values, dst * n + src)  # sorted by target, then source
    a, b = (torch.randn(n, d, generator=gen, requires_grad=True) for _ in range(2))
    w = torch.rand(src.numel(), generator=gen, requires_grad=True)
    g_dot, g_agg = torch.randn(src.numel(), generator=gen), torch.randn(n, d, generator=gen)
    ref_dot = (a[dst] * b[src]).sum(-1)
    ref_agg = scatter(w.unsqueeze(1) * b[src], dst, dim=0, dim_size=n, reduce="sum")
    ref_grads = torch.autograd.grad((ref_dot * g_dot).sum() + (ref_agg * g_agg).sum(), [a, b, w])
    dot, agg = edges.dot(a, b), edges.aggregate(w, b)
    assert torch.allclose(dot, ref_dot, atol=1e-5) and torch.allclose(agg, ref_agg, atol=1e-5)
    grads = torch.autograd.grad((dot * g_dot).sum() + (agg * g_agg).sum(), [a, b, w])
    for ref, got in zip(ref_grads, grads):
        assert torch.allclose(ref, got, atol=1e-5)
    with pytest.raises(ValueError, match="duplicate edges"):
        EdgeSet(torch.tensor([[0, 1, 0], [1, 2, 1]]), 3)
