"""The CUDA path: sparse kernels agree with the CPU, and every registered model trains and scores on a GPU.

Skipped, with the reason printed, where no CUDA device is present (the CPU path is what the other tests check).
"""
import pytest
import torch

from ablate import models
from ablate.graphs import ConstantLGConv, EdgeSet, InteractionGraph, to_adjacency, transposed
from ablate.train import TrainConfig
from ablate.trial import TrialConfig, run_trial

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path is not checked")


def _sparse_results(device: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    n, d = 40, 8
    pairs = torch.randperm(n * n, generator=gen)[:300]
    edge_index = torch.stack([pairs % n, pairs // n])
    weight = torch.rand(300, generator=gen)
    x0 = torch.randn(n, d, generator=gen)
    w0 = torch.rand(300, generator=gen)
    adj = to_adjacency(edge_index.to(device), weight.to(device), n)  # directed: spmm's cached transpose
    x = x0.to(device).requires_grad_()
    w = w0.to(device).requires_grad_()
    conv, edges = ConstantLGConv(), EdgeSet(edge_index.to(device), n)
    out = conv(conv(x, adj), adj) + edges.aggregate(w, x) + edges.dot(x, x).sum()
    out.square().sum().backward()
    return [t.detach().cpu() for t in (out, x.grad, w.grad)]


def test_sparse_kernels_on_cuda_match_the_cpu():
    for cpu, cuda in zip(_sparse_results("cpu"), _sparse_results("cuda")):
        assert torch.allclose(cpu, cuda, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(models.MODELS))
def test_every_model_trains_and_scores_on_cuda(name, tiny):
    train = TrainConfig(epochs=2, patience=2, ks=(5, 10, 20, 50))
    row = run_trial(tiny, TrialConfig(model=name, condition="text_only", fill="noise", seed=0, train=train,
                                      device="cuda"))
    assert row["device"].startswith("cuda"), row["device"]
    assert row["status"] == "finished", row["reason"]
    assert 0.0 <= row["test_recall@20"] <= 1.0 and row["epochs"] == 2


def test_interaction_graph_on_cuda_is_symmetric_without_a_copy():
    graph = InteractionGraph(torch.tensor([0, 1, 2, 2]).numpy(), torch.tensor([1, 0, 2, 1]).numpy(), 3, 3,
                             device="cuda")
    assert graph.norm_adj.device.type == "cuda" and transposed(graph.norm_adj) is graph.norm_adj
