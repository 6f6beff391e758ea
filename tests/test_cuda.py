"""The CUDA path: sparse kernels agree with the CPU, and every registered model trains and scores on a GPU.

Skipped, with the reason printed, where no CUDA device is present (the CPU path is what the other tests check).
"""
import pytest
import torch

from ablate import models
from ablate.data import TRAIN
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


@pytest.mark.parametrize("name", list(models.MODELS))
def test_model_built_on_cpu_moves_to_cuda_with_to(name, tiny):
    """Graphs are buffers: `.to("cuda")` moves every tensor a model holds, and it scores as on the CPU."""
    graph = InteractionGraph(*tiny.pairs(TRAIN), tiny.n_users, tiny.n_items)
    torch.manual_seed(0)
    model = models.build(name, graph, tiny.select_features())
    model.eval()
    users = torch.arange(10)
    with torch.no_grad():
        cpu_scores = model.score(users, model.eval_state())
        model.to("cuda")
        assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"cuda"}
        cuda_scores = model.score(users.cuda(), model.eval_state()).cpu()
    if name != "LGMRec":  # LGMRec draws Gumbel noise at evaluation too (see its docstring)
        assert torch.allclose(cpu_scores, cuda_scores, rtol=1e-4, atol=1e-5)
    model.train()
    model.on_epoch_start(1)
    items = graph.items[:64].cuda()
    neg = torch.randint(tiny.n_items, items.shape, device="cuda") if model.uses_negatives else None
    assert torch.isfinite(model.loss(graph.users[:64].cuda(), items, neg))
