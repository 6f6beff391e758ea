"""Propagation patterns shared by the graph models."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def propagate_mean(conv: nn.Module, x: Tensor, adj: Tensor, n_layers: int) -> Tensor:
    """LightGCN: the mean of x, A x, ..., A^L x (A a sparse CSR matrix, `conv` an `LGConv(normalize=False)`)."""
    layers = [x]
    for _ in range(n_layers):
        x = conv(x, adj)
        layers.append(x)
    return torch.stack(layers).mean(0)
