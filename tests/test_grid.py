"""The grid spec (no Ray): presets, files, validation messages, expansion into cells, hyper-parameter choice."""
import json
import textwrap
from pathlib import Path

import pytest

from ablate import knockout
from ablate.data import load
from ablate.grid import GridSpec, HParamSearch, SpecError, load_spec, preset
from ablate.results import ResultStore
from ablate.trial import TrialConfig

TINY = "synthetic:n_users=60,n_items=40,text_dim=4,image_dim=4,seed=0"


def test_demo_preset_expands_to_a_small_two_stage_grid():
    spec = preset("demo")
    search = spec.search_cells()
    assert {c.condition for c in search} == {"baseline"}
    assert len(search) == sum(len(spec.search_points(m)) for m in spec.models)
    source = spec.dataset_source(spec.datasets[0])
    datasets = {source: load(source)}
    chosen = {(source, m): spec.search_points(m)[-1] for m in spec.models}
    cells = spec.knockout_cells(chosen, datasets)
    assert len({c.key() for c in cells}) == len(cells)
    bpr = [c for c in cells if c.model == "BPR"]  # ID-only: baseline only
    assert {c.condition for c in bpr} == {"baseline"} and len(bpr) == len(spec.seeds)
    vbpr = [c for c in cells if c.model == "VBPR"]
    assert len(vbpr) == len(spec.seeds) * (1 + (len(knockout.CONDITIONS) - 1) * len(spec.fills))
    # the baseline of the knockout stage at the chosen point is the same trial as that search trial
    assert {c.key() for c in cells if c.condition == "baseline"} & {c.key() for c in search}


def test_the_paper_preset_packs_four_trials_on_a_t4_worker_of_the_cluster_yaml():
    import yaml

    nodes = yaml.safe_load((Path(__file__).parents[1] / "cluster" / "gpu.yaml").read_text())["available_node_types"]
    t4 = nodes["worker.t4"]["resources"]
    paper = preset("paper")
    resources = paper.resources
    assert min(int(t4["CPU"] // resources["cpu"]), int(t4["GPU"] // resources["gpu"])) == 4
    for model in ("MMGCN", "LATTICE", "DA-MRS"):  # the heavy models: two per T4 worker
        heavy = paper.trial_resources(model)
        assert min(int(t4["CPU"] // heavy["cpu"]), int(t4["GPU"] // heavy["gpu"])) == 2
    assert paper.trial_resources("BPR") == {"cpu": 1, "gpu": 0.25}


def test_paper_and_full_presets():
    paper, full = preset("paper"), preset("full")
    assert paper.datasets == ["baby", "sports", "clothing"] and paper.fills == list(knockout.PAPER_FILLS)
    assert paper.train["valid_metric"] == "ndcg@5" and paper.resources["gpu"] == 0.25
    assert full.fills == list(knockout.FILLS) and full.phases == list(knockout.PHASES)
    assert full.encoders == "all" and len(full.seeds) == 5
    assert paper.with_overrides(data_root="/data/mmrec").dataset_source("baby") == "/data/mmrec/baby"


def test_full_expands_every_encoder_variant_one_modality_at_a_time():
    import numpy as np

    data = load(TINY)
    extra = {m: {**v, "alt": np.ones_like(next(iter(v.values())))} for m, v in data.features.items()}
    object.__setattr__(data, "features", extra)
    spec = GridSpec(datasets=[TINY], models=["VBPR", "BPR"], encoders="all", conditions=["baseline"])
    cells = spec.knockout_cells({(TINY, "VBPR"): {}, (TINY, "BPR"): {}}, {TINY: data})
    assert sorted(json.dumps(c.encoders) for c in cells if c.model == "VBPR") == sorted(
        ['{}', '{"text": "alt"}', '{"image": "alt"}'])
    assert [c.encoders for c in cells if c.model == "BPR"] == [{}]


def test_search_points_max_points_and_fixed():
    spec = GridSpec(models=["LightGCN"], hparams=HParamSearch(max_points=3, fixed={"LightGCN": {"n_layers": 2}}))
    points = spec.search_points("LightGCN")
    assert len(points) == 3 and all(p["n_layers"] == 2 for p in points)
    assert points == spec.search_points("LightGCN")  # deterministic
    assert GridSpec(models=["BPR"], hparams=HParamSearch(search="none")).search_points("BPR") == [{}]


def test_yaml_and_python_specs(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(f"""
        name: tiny
        datasets: ["{TINY}"]
        models: [BPR, VBPR]
        conditions: [baseline, id_only]
        seeds: [0, 1]
        train: {{epochs: 2}}
        hparams: {{search: none}}
    """))
    spec = load_spec(path)
    assert spec.name == "tiny" and spec.train == {"epochs": 2} and spec.hparams.search == "none"
    over = tmp_path / "p.yaml"
    over.write_text("preset: demo\nseeds: [5]\n")
    assert load_spec(over).seeds == [5] and load_spec(over).models == preset("demo").models
    py = tmp_path / "g.py"
    py.write_text("from ablate.grid import GridSpec\nSPEC = GridSpec(name='py', models=['BPR'])\n")
    assert load_spec(py).name == "py"


@pytest.mark.parametrize("text, field", [
    ("models: [NoSuchModel]", "'models'"),
    ("fills: [purple]", "'fills'"),
    ("colour: red", "unknown field(s) ['colour']"),
    ("seeds: []", "'seeds'"),
    ("resources: {cpu: 1, tpu: 2}", "'resources'"),
    ("train: {epochs: 2, valid_metric: auc}", "'train.valid_metric'"),
    ("hparams: {search: random}", "'hparams.search'"),
    ("hparams: {fixed: {BPR: {depth: 3}}}", "'hparams.fixed.BPR.depth'"),
    ("models: BPR: x", "not valid YAML"),
])
def test_bad_spec_gives_one_clear_error_naming_file_and_field(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert str(path) in message and field in message


def test_unknown_preset_and_missing_file():
    with pytest.raises(SpecError, match="unknown preset"):
        preset("huge")
    with pytest.raises(SpecError, match="no such file"):
        load_spec("missing.yaml")
    with pytest.raises(SpecError, match="expected a preset"):
        load_spec("grid.toml")


def _row(cell: TrialConfig, valid: float, test: float, status="finished") -> dict:
    from ablate.results import metric_columns

    row = {"key": cell.key(), "dataset": "d", "data_source": cell.dataset, "model": cell.model,
           "condition": cell.condition, "fill": cell.fill, "phase": cell.phase, "seed": cell.seed,
           "encoders": "{}", "hparams": json.dumps(cell.hparams), "train_config": "{}", "status": status,
           "reason": "", "best_epoch": 0, "epochs": 1, "seconds_per_epoch": 0.0, "train_seconds": 0.0,
           "eval_seconds": 0.0, "wall_seconds": 0.0, "curve": "[]", "ablate_version": "0", "torch_version": "0",
           "device": "cpu", "host": "h", "python": "3", "finished_at": "2026-01-01T00:00:00Z"}
    for col in metric_columns("valid"):
        row[col] = valid
    for col in metric_columns("test"):
        row[col] = test
    return row


def test_choice_uses_validation_only_and_never_a_collapsed_point(tmp_path):
    from ablate.study import choose_hparams, save_choices, search_scores

    spec = GridSpec(datasets=[TINY], models=["LightGCN"], seeds=[0, 1],
                    hparams=HParamSearch(max_points=3, seeds=[0, 1]))
    search = spec.search_cells()
    points = [json.dumps(c.hparams, sort_keys=True) for c in search]
    first, second, third = list(dict.fromkeys(points))
    store = ResultStore(tmp_path / "r")
    for cell in search:
        p = json.dumps(cell.hparams, sort_keys=True)
        if p == first:  # best on test, worst on validation
            store.append(_row(cell, valid=0.1, test=0.9))
        elif p == second:  # best on validation
            store.append(_row(cell, valid=0.5, test=0.2))
        else:  # would be best on validation, but one seed collapsed
            store.append(_row(cell, valid=0.9, test=0.9, status="collapsed" if cell.seed else "finished"))
    chosen = choose_hparams(search, search_scores(search, str(tmp_path / "r")))
    choice = chosen[(TINY, "LightGCN")]
    assert json.dumps(choice["hparams"], sort_keys=True) == second
    assert choice["score"] == 0.5 and choice["metric"] == "valid_recall@20" and choice["trials"] == 6
    save_choices(spec, chosen, str(tmp_path / "r"))
    save_choices(spec, chosen, str(tmp_path / "r"))  # saved once
    saved = ResultStore(tmp_path / "r").child("hparams").read_records()
    assert len(saved) == 1 and json.loads(saved["hparams"][0]) == choice["hparams"]
    assert ResultStore(tmp_path / "r").done_keys() == {c.key() for c in search}  # choices are not rows


def test_progress_line_counts_and_eta():
    import io

    from ablate.tune import Progress

    out = io.StringIO()
    p = Progress("grid", total=10, already=4, stream=out)
    p.started -= 30
    p.running = {"a", "b"}
    p.done, p.failed = 2, 1
    line = p.line()
    assert "6/10 done, 2 running, 1 pending, 1 failed" in line and "ETA 45s" in line


def interrupted_demo_grid(monkeypatch, results: str, fit, spec=None, tuners=None):
    """Run the demo grid (or `spec`) against a stand-in for Tune's Tuner (no Ray, no W&B) whose `fit(tuner)` is
    `fit`; expect GridInterrupted. Returns (the experiments started, the exception); `tuners` collects them."""
    from ablate import tune as grid_tune
    from ablate.study import GridInterrupted

    started = []

    class Tuner:
        def __init__(self, trainable, tune_config, run_config):
            started.append(run_config.name)
            self.searcher, self.callbacks = tune_config.search_alg, run_config.callbacks
            self.trainable, self.tune_config = trainable, tune_config
            if tuners is not None:
                tuners.append(self)

        def fit(self):
            return fit(self)

        @staticmethod
        def can_restore(path):
            return False

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(grid_tune, "start_ray", lambda *args, **kwargs: None)
    monkeypatch.setattr(grid_tune, "share", lambda datasets: datasets)
    monkeypatch.setattr(grid_tune.ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(grid_tune.tune, "Tuner", Tuner)
    monkeypatch.setattr(grid_tune.tune, "with_parameters", lambda trainable, **kwargs: trainable)
    monkeypatch.setattr(grid_tune.tune, "with_resources", lambda trainable, resources: (trainable, resources))
    monkeypatch.delenv("TUNE_MAX_PENDING_TRIALS_PG", raising=False)
    with pytest.raises(GridInterrupted) as info:
        grid_tune.run_grid(spec or preset("demo"), results=results)
    return started, info.value


def test_an_interrupted_search_chooses_nothing_and_starts_no_knockout_cell(tmp_path, monkeypatch):
    """Tune returns normally after Ctrl-C; a search cut short must not choose hyper-parameters."""
    handed = []

    def one_of_three_stopped(tuner):  # three trials started, one stopped before its last report, then Ctrl-C
        handed.extend(tuner.searcher.suggest(name) for name in "abc")
        tuner.searcher.on_trial_complete("a", {"epoch": 3})
        return []

    started, error = interrupted_demo_grid(monkeypatch, str(tmp_path / "results"), one_of_three_stopped)
    assert error.stage == "search" and started == ["demo"]
    assert {h["cell"]["row"]["stage"] for h in handed} == {"search"}
    assert not (tmp_path / "results" / "hparams").exists()  # nothing was chosen


def test_a_stopped_trial_without_its_row_is_an_interruption(tmp_path, monkeypatch):
    """A trial that ended without error but wrote no row (stopped by Ctrl-C) stops the grid, whatever
    callbacks saw (a restored run carries Tune's copy of them)."""
    from types import SimpleNamespace

    def ended_without_row(tuner):
        config = tuner.searcher.suggest("a")
        return [SimpleNamespace(error=None, config=config, path="?")]

    started, error = interrupted_demo_grid(monkeypatch, str(tmp_path / "results"), ended_without_row)
    assert error.stage == "search" and error.rows == 0 and started == ["demo"]


def test_each_model_asks_for_its_own_resources_and_the_spec_limits_concurrent_trials(tmp_path, monkeypatch):
    import os

    spec = preset("demo").with_overrides(models=["BPR", "FREEDOM"], resources={"cpu": 1, "gpu": 0.25},
                                         model_resources={"FREEDOM": {"gpu": 0.5, "memory": 6}},
                                         max_concurrent_trials=3)
    assert spec.trial_resources("BPR") == {"cpu": 1, "gpu": 0.25}
    assert spec.trial_resources("FREEDOM") == {"cpu": 1, "gpu": 0.5, "memory": 6}
    tuners = []
    interrupted_demo_grid(monkeypatch, str(tmp_path / "results"), lambda tuner: [], spec=spec, tuners=tuners)
    [tuner] = tuners
    _, resources = tuner.trainable  # the request Ray gets for a trial of each model
    assert resources({"cell": {"trial": {"model": "BPR"}}}) == {"cpu": 1, "gpu": 0.25}
    assert resources({"cell": {"trial": {"model": "FREEDOM"}}}) == {"cpu": 1, "gpu": 0.5, "memory": 6 * 1024 ** 3}
    assert tuner.tune_config.max_concurrent_trials == 3 and os.environ["TUNE_MAX_PENDING_TRIALS_PG"] == "3"


@pytest.mark.parametrize("changes, field", [
    ({"model_resources": {"FREEDOM": {"gpu": 1.5}}}, "model_resources.FREEDOM"),
    ({"model_resources": {"NoSuchModel": {"gpu": 1}}}, "model_resources"),
    ({"model_resources": {"FREEDOM": {"disk": 1}}}, "model_resources.FREEDOM"),
    ({"resources": {"cpu": 1, "memory": -1}}, "resources"),
    ({"max_concurrent_trials": -1}, "max_concurrent_trials"),
])
def test_bad_resources_are_named(changes, field):
    with pytest.raises(SpecError, match=f"field '{field}'"):
        GridSpec.from_dict({**GridSpec().to_dict(), **changes}, source="g.yaml")


def test_ray_is_imported_by_tune_py_only_and_tune_py_stays_small():
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "ablate"
    importing = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                       if re.search(r"^\s*(import ray\b|from ray\b)", p.read_text(), re.MULTILINE))
    assert importing == ["tune.py"]
    assert len((package / "tune.py").read_text().splitlines()) < 400
