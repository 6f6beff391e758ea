"""Trial checkpoints without Ray: a run resumed from any checkpoint ends with exactly the uninterrupted run's
metrics, curve and best epoch (on CPU), for models with per-epoch random work (edge dropout, sampled graphs)."""
import io
import json

import pytest
import torch

from ablate.data import TRAIN
from ablate.graphs import InteractionGraph
from ablate.models import build
from ablate.train import TrainConfig, fit, make_evaluators, seed_everything
from ablate.trial import TrialConfig, run_trial

pytestmark = pytest.mark.cluster

OUTCOME = ("status", "reason", "best_epoch", "epochs", "valid", "test", "curve")


def serialised(state: dict) -> dict:
    """The state as a retried trial gets it back: written with torch.save, read with weights_only=True."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)


def fit_bpr(tiny, cfg, **kwargs):
    seed_everything(0, torch.device("cpu"))
    graph = InteractionGraph(*tiny.pairs(TRAIN), tiny.n_users, tiny.n_items)
    model = build("BPR", graph, {}, {})
    valid, test = make_evaluators(tiny, cfg, "cpu")
    return fit(model, graph, valid, test, cfg, **kwargs)


def test_fit_resumed_from_each_checkpoint_ends_as_the_uninterrupted_run(tiny):
    cfg = TrainConfig(epochs=7, eval_every=1, patience=20, batch_size=256, ks=(10, 20))
    states, points = [], []
    full = fit_bpr(tiny, cfg, checkpoint_every=2, on_checkpoint=lambda s: states.append(serialised(s)),
                   on_eval=points.append)
    # evaluations 2, 4, 6 (the 7th ends training: no checkpoint there)
    assert [s["next_epoch"] for s in states] == [2, 4, 6]
    assert len(points) == 7 and full.epochs == 7
    for state in states:
        assert len(state["result"]["curve"]) == state["next_epoch"]  # the state includes its evaluation
        seen = []
        resumed = fit_bpr(tiny, cfg, resume=state, on_eval=seen.append)
        assert [p["epoch"] for p in seen] == list(range(state["next_epoch"], 7))  # only the epochs left
        for name in OUTCOME:
            assert getattr(resumed, name) == getattr(full, name), (state["next_epoch"], name)
    # the run really learned something between checkpoints: the states differ
    assert not torch.equal(states[0]["model"]["user_embedding.weight"], states[-1]["model"]["user_embedding.weight"])


def test_no_checkpoint_at_the_evaluation_that_ends_training(tiny):
    cfg = TrainConfig(epochs=50, eval_every=1, patience=1, batch_size=256, ks=(10, 20))
    states = []
    result = fit_bpr(tiny, cfg, checkpoint_every=1, on_checkpoint=states.append)
    assert result.epochs < 50  # early stopping ended it
    assert [s["next_epoch"] for s in states] == list(range(1, result.epochs))


def test_a_checkpoint_of_another_configuration_is_refused(tiny):
    cfg = TrainConfig(epochs=3, batch_size=256, ks=(10, 20))
    states = []
    fit_bpr(tiny, cfg, checkpoint_every=1, on_checkpoint=lambda s: states.append(serialised(s)))
    other = TrainConfig(epochs=3, batch_size=128, ks=(10, 20))
    with pytest.raises(ValueError, match="batch_size"):
        fit_bpr(tiny, other, resume=states[0])


@pytest.mark.parametrize("model", ["FREEDOM", "DualGNN", "LATTICE"])
def test_trial_resumed_from_a_checkpoint_has_the_uninterrupted_metrics(tiny, model):
    # FREEDOM drops edges, DualGNN samples a user graph each epoch, LATTICE rebuilds its item graph
    config = TrialConfig(model=model, condition="text_only", fill="noise", seed=0,
                         train=TrainConfig(epochs=4, patience=10, batch_size=512, ks=(10, 20)))
    states = []
    full = run_trial(tiny, config, checkpoint_every=2, on_checkpoint=lambda s: states.append(serialised(s)))
    assert [s["next_epoch"] for s in states] == [2]
    resumed = run_trial(tiny, config, resume=states[0])
    metrics = [k for k in full if k.startswith(("valid_", "test_"))]
    assert metrics and {k: resumed[k] for k in metrics} == {k: full[k] for k in metrics}
    assert (resumed["curve"], resumed["best_epoch"], resumed["epochs"]) == (full["curve"], full["best_epoch"],
                                                                          full["epochs"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA resume path is checked on a GPU")
def test_a_trial_on_cuda_resumes_from_its_checkpoint(tiny):
    """On a GPU the state carries the CUDA generator too; kernels may sum in another order, so this checks that
    the resumed run continues where it stopped and ends, not bit-equality."""
    config = TrialConfig(model="FREEDOM", condition="text_only", fill="noise", seed=0, device="cuda",
                         train=TrainConfig(epochs=4, patience=10, batch_size=512, ks=(10, 20)))
    states = []
    full = run_trial(tiny, config, checkpoint_every=2, on_checkpoint=lambda s: states.append(serialised(s)))
    assert "cuda" in states[0]["rng"] and states[0]["model"]
    resumed = run_trial(tiny, config, resume=states[0])
    assert resumed["status"] == full["status"] == "finished" and resumed["epochs"] == full["epochs"] == 4
    assert [p["epoch"] for p in json.loads(resumed["curve"])] == [0, 1, 2, 3]
