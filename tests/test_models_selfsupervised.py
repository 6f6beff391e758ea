"""BM3 and SLMRec against dense hand computations of MMRec's formulation; the no-negatives training path;
the ID-only references (BPR, LightGCN) under every condition and fill."""
import pytest
import torch
import torch.nn.functional as F

from ablate import knockout, models, train
from ablate.data import TRAIN
from ablate.graphs import InteractionGraph
from ablate.models.bm3 import BM3
from ablate.trial import TrialConfig, run_trial
from ablate.train import TrainConfig, fit, make_evaluators


def graph_of(dataset):
    return InteractionGraph(*dataset.pairs(TRAIN), dataset.n_users, dataset.n_items)


def features_of(dataset, names=("text", "image")):
    return {m: torch.tensor(x) for m, x in dataset.select_features().items() if m in names}


def dense_lightgcn(adj, users, items, n_layers):
    """mean_{l<=L} A^l [users; items], A dense."""
    x = torch.cat([users, items])
    layers = [x]
    for _ in range(n_layers):
        x = adj @ x
        layers.append(x)
    out = torch.stack(layers).mean(0)
    return out[: users.shape[0]], out[users.shape[0]:]


def test_bm3_loss_matches_mmrec_full_table_formulation(tiny):
    torch.manual_seed(0)
    graph = graph_of(tiny)
    model = BM3(graph, features_of(tiny), dropout=0.0, n_layers=2)  # no dropout: the targets are deterministic
    users, pos = graph.users[:50], graph.items[:50]
    loss = model.loss(users, pos, None)
    loss.backward()
    got_grad = model.predictor.weight.grad.clone()
    model.zero_grad()

    # MMRec: propagate, project the whole feature tables, predictor on everything, then index the batch
    adj = graph.norm_adj.to_dense()
    u_all, i_all = dense_lightgcn(adj, model.user_embedding, model.item_embedding, 2)
    i_all = i_all + model.item_embedding
    target_u, target_i = u_all.detach()[users], i_all.detach()[pos]

    def gap(a, b):
        return 1 - F.cosine_similarity(a, b, dim=-1).mean()

    expected = gap(model.predictor(u_all)[users], target_i) + gap(model.predictor(i_all)[pos], target_u)
    expected = expected + 0.1 * (u_all.norm() + i_all.norm()) / tiny.n_items
    for m in ("text", "image"):
        z_all = model.projections[m](getattr(model, f"{m}_features"))
        online = model.predictor(z_all)[pos]
        expected = expected + 2.0 * (gap(online, target_i) + gap(online, z_all.detach()[pos]))
    expected.backward()
    assert torch.allclose(loss, expected, atol=1e-5)
    assert torch.allclose(got_grad, model.predictor.weight.grad, atol=1e-5)


def test_bm3_scores_do_not_read_features_but_training_does(tiny):
    graph = graph_of(tiny)
    noise = {m: torch.tensor(x) for m, x in knockout.apply(tiny.select_features(), "id_only", "noise", 0).items()}
    real = features_of(tiny)
    built = []
    for features in (real, noise):
        torch.manual_seed(0)
        built.append(BM3(graph, features))
    (a_user, a_item), (b_user, b_item) = (m.final_embeddings() for m in built)
    assert torch.equal(a_user @ a_item.T, b_user @ b_item.T)
    torch.manual_seed(1)
    loss_real = built[0].loss(graph.users, graph.items, None)
    torch.manual_seed(1)
    loss_noise = built[1].loss(graph.users, graph.items, None)
    assert not torch.allclose(loss_real, loss_noise)


class RecordingBM3(BM3):
    """BM3 that records the negatives the trainer hands it."""

    seen: list = []

    def loss(self, users, pos, neg):
        type(self).seen.append(neg)
        return super().loss(users, pos, neg)


def test_no_negatives_path_end_to_end(tiny, monkeypatch):
    def no_sampling(self, users):
        raise AssertionError("the trainer sampled negatives for a model with uses_negatives = False")

    monkeypatch.setattr(train.NegativeSampler, "sample", no_sampling)
    graph = graph_of(tiny)
    torch.manual_seed(0)
    model = RecordingBM3(graph, features_of(tiny))
    RecordingBM3.seen = []
    cfg = TrainConfig(epochs=3, batch_size=256, patience=3)
    valid, test = make_evaluators(tiny, cfg, "cpu")
    result = fit(model, graph, valid, test, cfg)
    assert result.status == "finished", result.reason
    assert result.epochs == 3 and len(result.curve) == 3
    assert RecordingBM3.seen and all(neg is None for neg in RecordingBM3.seen)
    assert len(RecordingBM3.seen) == 3 * -(-graph.num_edges // 256)  # every batch of every epoch
    assert 0.0 <= result.test["recall@20"] <= 1.0


@pytest.mark.parametrize("name", ["BM3", "SLMRec"])
@pytest.mark.parametrize("fill", ["constant_zero", "constant_one"])
def test_degenerate_fill_trial_finishes_or_says_why(name, fill, tiny):
    row = run_trial(tiny, TrialConfig(model=name, condition="id_only", fill=fill, seed=0,
                                      train=TrainConfig(epochs=3, patience=3)))
    assert row["status"] in ("finished", "collapsed")
    if row["status"] == "finished":
        assert 0.0 <= row["test_recall@20"] <= 1.0
    else:
        assert row["reason"]


def test_slmrec_matches_separate_view_propagation(tiny):
    torch.manual_seed(0)
    graph = graph_of(tiny)
    model = models.get("SLMRec")(graph, features_of(tiny), weight_decay=0.0)
    adj = graph.norm_adj.to_dense()
    views_u, views_i = [], []
    items = {"id": model.item_embedding}
    for m in ("image", "text"):  # MMRec's order: v, then t
        items[m] = model.dense[m](F.normalize(torch.tensor(tiny.select_features()[m]), dim=1))
    for key in ("id", "image", "text"):
        u, i = dense_lightgcn(adj, model.user_embedding, items[key], 3)
        views_u.append(u)
        views_i.append(i)
    user = model.user_fusion(torch.cat(views_u, dim=1))
    item = model.item_fusion(torch.cat(views_i, dim=1))
    got_user, got_item = model.final_embeddings()
    assert torch.allclose(got_user, user, atol=1e-5) and torch.allclose(got_item, item, atol=1e-5)

    users, pos = graph.users[:40], graph.items[:40]

    def nce(a, b, t):
        return F.cross_entropy(a @ b.T / t, torch.arange(a.shape[0]))

    main = nce(F.normalize(user[users], dim=1), F.normalize(item[pos], dim=1), 0.2)
    x_id = model.g_id_first(views_i[0][pos])
    fac = nce(x_id, model.g_first(views_i[1][pos]), 0.2)
    fac = fac + nce(model.g_chain_second(model.g_chain(x_id)), model.g_second(views_i[2][pos]), 0.2)
    assert torch.allclose(model.loss(users, pos, None), main + 0.1 * fac, atol=1e-5)


def test_slmrec_weight_decay_term_equals_adams_weight_decay(tiny):
    """MMRec trains SLMRec with Adam(weight_decay=1e-4); the loss term must give the same step."""
    graph = graph_of(tiny)
    users, pos = graph.users[:64], graph.items[:64]
    stepped = []
    for in_loss, in_adam in ((1e-2, 0.0), (0.0, 1e-2)):
        torch.manual_seed(0)
        model = models.get("SLMRec")(graph, features_of(tiny), weight_decay=in_loss)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=in_adam)
        for _ in range(3):
            optimizer.zero_grad()
            model.loss(users, pos, None).backward()
            optimizer.step()
        stepped.append(model.state_dict())
    for key, value in stepped[0].items():
        assert torch.allclose(value, stepped[1][key], atol=1e-5), key


def test_slmrec_one_modality(tiny):
    torch.manual_seed(0)
    graph = graph_of(tiny)
    model = models.get("SLMRec")(graph, features_of(tiny, ("text",)))
    loss = model.loss(graph.users[:64], graph.items[:64], None)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.item_fusion.weight.shape == (64, 128)


@pytest.mark.parametrize("name", ["BPR", "LightGCN"])
def test_id_only_references_identical_under_every_condition_and_fill(name, tiny):
    """The report places every model's id_only next to these: they must run under every condition and
    fill, and never see a feature (same metrics everywhere)."""
    assert models.get(name).modalities == ()
    short = TrainConfig(epochs=2, patience=2)
    rows = [run_trial(tiny, TrialConfig(model=name, condition="baseline", seed=0, train=short))]
    for condition in ("text_only", "image_only", "id_only"):
        for fill in knockout.FILLS:
            rows.append(run_trial(tiny, TrialConfig(model=name, condition=condition, fill=fill, seed=0,
                                                    train=short)))
    rows.append(run_trial(tiny, TrialConfig(model=name, condition="id_only", fill="noise", phase="eval_only",
                                            seed=0, train=short)))
    assert all(row["status"] == "finished" for row in rows), [row["reason"] for row in rows]
    metrics = [{k: v for k, v in row.items() if k.startswith(("valid_", "test_"))} for row in rows]
    assert all(m == metrics[0] for m in metrics[1:])
    assert metrics[0]["test_recall@20"] > 0.0
