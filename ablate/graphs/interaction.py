"""The training user-item interaction graph."""
from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
from torch import Tensor, nn

from .propagation import declare_symmetric, to_csr


def sym_norm(edge_index: Tensor, num_nodes: int, eps: float = 0.0) -> Tensor:
    """Edge weights d_src^-1/2 d_dst^-1/2 (degrees counted on `edge_index[0]`); zero-degree safe."""
    deg = torch.bincount(edge_index[0], minlength=num_nodes).to(torch.float32) + eps
    inv_sqrt = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    return inv_sqrt[edge_index[0]] * inv_sqrt[edge_index[1]]


def to_adjacency(edge_index: Tensor, weight: Tensor, num_nodes: int | tuple[int, int]) -> Tensor:
    """A sparse CSR matrix A with A[dst, src] = weight, i.e. `A @ x` aggregates messages src -> dst."""
    shape = (num_nodes, num_nodes) if isinstance(num_nodes, int) else (num_nodes[1], num_nodes[0])
    return to_csr(torch.sparse_coo_tensor(edge_index.flip(0), weight, shape, check_invariants=False))


def bipartite_edge_index(users: Tensor, items: Tensor, n_users: int) -> Tensor:
    """(2, 2E) edge_index of the undirected user-item graph over all nodes (item j is node n_users + j)."""
    items = items + n_users
    return torch.cat([torch.stack([users, items]), torch.stack([items, users])], dim=1)


def bipartite_adjacency(users: Tensor, items: Tensor, n_users: int, num_nodes: int, eps: float = 0.0) -> Tensor:
    """D^-1/2 A D^-1/2 of the undirected graph of (user, item) pairs, (N, N) sparse CSR declared symmetric."""
    edge_index = bipartite_edge_index(users, items, n_users)
    return declare_symmetric(to_adjacency(edge_index, sym_norm(edge_index, num_nodes, eps), num_nodes))


class InteractionGraph:
    """Training interactions of a dataset as tensors on one device.

    users, items: long (E,) training pairs. Nodes of the homogeneous view: users 0..n_users-1, then items.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, device="cpu"):
        self.n_users, self.n_items = int(n_users), int(n_items)
        self.num_nodes = self.n_users + self.n_items
        self.device = torch.device(device)
        self.users = torch.as_tensor(np.asarray(users, dtype=np.int64), device=self.device)
        self.items = torch.as_tensor(np.asarray(items, dtype=np.int64), device=self.device)

    @property
    def num_edges(self) -> int:
        return int(self.users.numel())

    def bipartite_edge_index(self, users: Tensor | None = None, items: Tensor | None = None) -> Tensor:
        """(2, 2E) edge_index of the undirected graph over all nodes (both directions)."""
        return bipartite_edge_index(self.users if users is None else users, self.items if items is None else items,
                                    self.n_users)

    @cached_property
    def edge_index(self) -> Tensor:
        return self.bipartite_edge_index()

    @cached_property
    def norm_adj(self) -> Tensor:
        """D^-1/2 A D^-1/2 of the user-item graph, (N, N) sparse CSR."""
        return self.normalized_adjacency(self.users, self.items)

    def normalized_adjacency(self, users: Tensor, items: Tensor, eps: float = 0.0) -> Tensor:
        """The symmetric-normalised adjacency of a subset of the training edges (e.g. after edge dropout)."""
        return bipartite_adjacency(users, items, self.n_users, self.num_nodes, eps)

    @cached_property
    def user_item_adjacency(self) -> Tensor:
        """R (n_users, n_items) sparse CSR: the user-item block of `norm_adj`, d_u^-1/2 d_i^-1/2 per training
        pair, so `R @ h_items` aggregates item representations into users."""
        deg_u = torch.bincount(self.users, minlength=self.n_users).float()
        deg_i = torch.bincount(self.items, minlength=self.n_items).float()
        weight = deg_u[self.users].pow(-0.5) * deg_i[self.items].pow(-0.5)
        return to_adjacency(torch.stack([self.items, self.users]), weight, (self.n_items, self.n_users))

    @cached_property
    def interaction_matrix(self) -> Tensor:
        """(n_users, n_items) sparse CSR with ones at training pairs."""
        index = torch.stack([self.users, self.items])
        ones = torch.ones(self.num_edges, device=self.device)
        return to_adjacency(index.flip(0), ones, (self.n_items, self.n_users))


class DegreePrunedEdges(nn.Module):
    """FREEDOM's and PGL's degree-sensitive edge pruning of the training graph, as a module (its tensors are
    non-persistent buffers, so it moves with ``.to()``).

    `sample(keep)`: the symmetric-normalised adjacency (degrees + 1e-7) of `keep` training pairs drawn without
    replacement with probability proportional to d_u^-1/2 d_i^-1/2 (degrees + 1e-7; MMRec normalises the
    bipartite n_users x n_items matrix), in the module's floating dtype. Draws use torch's global generator.
    """

    def __init__(self, graph: InteractionGraph):
        super().__init__()
        self.n_users, self.num_nodes, self.num_edges = graph.n_users, graph.num_nodes, graph.num_edges
        deg = torch.bincount(torch.cat([graph.users, graph.items + graph.n_users]), minlength=graph.num_nodes).float()
        deg = deg + 1e-7
        weight = deg[graph.users].pow(-0.5) * deg[graph.items + graph.n_users].pow(-0.5)
        for name, value in (("users", graph.users), ("items", graph.items), ("weight", weight)):
            self.register_buffer(name, value, persistent=False)

    def sample(self, keep: int) -> Tensor:
        kept = torch.multinomial(self.weight, keep, replacement=False)
        adj = bipartite_adjacency(self.users[kept], self.items[kept], self.n_users, self.num_nodes, eps=1e-7)
        return adj if adj.dtype == self.weight.dtype else declare_symmetric(adj.to(self.weight.dtype))
