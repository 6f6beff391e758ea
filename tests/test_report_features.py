"""Feature analysis: each statistic against a case with a known answer, a planted signal, the real data."""
from __future__ import annotations

import numpy as np
import pytest

from ablate import analysis
from ablate.cli import main
from ablate.data import load, make_synthetic

from .conftest import shared_data


def test_statistics_on_known_cases():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 8))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    gram = unit @ unit.T
    brute = (gram.sum() - np.trace(gram)) / (60 * 59)
    assert analysis.mean_pairwise_cosine(x) == pytest.approx(brute, abs=1e-12)
    rank_one = np.outer(rng.standard_normal(50), rng.standard_normal(12))
    assert analysis.effective_rank(rank_one)[0] == pytest.approx(1.0, abs=1e-3)
    assert analysis.effective_rank(np.vstack([np.eye(6), -np.eye(6)]))[0] == pytest.approx(6.0, rel=1e-6)
    assert analysis.norm_spread(3 * unit)[0] == pytest.approx(0.0, abs=1e-12)
    near_constant = 1 + 0.1 * rng.standard_normal((100, 64))  # the paper's noise fill
    assert analysis.mean_pairwise_cosine(near_constant) > 0.98


def test_planted_text_signal_shows_in_knn_overlap(tmp_path, capsys):
    data = make_synthetic(n_users=300, n_items=150, text_share=1.0, image_share=0.0, text_dim=24, image_dim=32,
                          feature_noise=0.1, seed=1)
    table = analysis.analyze(data, k=10).set_index(["modality", "fill"])
    text, image = table.loc[("text", "real")], table.loc[("image", "real")]
    print(f"kNN lift text {text['knn10_lift']:.2f}, image {image['knn10_lift']:.2f}")
    assert text["knn10_lift"] > 2 * image["knn10_lift"]
    assert table.loc[("text", "noise"), "mean_cosine"] > 0.98  # what a knocked-out model sees
    assert main(["analyze", "features", "synthetic:n_users=200,n_items=120", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "tsne.png").stat().st_size > 10_000
    assert "effective_rank" in (tmp_path / "features.md").read_text()


def test_ml100k_features():
    data = load(shared_data("ml100k-mm"))
    table = analysis.analyze(data, k=10, fills=()).set_index("modality")
    print(table.drop(columns=["seconds"]).to_string())
    assert set(table.index) == {"text", "image"}
    assert 0 < table.loc["text", "mean_cosine"] < 0.9 and 1 < table.loc["text", "effective_rank"] <= 384
    assert table.loc["text", "knn10_lift"] > 1  # movie texts agree with co-watching better than chance


def test_missing_dataset_gives_one_clear_error(tmp_path, capsys):
    assert main(["analyze", "features", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2
    assert "absent" in capsys.readouterr().err
