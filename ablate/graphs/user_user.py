"""User-user co-occurrence graphs: each user's top-k co-interacting users, from the training interactions.

DualGNN and DRAGON aggregate a user's representation from the users who share the most training items with
it. MMRec reads this graph from a pre-made file; here it is computed from the interaction graph itself:

    C = R R^T with the diagonal removed (C[u, v] = |items(u) ∩ items(v)|, R the (n_users, n_items) 0/1 matrix)

and each user keeps its neighbours v with C[u, v] > 0, sorted by count (descending), ties towards lower user
ids, at most ``k``. `user_cooccurrence_topk` returns them padded to a fixed width, so that a model samples or
weights them with tensor operations. The product is a sparse matrix product, on the graph's device; the
result is cached in memory, keyed by the training pairs (a digest) and k, so that the trials of one process
on the same data build it once (Amazon Baby: a few seconds on 2 CPU cores).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
from torch import Tensor

from .interaction import InteractionGraph, to_adjacency


def user_cooccurrence_pairs(graph: InteractionGraph) -> tuple[Tensor, Tensor]:
    """(edge_index (2, P), counts (P,)): every ordered pair (u, v), u != v, of users sharing training items."""
    r = torch.sparse_coo_tensor(
        torch.stack([graph.users, graph.items]),
        torch.ones(graph.num_edges, device=graph.device),
        (graph.n_users, graph.n_items),
        check_invariants=False,
    ).coalesce()
    # repeated training pairs count once, as in a 0/1 interaction matrix
    r = torch.sparse_coo_tensor(r.indices(), torch.ones_like(r.values()), r.shape, check_invariants=False).coalesce()
    c = torch.sparse.mm(r, r.t()).coalesce()
    index, counts = c.indices(), c.values()
    off_diagonal = index[0] != index[1]
    return index[:, off_diagonal], counts[off_diagonal]


_CACHE: OrderedDict[tuple, tuple[Tensor, Tensor, Tensor]] = OrderedDict()
_CACHE_SIZE = 4


def _key(graph: InteractionGraph, k: int) -> tuple:
    digest = hashlib.sha1()
    for t in (graph.users, graph.items):
        digest.update(t.detach().cpu().numpy().tobytes())
    return graph.n_users, graph.n_items, int(k), str(graph.device), digest.hexdigest()


def user_cooccurrence_topk(graph: InteractionGraph, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each user's top-``k`` co-interacting users (cached; the tensors returned are shared: do not modify).

    Returns ``neighbours`` (n_users, k) long, ``counts`` (n_users, k) float (shared items) and ``size``
    (n_users,) long, the number of real neighbours min(k, #{v : C[u, v] > 0}); entries at positions >= size
    are padding (neighbour 0, count 0).
    """
    key = _key(graph, k)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    result = _build_topk(graph, k)
    _CACHE[key] = result
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return result


def _build_topk(graph: InteractionGraph, k: int) -> tuple[Tensor, Tensor, Tensor]:
    n = graph.n_users
    index, counts = user_cooccurrence_pairs(graph)
    # order by (user asc, count desc, neighbour asc): the coalesced pairs are already in (user, neighbour)
    # order, so one stable sort on (user, count desc) packed in an int64 key suffices
    counts = counts.round().to(torch.long)
    top = int(counts.max()) + 1 if counts.numel() else 1
    order = torch.argsort(index[0] * top + (top - 1 - counts), stable=True)
    rows, cols, vals = index[0][order], index[1][order], counts[order]
    starts = torch.zeros(n + 1, dtype=torch.long, device=rows.device)
    starts[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    rank = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    keep = rank < k
    neighbours = torch.zeros(n, k, dtype=torch.long, device=rows.device)
    weights = torch.zeros(n, k, dtype=torch.float32, device=rows.device)
    neighbours[rows[keep], rank[keep]] = cols[keep]
    weights[rows[keep], rank[keep]] = vals[keep].to(torch.float32)
    size = (starts[1:] - starts[:-1]).clamp_max(k)
    return neighbours, weights, size


def sample_user_graph(neighbours: Tensor, counts: Tensor, size: Tensor) -> Tensor:
    """DualGNN's and DRAGON's per-epoch user graph: (n_users, n_users) sparse CSR W, h_u = sum_v W[u, v] x_v.

    Every user with at least one co-interacting user gets exactly k = ``neighbours.shape[1]`` slots: its
    top-k, or, with fewer, its neighbours padded by redrawing from its slots so far (slot p copies a uniform
    slot among 0..p-1, as MMRec's sampler, so the padding differs per call). Slot weights are the softmax of
    the slots' co-occurrence counts (a redrawn neighbour counts once per slot). Users without co-interacting
    users get an empty row. Draws use torch's global generator.
    """
    n, k = neighbours.shape
    index, logits = neighbours.clone(), counts.clone()
    for p in range(1, k):
        rows = ((size > 0) & (size <= p)).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        pick = torch.randint(p, (rows.numel(),), device=index.device)
        index[rows, p] = index[rows, pick]
        logits[rows, p] = logits[rows, pick]
    weight = torch.softmax(logits, dim=1) * (size > 0).unsqueeze(1)
    user = torch.arange(n, device=index.device).repeat_interleave(k)
    # messages neighbour -> user; duplicate slots of one neighbour add up (MMRec's gather-and-weight sum)
    return to_adjacency(torch.stack([index.reshape(-1), user]), weight.reshape(-1), n)
