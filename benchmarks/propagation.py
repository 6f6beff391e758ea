"""Which sparse kernel to propagate with: forward + backward of two LightGCN layers on the Amazon Baby graph.

    python benchmarks/propagation.py [--dim 64] [--repeats 7]

Prints the median seconds of each path over the same pre-normalised adjacency (26,495 nodes, 239,348
directed edges for Baby's training split).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch_geometric.nn import LGConv
from torch_geometric.utils import scatter

from ablate.data import TRAIN, load
from ablate.graphs import ConstantLGConv, EdgeSet, InteractionGraph, spmm, sym_norm

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon" / "baby.inter"


def median_seconds(step, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first run is warm-up


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    if not Path(args.data).exists():
        print(f"{args.data} is absent: this benchmark needs the Amazon Baby interactions", file=sys.stderr)
        return 2
    data = load(args.data)
    graph = InteractionGraph(*data.pairs(TRAIN), data.n_users, data.n_items)
    csr = graph.norm_adj
    coo = csr.to_sparse_coo().coalesce()
    edge_index, weight = graph.edge_index, sym_norm(graph.edge_index, graph.num_nodes)
    x = torch.randn(graph.num_nodes, args.dim, requires_grad=True)
    conv, conv_norm, constant_conv = LGConv(normalize=False), LGConv(), ConstantLGConv()
    directed = csr.clone()  # not declared symmetric: spmm builds and caches its transpose
    edges = EdgeSet(edge_index, graph.num_nodes)
    src, dst = edges.index
    edge_weight = torch.rand(src.numel(), requires_grad=True)  # a learned per-edge weight (GRCN)

    def two_layers(propagate):
        def step():
            out = propagate(propagate(x))
            out.sum().backward()
        return step

    paths = {
        "torch.sparse.mm, COO": lambda h: torch.sparse.mm(coo, h),
        "torch.sparse.mm, CSR": lambda h: torch.sparse.mm(csr, h),
        "LGConv(normalize=False), CSR adjacency": lambda h: conv(h, csr),
        "LGConv(normalize=False), edge_index + weights": lambda h: conv(h, edge_index, weight),
        "LGConv(), edge_index (normalises every call)": lambda h: conv_norm(h, edge_index),
        "ConstantLGConv, CSR declared symmetric": lambda h: constant_conv(h, csr),
        "spmm, CSR with cached transpose (any graph)": lambda h: spmm(directed, h),
        "edge weights learned: gather + scatter": lambda h: scatter(edge_weight.unsqueeze(1) * h[src], dst, dim=0,
                                                                     dim_size=graph.num_nodes, reduce="sum"),
        "edge weights learned: EdgeSet.aggregate": lambda h: edges.aggregate(edge_weight, h),
    }
    print(f"Baby graph: {graph.num_nodes} nodes, {edge_index.shape[1]} directed edges, d={args.dim}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats}")
    print(f"{'path':48s} {'seconds':>8s}")
    for name, propagate in paths.items():
        print(f"{name:48s} {median_seconds(two_layers(propagate), args.repeats):8.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
