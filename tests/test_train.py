import numpy as np
import pytest
import torch
from torch import nn

from ablate.data import TRAIN, Dataset
from ablate.graphs import InteractionGraph
from ablate.models import build
from ablate.models.base import Recommender
from ablate.results import ResultStore
from ablate.train import NegativeSampler, TrainConfig, fit, make_evaluators
from ablate.trial import TrialConfig, run_trial

SHORT = TrainConfig(epochs=4, patience=3)


def metric_values(row):
    return {k: v for k, v in row.items() if k.startswith(("valid_", "test_"))}


def test_same_seed_same_metrics_other_seed_differs(tiny):
    config = dict(model="FREEDOM", condition="text_only", fill="noise", train=SHORT)
    a = run_trial(tiny, TrialConfig(seed=0, **config))
    b = run_trial(tiny, TrialConfig(seed=0, **config))
    c = run_trial(tiny, TrialConfig(seed=1, **config))
    assert metric_values(a) == metric_values(b) and a["curve"] == b["curve"]
    assert metric_values(a) != metric_values(c)
    assert a["key"] == b["key"] != c["key"]


@pytest.mark.parametrize("model", ["VBPR", "FREEDOM"])
def test_id_only_does_not_depend_on_feature_content(tiny, model):
    other = Dataset(**{**tiny.__dict__, "features": {
        m: {v: np.random.default_rng(9).standard_normal(x.shape).astype(np.float32) for v, x in vs.items()}
        for m, vs in tiny.features.items()}})
    config = TrialConfig(model=model, condition="id_only", fill="noise", seed=0, train=SHORT)
    assert metric_values(run_trial(tiny, config)) == metric_values(run_trial(other, config))
    baseline = TrialConfig(model=model, condition="baseline", seed=0, train=SHORT)
    assert metric_values(run_trial(tiny, baseline)) != metric_values(run_trial(other, baseline))


def test_negative_sampler_avoids_training_items(tiny):
    graph = InteractionGraph(*tiny.pairs(TRAIN), tiny.n_users, tiny.n_items)
    sampler = NegativeSampler(graph)
    users = graph.users.repeat(20)
    neg = sampler.sample(users)
    assert not sampler.is_positive(users, neg).any()
    assert sampler.is_positive(graph.users, graph.items).all()
    assert neg.min() >= 0 and neg.max() < tiny.n_items


class Exploding(Recommender):
    """Test model: its loss becomes NaN after a few steps (a diverging model)."""

    defaults = {"after": 3}

    def __init__(self, graph, features, **hp):
        super().__init__(graph, features, **hp)
        self.weight = nn.Parameter(torch.ones(1))
        self.steps = 0

    def loss(self, users, pos, neg):
        self.steps += 1
        return self.weight * (float("nan") if self.steps > self.hparams["after"] else 1.0)

    def final_embeddings(self):
        return torch.zeros(self.n_users, 2), torch.zeros(self.n_items, 2)


class Constant(Exploding):
    """Test model: finite loss, all-equal scores (an embedding collapse)."""

    defaults = {"after": 10**9}


@pytest.mark.parametrize("cls, reason", [(Exploding, "non-finite loss"), (Constant, "all-equal scores")])
def test_collapse_is_flagged_not_scored(tiny, cls, reason):
    graph = InteractionGraph(*tiny.pairs(TRAIN), tiny.n_users, tiny.n_items)
    cfg = TrainConfig(epochs=3, batch_size=256)
    valid, test = make_evaluators(tiny, cfg, "cpu")
    result = fit(cls(graph, {}), graph, valid, test, cfg)
    assert result.status == "collapsed" and reason in result.reason
    assert result.test == {}


def test_early_stopping_and_best_epoch(tiny):
    row = run_trial(tiny, TrialConfig(model="BPR", seed=0, train=TrainConfig(epochs=200, patience=2, lr=0.05)))
    curve = __import__("json").loads(row["curve"])
    scores = [p["valid_recall@20"] for p in curve]
    assert row["epochs"] < 200 and row["epochs"] == len(curve)
    assert row["best_epoch"] == curve[int(np.argmax(scores))]["epoch"]
    assert row["valid_recall@20"] == max(scores)
    # MMRec's rule: stop when more than `patience` evaluations pass without improvement (cur_step > stopping_step)
    best = int(np.argmax(scores))
    assert len(scores) - 1 - best == 3 and all(s <= max(scores) for s in scores[best + 1:])


def test_learning_rate_decays_as_mmrec_and_model_hparams_reach_the_trainer(tiny):
    from ablate.train import make_optimizer, make_scheduler

    cfg = TrainConfig(lr=0.01, lr_decay=(0.96, 50))
    model = build("BPR", InteractionGraph(*tiny.pairs(TRAIN), tiny.n_users, tiny.n_items), tiny.select_features())
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    rates = []
    for _ in range(101):
        rates.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    # MMRec's LambdaLR: lr * 0.96 ** (epoch / 50), stepped after every epoch
    assert rates[0] == 0.01 and rates[50] == pytest.approx(0.01 * 0.96) and rates[100] == pytest.approx(0.01 * 0.96**2)
    assert rates[25] == pytest.approx(0.01 * 0.96**0.5)
    assert make_scheduler(optimizer, TrainConfig()) is None
    # a model's learning_rate and lr_decay replace the training config's
    applied = SHORT.with_model_hparams({"learning_rate": 0.005, "lr_decay": [0.5, 1], "reg_weight": 1.0})
    assert applied.lr == 0.005 and applied.lr_decay == (0.5, 1) and applied.epochs == SHORT.epochs
    assert TrainConfig(lr=0.1).with_model_hparams({"reg_weight": 1.0}).lr == 0.1
    with pytest.raises(ValueError, match="lr_decay"):
        TrainConfig(lr_decay=(1.5, 50))
    # and they reach the trainer: another learning rate, another run
    given = run_trial(tiny, TrialConfig(model="LATTICE", seed=0, hparams={"learning_rate": 0.005,
                                                                            "lr_decay": [0.5, 1]}, train=SHORT))
    other = run_trial(tiny, TrialConfig(model="LATTICE", seed=0, hparams={"learning_rate": 0.001,
                                                                            "lr_decay": [0.5, 1]}, train=SHORT))
    assert given["curve"] != other["curve"]


def test_degenerate_trial_is_finished_and_flagged(tiny):
    """A model that cannot learn (learning rate 1e-12) ends below the popularity ranking: finished, flagged."""
    from ablate.metrics import popularity_scores
    from ablate.train import popularity_metrics

    frozen = run_trial(tiny, TrialConfig(model="BPR", seed=0, train=TrainConfig(epochs=3, patience=3, lr=1e-12)))
    trained = run_trial(tiny, TrialConfig(model="BPR", seed=0, train=TrainConfig(epochs=60, patience=60, lr=0.05,
                                                                                batch_size=256)))
    assert frozen["status"] == "finished" and frozen["degenerate"]
    assert frozen["valid_recall@20"] < frozen["popularity_valid"]
    assert trained["status"] == "finished" and not trained["degenerate"]
    assert trained["valid_recall@20"] > trained["popularity_valid"]
    # the floor is the popularity ranking's valid metric under the same evaluation
    valid, _ = make_evaluators(tiny, TrainConfig(), "cpu")
    counts = popularity_scores(tiny.pairs(TRAIN)[1], tiny.n_items)
    direct, _ = valid.evaluate(lambda users, out: counts.repeat(users.numel(), 1))
    assert frozen["popularity_valid"] == direct["recall@20"] == popularity_metrics(tiny, valid)["recall@20"]


@pytest.mark.parametrize("name", ["DualGNN", "DRAGON", "LGMRec"])
def test_evaluation_is_a_function_of_the_restored_state(tiny, name):
    """The state restored at the best epoch scores valid exactly as it did at that epoch (sampled user graph in
    the state; stochastic evaluation seeded), and evaluating leaves the training random stream alone."""
    from ablate.train import evaluate, seed_everything

    seed_everything(0, torch.device("cpu"))
    graph = InteractionGraph(*tiny.pairs(TRAIN), tiny.n_users, tiny.n_items)
    model = build(name, graph, tiny.select_features())
    valid, test = make_evaluators(tiny, SHORT, "cpu")
    cfg = TrainConfig(epochs=6, patience=6)
    result = fit(model, graph, valid, test, cfg)
    assert result.status == "finished" and result.best_epoch < 5, "the best epoch must not be the last"
    again, _ = evaluate(model, valid, seed=0)  # fit evaluates under the trial's seed, 0 here
    assert again == result.valid
    state = torch.get_rng_state()
    evaluate(model, valid, seed=0)
    assert torch.equal(state, torch.get_rng_state())


def test_eval_only_equals_retrain_for_baseline_and_differs_under_knockout(tiny):
    base = run_trial(tiny, TrialConfig(model="FREEDOM", seed=0, train=SHORT))
    eval_only = run_trial(tiny, TrialConfig(model="FREEDOM", condition="id_only", fill="constant_zero",
                                            phase="eval_only", seed=0, train=SHORT))
    # same training (on real features), same curve; only the final evaluation sees knocked-out features
    assert eval_only["curve"] == base["curve"]
    assert metric_values(eval_only) != metric_values(base)


def test_result_rows_append_and_skip(tmp_path, tiny):
    store = ResultStore(tmp_path / "results")
    config = TrialConfig(model="BPR", seed=0, train=TrainConfig(epochs=1))
    row = run_trial(tiny, config)
    store.append(row)
    store.append({**row, "finished_at": "9999"})  # a racing duplicate: the first row wins
    frame = store.read()
    assert len(frame) == 1 and frame.loc[0, "key"] == config.key()
    assert store.done_keys() == {config.key()}
    assert frame.loc[0, "test_recall@20"] == row["test_recall@20"]
    assert not list((tmp_path / "results").glob(".*.tmp"))


def test_config_validation():
    with pytest.raises(ValueError, match="condition: expected one of .*got 'ko2'"):
        TrialConfig(condition="ko2")
    with pytest.raises(ValueError, match="valid_metric: expected .*got 'auc'"):
        TrainConfig(valid_metric="auc")
    graph = InteractionGraph(np.array([0]), np.array([0]), 1, 1)
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['layers'\]"):
        build("BPR", graph, {}, {"layers": 3})
    assert TrialConfig(condition="baseline", fill="shuffle").key() == TrialConfig(condition="baseline").key()


def test_freed_memory_is_kept_for_reuse_where_the_c_library_is_glibc():
    import platform

    from ablate.train import retain_freed_memory

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert retain_freed_memory() is glibc
