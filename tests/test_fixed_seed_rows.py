"""Fixed-seed result rows of every registered model, compared with the values stored in
tests/data/fixed_seed_rows.json.

A refactor or speed-up that keeps the math keeps these numbers up to floating-point reordering; a change
of behaviour made on purpose (a new default, another schedule) regenerates them:

    python -m tests.test_fixed_seed_rows --regenerate [MODEL ...]
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from ablate import knockout, models
from ablate.data import TRAIN as TRAIN_SPLIT, make_synthetic
from ablate.graphs import InteractionGraph
from ablate.train import TrainConfig
from ablate.trial import TrialConfig, run_trial

GOLDEN = Path(__file__).parent / "data" / "fixed_seed_rows.json"
RELATIVE_TOLERANCE = 1e-5  # floating-point reordering only
ABSOLUTE_TOLERANCE = 1e-7  # for values at or near zero
# every training option spelled out, so that a change of TrainConfig's defaults shows here as a change
TRAIN = dict(epochs=2, batch_size=256, lr=1e-3, weight_decay=0.0, eval_every=1, patience=20,
             valid_metric="recall@20", ks=(10, 20), eval_chunk=4096, mask_valid_at_test=False)
# (condition, fill, phase) per model: the full data, and one eval-only knockout where a model reads features
CASES = {"baseline": ("baseline", "none", "retrain"), "image_only": ("image_only", "shuffle", "eval_only")}


def dataset():
    return make_synthetic(n_users=60, n_items=50, interactions_per_user=8, text_dim=12, image_dim=16, seed=5)


def cases(name: str) -> list[str]:
    return ["baseline", "image_only"] if models.get(name).modalities else ["baseline"]


def fixed_seed_row(name: str, case: str, data=None) -> dict[str, float]:
    """The numbers of one trial that depend on the model's math: per-epoch losses and metrics, test metrics."""
    condition, fill, phase = CASES[case]
    config = TrialConfig(model=name, condition=condition, fill=fill, phase=phase, seed=0,
                         train=TrainConfig(**TRAIN), device="cpu")
    row = run_trial(data or dataset(), config)
    assert row["status"] == "finished", f"{name} {case}: {row['status']} ({row['reason']})"
    values = {column: float(value) for column, value in row.items() if column.startswith("test_")}
    for point in json.loads(row["curve"]):
        for field, value in point.items():
            if field != "epoch":
                values[f"epoch{point['epoch']}_{field}"] = float(value)
    values["best_epoch"] = float(row["best_epoch"])
    values.update(initial_scores(name, case, data or dataset()))
    return values


def initial_scores(name: str, case: str, data) -> dict[str, float]:
    """Mean |score| and mean squared score of a freshly built model, after one epoch start: the scoring path
    as continuous numbers (ranking metrics move only when an order changes)."""
    condition, fill, _ = CASES[case]
    torch.manual_seed(0)
    features = knockout.apply(data.select_features(), condition, fill, seed=0)
    graph = InteractionGraph(*data.pairs(TRAIN_SPLIT), data.n_users, data.n_items)
    model = models.build(name, graph, features)
    model.on_epoch_start(0)
    model.eval()
    with torch.no_grad():
        scores = model.score(torch.arange(data.n_users), model.eval_state()).double()
    return {"init_score_mean_abs": float(scores.abs().mean()), "init_score_mean_square": float(scores.pow(2).mean())}


def stored() -> dict:
    return json.loads(GOLDEN.read_text())


PARAMS = [(name, case) for name in sorted(models.MODELS) for case in cases(name)]


@pytest.fixture(scope="module")
def data():
    return dataset()


@pytest.mark.parametrize("name,case", PARAMS)
def test_row_matches_stored(name, case, data):
    expected = stored().get(name, {}).get(case)
    assert expected is not None, f"no stored row for {name} {case}: run `python -m tests.test_fixed_seed_rows --regenerate {name}`"
    actual = fixed_seed_row(name, case, data)
    assert sorted(actual) == sorted(expected), f"columns differ: {sorted(set(actual) ^ set(expected))}"
    differ = {k: (expected[k], actual[k]) for k in expected
              if not math.isclose(actual[k], expected[k], rel_tol=RELATIVE_TOLERANCE, abs_tol=ABSOLUTE_TOLERANCE)}
    assert not differ, f"{name} {case}: (stored, now) {differ}"


def test_every_model_has_stored_rows():
    rows = stored()
    assert sorted(rows) == sorted(models.MODELS), "stored rows and registered models differ"
    for name in rows:
        assert sorted(rows[name]) == sorted(cases(name)), name


def regenerate(names: list[str]) -> None:
    rows = stored() if GOLDEN.exists() else {}
    rows = {name: value for name, value in rows.items() if name in models.MODELS}
    data = dataset()
    for name in names or sorted(models.MODELS):
        rows[name] = {case: fixed_seed_row(name, case, data) for case in cases(name)}
        print(f"{name}: {rows[name]['baseline'].get('test_recall@20')}")
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] != ["--regenerate"]:
        sys.exit("usage: python -m tests.test_fixed_seed_rows --regenerate [MODEL ...]")
    regenerate(sys.argv[2:])
