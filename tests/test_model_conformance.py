"""Every registered model passes these automatically: a new model gets them by its registry line."""
import ast
import dataclasses
import inspect
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ablate import knockout, models
from ablate.data import TRAIN
from ablate.graphs import InteractionGraph
from ablate.metrics import score_row_stride
from ablate.trial import TrialConfig, run_trial
from ablate.train import TrainConfig, frozen_features, load_trained_state, snapshot, trained_state

NAMES = sorted(models.MODELS)


def build(name, dataset, features, seed=0, **hparams):
    torch.manual_seed(seed)
    graph = InteractionGraph(*dataset.pairs(TRAIN), dataset.n_users, dataset.n_items)
    return graph, models.build(name, graph, features, hparams)


def scores_of(model, users):
    model.eval()
    with torch.no_grad():
        return model.score(users, model.eval_state())


@pytest.mark.parametrize("name", NAMES)
def test_declares_defaults_and_search_space(name):
    cls = models.get(name)
    assert cls.defaults, f"{name} lists no default hyper-parameters"
    assert set(cls.search_space) <= set(cls.defaults), "search space names a hyper-parameter without a default"
    assert all(isinstance(v, list) and v for v in cls.search_space.values())
    assert set(cls.modalities) <= {"text", "image"}
    assert cls.__doc__ and len(cls.__doc__.strip()) > 40, f"{name} needs its math in the docstring"


def documented_args(doc: str) -> dict[str, tuple[str, str]]:
    """PyG-style ``Args:`` entries of a docstring: name -> (type, default text)."""
    section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    entries = re.split(r"\n\s*(?=\w+ \(\w+\): )", section)
    out = {}
    for entry in entries:
        match = re.match(r"(\w+) \((\w+)\): .*\(default: (.+?)\)\s*$", entry.strip(), re.S)
        if match:
            out[match[1]] = (match[2], match[3])
    return out


@pytest.mark.parametrize("name", NAMES)
def test_docstring_lists_every_hyper_parameter_and_the_paper(name):
    """Each hyper-parameter of `defaults` has an ``Args:`` entry with its type and its actual default; the
    docstring links the paper."""
    cls = models.get(name)
    doc = inspect.getdoc(cls)
    assert re.search(r"From the `\"[^\"]+\"\s+<https?://\S+>`_\s+paper", doc), f"{name}: no paper link"
    args = documented_args(doc)
    assert sorted(args) == sorted(cls.defaults), f"{name}: Args lists {sorted(args)}, defaults {sorted(cls.defaults)}"
    for key, value in cls.defaults.items():
        typ, default = args[key]
        assert typ == type(value).__name__, f"{name}.{key}: documented as {typ}, default is {type(value).__name__}"
        assert ast.literal_eval(default) == value, f"{name}.{key}: documented default {default}, actual {value!r}"


@pytest.mark.parametrize("name", NAMES)
def test_loss_finite_and_decreasing(name, tiny):
    graph, model = build(name, tiny, tiny.select_features())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    users, pos = graph.users, graph.items
    generator = torch.Generator().manual_seed(0)
    losses = []
    for step in range(40):
        model.train()
        model.on_epoch_start(step)
        neg = torch.randint(tiny.n_items, pos.shape, generator=generator) if model.uses_negatives else None
        loss = model.loss(users, pos, neg)
        assert loss.ndim == 0 and torch.isfinite(loss), f"step {step}: loss {loss}"
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), f"loss did not decrease: {losses[:5]} -> {losses[-5:]}"


@pytest.mark.parametrize("name", NAMES)
def test_scores_shape_and_finite(name, tiny):
    _, model = build(name, tiny, tiny.select_features())
    users = torch.tensor([0, 5, 7])
    scores = scores_of(model, users)
    assert scores.shape == (3, tiny.n_items)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("name", NAMES)
def test_scores_written_into_the_evaluators_buffer_are_the_same(name, tiny):
    _, model = build(name, tiny, tiny.select_features())
    model.eval()
    users = torch.arange(tiny.n_users)
    with torch.no_grad():
        state = model.eval_state()
        plain = model.score(users, state)
        out = torch.full((users.numel(), score_row_stride(tiny.n_items)), float("nan"))[:, : tiny.n_items]
        written = model.score(users, state, out)
    assert written.data_ptr() == out.data_ptr(), "scores not written into the buffer"
    assert torch.equal(written, plain), "scores in the evaluator's buffer differ from the plain scores"


def scores_before_and_after_a_step(name, dataset, features, users):
    """Scores at initialisation and after one seeded Adam step: a model may read features only in its
    training loss (BM3), so knockout must show in one of the two."""
    graph, model = build(name, dataset, features, seed=1)
    before = scores_of(model, users)
    model.train()
    model.on_epoch_start(0)
    generator = torch.Generator().manual_seed(0)
    neg = torch.randint(dataset.n_items, graph.items.shape, generator=generator) if model.uses_negatives else None
    torch.manual_seed(2)  # the same dropout masks in every build
    loss = model.loss(graph.users, graph.items, neg)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return before, scores_of(model, users)


@pytest.mark.parametrize("name", NAMES)
def test_knockout_changes_output_unless_id_only(name, tiny):
    real = tiny.select_features()
    users = torch.arange(20)
    base = scores_before_and_after_a_step(name, tiny, real, users)
    for condition in ("text_only", "image_only", "id_only"):
        knocked = scores_before_and_after_a_step(name, tiny, knockout.apply(real, condition, "noise", seed=0), users)
        changed = any(not torch.allclose(a, b) for a, b in zip(base, knocked))
        reads = set(knockout.CONDITIONS[condition]) & set(models.get(name).modalities)
        assert changed == bool(reads), f"{condition}: output {'changed' if changed else 'unchanged'}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("how", ["constant_zero", "constant_one"])
def test_survives_degenerate_features(name, how, tiny):
    features = knockout.apply(tiny.select_features(), "id_only", how, seed=0)
    graph, model = build(name, tiny, features)
    model.on_epoch_start(0)
    neg = torch.randint(tiny.n_items, graph.items.shape) if model.uses_negatives else None
    loss = model.loss(graph.users, graph.items, neg)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(scores_of(model, torch.arange(10))).all()


@pytest.mark.parametrize("name", NAMES)
def test_feature_keys_are_state(name, tiny):
    _, model = build(name, tiny, tiny.select_features())
    assert model.feature_keys <= set(model.state_dict())
    assert bool(model.feature_keys) == bool(model.modalities)


@pytest.mark.parametrize("name", NAMES)
def test_short_trial_eval_only(name, tiny):
    train = TrainConfig(epochs=2, patience=2, ks=(5, 10, 20, 50))
    row = run_trial(tiny, TrialConfig(model=name, condition="image_only", fill="shuffle", phase="eval_only",
                                      seed=0, train=train))
    assert row["status"] == "finished", row["reason"]
    assert 0.0 <= row["test_recall@20"] <= 1.0 and row["epochs"] == 2


def test_no_model_file_imports_another():
    """Shared parts live in `layers` (and `base`): a model file imports neither another model file nor the
    registry."""
    model_modules = {cls.__module__.rsplit(".", 1)[1] for cls in models.MODELS.values()}
    for cls in models.MODELS.values():
        path = Path(inspect.getfile(cls))
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported.add(node.module or "")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ablate.models"):
                imported.add(node.module.split(".")[2] if node.module.count(".") > 1 else "")
        assert not imported & (model_modules | {""}), f"{path.name} imports {sorted(imported & (model_modules | {''}))}"


def plain_tensors(value, where: str, seen: set) -> list[str]:
    """Tensors reachable from `value` outside nn.Module's parameters and buffers (attributes, dicts, lists,
    plain objects): tensors `.to()` would not move."""
    if id(value) in seen:
        return []
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return [where]
    if isinstance(value, torch.nn.Module):
        found = []
        for name, attribute in vars(value).items():
            if name not in ("_parameters", "_buffers", "_modules"):
                found += plain_tensors(attribute, f"{where}.{name}", seen)
        for name, child in value.named_children():
            found += plain_tensors(child, f"{where}.{name}", seen)
        return found
    if isinstance(value, dict):
        return [w for k, v in value.items() for w in plain_tensors(v, f"{where}[{k!r}]", seen)]
    if isinstance(value, (list, tuple, set)):
        return [w for i, v in enumerate(value) for w in plain_tensors(v, f"{where}[{i}]", seen)]
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return [w for k, v in vars(value).items() for w in plain_tensors(v, f"{where}.{k}", seen)]
    return []


@pytest.mark.parametrize("name", NAMES)
def test_every_tensor_is_a_parameter_or_buffer(name, tiny):
    """Graphs and sampling tables are (non-persistent) buffers, so the model moves with `.to()` as a whole."""
    _, model = build(name, tiny, tiny.select_features())
    model.on_epoch_start(0)
    assert plain_tensors(model, name, set()) == []
    graph_buffers = {k for k, _ in model.named_buffers()} - set(model.state_dict())
    assert all("features" not in k for k in graph_buffers), "feature-derived tensors must stay in the state"


@pytest.mark.parametrize("name", NAMES)
def test_every_tensor_follows_to(name, tiny):
    """`.to(torch.float64)` reaches every graph and table (a tensor left behind would mix dtypes): the scores
    stay those of float32 up to rounding, and a training step runs in float64."""
    _, model = build(name, tiny, tiny.select_features())
    users = torch.arange(10)
    before = scores_of(model, users)
    model.to(torch.float64)
    after = scores_of(model, users)
    assert after.dtype == torch.float64
    if name != "LGMRec":  # LGMRec draws Gumbel noise at evaluation too (see its docstring)
        assert torch.allclose(before.double(), after, rtol=1e-4, atol=1e-5)
    model.train()
    model.on_epoch_start(1)
    items = torch.arange(64) % tiny.n_items
    neg = (items + 1) % tiny.n_items if model.uses_negatives else None
    loss = model.loss(torch.arange(64) % tiny.n_users, items, neg)
    assert loss.dtype == torch.float64 and torch.isfinite(loss)


@pytest.mark.parametrize("name", [n for n in NAMES if models.get(n).modalities])
def test_one_modality_builds_unless_every_one_is_required(name, tiny):
    text_only = {"text": tiny.select_features()["text"]}
    if models.get(name).requires_every_modality:
        with pytest.raises(ValueError, match=r"missing \['image'\]"):
            build(name, tiny, text_only)
    else:
        _, model = build(name, tiny, text_only)
        assert model.used == ["text"]
        assert torch.isfinite(scores_of(model, torch.arange(5))).all()


@pytest.mark.parametrize("name", [n for n in NAMES if models.get(n).modalities])
def test_scores_read_features_as_declared(name, tiny):
    """Swapping the feature-derived tensors of the same trained weights (as eval_only does) changes the scores
    exactly when the model declares that its scores read features (BM3's do not)."""
    real = tiny.select_features()
    users = torch.arange(20)
    _, model = build(name, tiny, real)
    _, knocked = build(name, tiny, knockout.apply(real, "id_only", "noise", seed=0))
    knocked.load_state_dict({k: v for k, v in model.state_dict().items() if k not in model.feature_keys},
                            strict=False)
    changed = not torch.allclose(scores_of(model, users), scores_of(knocked, users))
    assert changed == models.get(name).scores_read_features


@pytest.mark.parametrize("name", NAMES)
def test_model_file_states_its_grid_and_size(name):
    """Each model file says how many points its search space has: '# search: N point(s)', N the product."""
    import math
    import re

    source = Path(inspect.getsourcefile(models.get(name))).read_text()
    stated = re.search(r"# search: (\d+) points?\b", source)
    assert stated, f"{name}: no '# search: N points' comment beside its search_space"
    assert int(stated.group(1)) == math.prod(len(v) for v in models.get(name).search_space.values())


def read_only_copy(dataset):
    """`dataset` with its own copies of the feature tables, marked read-only as Ray's object store hands them."""
    features = {m: {v: a.copy() for v, a in variants.items()} for m, variants in dataset.features.items()}
    for variants in features.values():
        for array in variants.values():
            array.setflags(write=False)
    return dataclasses.replace(dataset, features=features)


@pytest.mark.parametrize("name", NAMES)
def test_a_trial_never_writes_its_feature_tables(name, tiny):
    """Built on read-only tables (as a trial gets them from Ray), a model trains two epochs, is checkpointed and
    takes its best weights back; the tables are bit-identical afterwards (a table on the CPU is the model's view
    of the given array, so a write in place would reach every trial sharing it)."""
    data = read_only_copy(tiny)
    before = {m: {v: a.copy() for v, a in variants.items()} for m, variants in data.features.items()}
    states = []
    train = TrainConfig(epochs=2, eval_every=1, patience=2, batch_size=512, ks=(10, 20))
    row = run_trial(data, TrialConfig(model=name, seed=0, train=train), checkpoint_every=1,
                    on_checkpoint=states.append)
    assert row["status"] == "finished", row["reason"]
    assert len(states) == 1
    for m, variants in data.features.items():
        for v, array in variants.items():
            assert not array.flags.writeable and np.array_equal(array, before[m][v]), f"{name} wrote {m}/{v}"


@pytest.mark.parametrize("name", [n for n in NAMES if models.get(n).modalities])
def test_frozen_feature_tables_are_views_and_stay_out_of_the_saved_state(name, tiny):
    """On the CPU a frozen feature table holding the given values is a view of the given array (no copy per trial;
    SLMRec keeps normalised tables, VBPR their concatenation); a fine-tuned one is the model's own copy. Training
    leaves the frozen tables as they are; best-weight snapshots and checkpoints leave them out, and such a state
    loads into a fresh model of the same features."""
    features = read_only_copy(tiny).select_features()
    graph, model = build(name, tiny, features)
    frozen = frozen_features(model)
    for m in model.used:
        if f"{m}_features" not in model.feature_keys:
            continue
        table = model.feature(m).detach()
        shared = np.shares_memory(table.numpy(), features[m])
        if f"{m}_features" not in frozen:
            assert not shared, f"{name} fine-tunes its {m} table in the given array's memory"
        elif np.array_equal(table.numpy(), features[m]):
            assert shared, f"{name}: its frozen {m} table is a copy of the given array"
    tables = {k: v.clone() for k, v in model.state_dict().items() if k in frozen}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(2):
        model.train()
        model.on_epoch_start(step)
        neg = (graph.items + 1) % tiny.n_items if model.uses_negatives else None
        optimizer.zero_grad()
        model.loss(graph.users, graph.items, neg).backward()
        optimizer.step()
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in tables.items()), f"{name} trained a frozen feature table"
    assert not frozen & set(trained_state(model)) and not frozen & set(snapshot(model))
    assert set(trained_state(model)) | frozen == set(model.state_dict())
    buffer = io.BytesIO()
    torch.save(trained_state(model), buffer)
    _, rebuilt = build(name, tiny, features, seed=5)
    load_trained_state(rebuilt, torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    users = torch.arange(10)
    if name != "LGMRec":  # LGMRec draws Gumbel noise at evaluation (see its docstring)
        assert torch.equal(scores_of(model, users), scores_of(rebuilt, users))


def test_frozen_features_are_those_of_models_that_keep_their_features_frozen(tiny):
    features = tiny.select_features()
    _, mmgcn = build("MMGCN", tiny, features)
    _, freedom = build("FREEDOM", tiny, features)
    assert frozen_features(mmgcn) == {"image_features", "text_features"}
    assert frozen_features(build("VBPR", tiny, features)[1]) == {"item_features"}
    assert frozen_features(freedom) == set()  # fine-tuned: parameters, saved as any other
    assert frozen_features(build("BPR", tiny, {})[1]) == set()


def test_a_state_without_a_trained_tensor_is_refused(tiny):
    _, model = build("MMGCN", tiny, tiny.select_features())
    state = snapshot(model)
    del state["id_embedding"]
    with pytest.raises(RuntimeError, match=r"MMGCN: the saved state does not fit the model \(missing \['id_embedding'\]"):
        load_trained_state(model, state)
    state = {**snapshot(model), "extra.weight": torch.zeros(2)}
    with pytest.raises(RuntimeError, match=r"unexpected \['extra.weight'\]"):
        load_trained_state(model, state)
