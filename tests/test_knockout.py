import numpy as np
import pytest

from ablate import knockout


@pytest.fixture
def real():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((50, 7)) * np.arange(1, 8) + np.arange(7)).astype(np.float32)


@pytest.mark.parametrize("how", knockout.FILLS)
def test_fill_shape_dtype_and_seed(real, how):
    before = real.copy()
    a = knockout.fill(real, how, seed=1, modality="text")
    b = knockout.fill(real, how, seed=1, modality="text")
    assert a.shape == real.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(real, before)  # input untouched
    if how in ("noise", "gaussian", "shuffle"):
        assert not np.array_equal(a, knockout.fill(real, how, seed=2, modality="text"))
        assert not np.array_equal(a, knockout.fill(real, how, seed=1, modality="image"))


def test_fill_definitions(real):
    np.testing.assert_array_equal(knockout.fill(real, "constant_one", 0), np.ones_like(real))
    np.testing.assert_array_equal(knockout.fill(real, "constant_zero", 0), np.zeros_like(real))
    mean = knockout.fill(real, "mean", 0)
    np.testing.assert_allclose(mean, np.tile(real.mean(0), (50, 1)), rtol=1e-6)
    noise = knockout.fill(np.zeros((4000, 8), np.float32), "noise", 0)
    assert abs(noise.mean() - 1.0) < 0.01 and abs(noise.std() - 0.1) < 0.01


def test_shuffle_is_a_row_permutation(real):
    shuffled = knockout.fill(real, "shuffle", seed=5)
    rows = {r.tobytes() for r in real}
    assert {r.tobytes() for r in shuffled} == rows
    assert sorted(r.tobytes() for r in shuffled) == sorted(r.tobytes() for r in real)
    assert not np.array_equal(shuffled, real)


def test_gaussian_matches_moments():
    rng = np.random.default_rng(1)
    real = (rng.standard_normal((20000, 5)) * [1, 2, 3, 4, 5] + [5, 4, 3, 2, 1]).astype(np.float32)
    g = knockout.fill(real, "gaussian", seed=0)
    np.testing.assert_allclose(g.mean(0), real.mean(0), atol=0.1)
    np.testing.assert_allclose(g.std(0), real.std(0), rtol=0.03)
    # same marginals, no item information
    assert abs(np.corrcoef(g[:, 0], real[:, 0])[0, 1]) < 0.05


def test_apply_conditions(real):
    features = {"text": real, "image": real[:, :3].copy()}
    out = knockout.apply(features, "text_only", "constant_zero", seed=0)
    assert out["text"] is features["text"] and not out["image"].any()
    out = knockout.apply(features, "image_only", "constant_zero", seed=0)
    assert out["image"] is features["image"] and not out["text"].any()
    out = knockout.apply(features, "id_only", "constant_one", seed=0)
    assert (out["text"] == 1).all() and (out["image"] == 1).all()
    assert knockout.apply(features, "baseline", "noise", seed=0) == features
    with pytest.raises(ValueError, match=r"condition: expected one of .*got .text_knockout."):
        knockout.apply(features, "text_knockout", "noise", 0)
    with pytest.raises(ValueError, match=r"fill: expected one of .*got .zeros."):
        knockout.apply(features, "id_only", "zeros", 0)


def test_one_normalised_vocabulary():
    from ablate.options import OptionError

    assert knockout.Knockout("baseline", "shuffle", "eval_only") == knockout.Knockout()
    assert knockout.Knockout().fill == knockout.NO_FILL and knockout.Knockout().knocked == ()
    assert knockout.Knockout("text_only", "mean").knocked == ("image",)
    with pytest.raises(OptionError, match=r"fill: expected one of .*got 'none'"):
        knockout.Knockout("id_only", "none")
    with pytest.raises(OptionError, match=r"phase: expected one of .*got 'later'"):
        knockout.Knockout("id_only", "noise", "later")
    every = knockout.settings(["baseline", "id_only"], ["noise", "mean"], ["retrain", "eval_only"])
    assert len(every) == 5 and every[0] == knockout.Knockout()  # one baseline, not one per fill and phase
    assert [k.order for k in sorted(every, key=lambda k: k.order)][0] == knockout.Knockout().order
