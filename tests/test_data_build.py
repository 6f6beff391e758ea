"""Raw data to dataset: k-core, recipes, the Amazon readers (on files written here in the real formats),
MovieLens from ../shared/data/ml100k-raw, the manifest and the encoder-variant names it gives."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from ablate.cli import main
from ablate.data import DataError, read_mmrec
from ablate.data.amazon import build_amazon, read_image_features, read_meta, read_reviews
from ablate.data.build import BuildOptions
from ablate.data.kcore import kcore_mask
from ablate.data.manifest import add_variant, read_manifest
from ablate.data.recipe import MOVIELENS_RECIPE, TextRecipe

from .conftest import shared_data


# ---------------------------------------------------------------- k-core and recipes

def test_kcore_repeats_until_stable():
    # user 2 has 2 items; dropping it leaves item 3 with one user, which must then go too (a second round)
    users = np.array([0, 0, 0, 1, 1, 1, 2, 2, 0])
    items = np.array([0, 1, 2, 0, 1, 2, 3, 4, 3])
    keep, rounds = kcore_mask(users, items, k_user=3, k_item=2)
    assert rounds >= 2
    kept_u, kept_i = users[keep], items[keep]
    assert np.bincount(kept_u).min(initial=99) >= 0
    for u in np.unique(kept_u):
        assert (kept_u == u).sum() >= 3
    for i in np.unique(kept_i):
        assert (kept_i == i).sum() >= 2
    assert set(kept_i) == {0, 1, 2} and set(kept_u) == {0, 1}


def test_kcore_random_is_a_fixed_point():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 300, 3000), rng.zipf(1.5, 3000) % 400
    keep, _ = kcore_mask(users, items, 5)
    assert 0 < keep.sum() < keep.size
    assert np.bincount(users[keep])[np.unique(users[keep])].min() >= 5
    assert np.bincount(items[keep])[np.unique(items[keep])].min() >= 5
    again, rounds = kcore_mask(users[keep], items[keep], 5)
    assert again.all() and rounds == 0


def test_recipe_optional_parts_and_lists():
    recipe = TextRecipe(MOVIELENS_RECIPE)
    full = recipe.render({"title": "Heat", "year": "1995", "genres": "Crime", "description": "Cops\n and  robbers.",
                          "directors": ["Michael Mann"]})
    assert full == "Heat (1995). Genres: Crime. Cops and robbers. Directed by Michael Mann."
    bare = recipe.render({"title": "Heat", "year": "1995", "genres": "Crime", "directors": []})
    assert bare == "Heat (1995). Genres: Crime."
    amazon = TextRecipe("{title}.[ Category: {categories}.]")
    assert amazon.render({"title": "Cot", "categories": [["Baby", "Nursery"], ["Baby"]]}) == \
        "Cot. Category: Baby, Nursery."
    with pytest.raises(ValueError, match="not closed"):
        TextRecipe("{title} [ {brand}")


# ---------------------------------------------------------------- Amazon formats

ASINS = [f"B00000000{i}" for i in range(6)]


def _reviews(n_users=8, items=ASINS):
    """Every user reviews every item: a 5-core that survives."""
    rows = []
    for u in range(n_users):
        for j, asin in enumerate(items):
            rows.append({"reviewerID": f"U{u:03d}", "asin": asin, "overall": float(1 + (u + j) % 5),
                         "unixReviewTime": 1_300_000_000 + 1000 * u + j, "reviewText": "ok"})
    return rows


def _write_lines(path, lines, gz=False):
    data = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def _write_images(path, vectors: dict[str, np.ndarray], dim):
    with open(path, "wb") as handle:
        for asin, vector in vectors.items():
            handle.write(asin.encode("ascii"))
            handle.write(np.asarray(vector, dtype="<f4").reshape(dim).tobytes())
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_reviews_2014_and_2018_plain_and_gzip(tmp_path, gz):
    rows = _reviews()
    rows[1]["style"] = {"Size:": " Large"}  # 2018 fields are ignored
    rows[2].pop("overall")  # a missing rating is allowed
    path = _write_lines(tmp_path / ("r.json.gz" if gz else "r.json"), [json.dumps(r) for r in rows] + [""], gz)
    raw = read_reviews(path)
    assert raw.users.size == len(rows) and raw.items[0] == ASINS[0]
    assert np.isnan(raw.rating[2]) and raw.rating[0] == rows[0]["overall"]
    assert raw.timestamp[3] == rows[3]["unixReviewTime"]


def test_malformed_review_line_is_an_error_naming_file_and_line(tmp_path):
    lines = [json.dumps(r) for r in _reviews()]
    lines.insert(3, '{"reviewerID": "U1", "asin": ')  # truncated
    path = _write_lines(tmp_path / "reviews.json", lines)
    with pytest.raises(DataError, match=r"reviews.json: line 4: not a JSON object"):
        read_reviews(path)
    raw = read_reviews(path, skip_malformed=True)
    assert raw.skipped == {"reviews.json": 1} and raw.users.size == len(lines) - 1


def test_review_without_asin_or_with_bad_rating(tmp_path):
    rows = _reviews()
    lines = [json.dumps(r) for r in rows]
    lines[5] = json.dumps({"reviewerID": "U9", "overall": 5.0})
    path = _write_lines(tmp_path / "r.json", lines)
    with pytest.raises(DataError, match=r"r.json: line 6: field\(s\) \['asin'\] missing"):
        read_reviews(path)
    lines[5] = json.dumps({"reviewerID": "U9", "asin": "X", "overall": "five"})
    path = _write_lines(tmp_path / "r.json", lines)
    with pytest.raises(DataError, match=r"line 6, field 'overall': 'five'; expected a number"):
        read_reviews(path)


def test_meta_2014_literal_and_2018_json(tmp_path):
    old = {"asin": ASINS[0], "title": "Crib", "brand": "Acme", "categories": [["Baby", "Nursery"]],
           "description": "A crib."}
    new = {"asin": ASINS[1], "title": "Bottle", "category": ["Baby", "Feeding"], "description": ["Glass.", "BPA free"]}
    path = _write_lines(tmp_path / "meta.json.gz", [repr(old), json.dumps(new), "not a record"], gz=True)
    with pytest.raises(DataError, match="meta.json.gz: line 3"):
        read_meta(path)
    skipped = {}
    meta = read_meta(path, skip_malformed=True, skipped=skipped)
    assert skipped == {"meta.json.gz": 1}
    assert meta[ASINS[0]]["categories"] == [["Baby", "Nursery"]] and meta[ASINS[0]]["brand"] == "Acme"
    assert meta[ASINS[1]]["categories"] == ["Baby", "Feeding"] and meta[ASINS[1]]["description"] == ["Glass.", "BPA free"]


def test_image_binary_reader(tmp_path):
    rng = np.random.default_rng(1)
    vectors = {a: rng.normal(size=8).astype(np.float32) for a in ASINS[:4]}
    path = _write_images(tmp_path / "image_features_Baby.b", vectors, 8)
    features, present = read_image_features(path, np.array([ASINS[3], "NOTTHERE00", ASINS[0]]), dim=8)
    assert present.tolist() == [True, False, True]
    np.testing.assert_array_equal(features[0], vectors[ASINS[3]])
    np.testing.assert_array_equal(features[2], vectors[ASINS[0]])
    assert not features[1].any()
    with open(path, "ab") as handle:
        handle.write(b"B0TRUNC")  # half a record
    with pytest.raises(DataError, match=r"image_features_Baby.b: .* not a whole number of records .* 7 bytes left"):
        read_image_features(path, np.array(ASINS), dim=8)
    bad = _write_images(tmp_path / "nan.b", {ASINS[0]: np.full(8, np.nan)}, 8)
    with pytest.raises(DataError, match=r"nan.b: record 0 \(ASIN B000000000\): non-finite"):
        read_image_features(bad, np.array(ASINS), dim=8)


def test_build_amazon_end_to_end(tmp_path):
    rows = _reviews(n_users=12) + [{"reviewerID": "LONER", "asin": ASINS[0], "overall": 5.0, "unixReviewTime": 1}]
    rows.append(dict(rows[0]))  # a duplicate (user, item)
    reviews = _write_lines(tmp_path / "reviews_Baby_5.json.gz", [json.dumps(r) for r in rows], gz=True)
    meta = _write_lines(tmp_path / "meta_Baby.json", [repr({"asin": a, "title": f"Item {a}", "brand": "B",
                                                            "categories": [["Baby"]]}) for a in ASINS[:5]])
    rng = np.random.default_rng(2)
    vectors = {a: rng.normal(size=16).astype(np.float32) for a in ASINS[:4]}  # two items without an image
    images = _write_images(tmp_path / "image_features_Baby.b", vectors, 16)
    out = tmp_path / "baby"
    manifest = build_amazon(reviews, out, meta=meta, images=images, options=BuildOptions(name="baby", k_user=5),
                            image_dim=16)
    assert manifest["counts"]["users"] == 12 and manifest["counts"]["items"] == 6  # LONER removed by the 5-core
    assert manifest["counts"]["duplicates_dropped"] == 1 and manifest["counts"]["interactions"] == 72
    assert manifest["sources"]["reviews"]["sha256"] and manifest["split"]["seed"] == 0
    assert manifest["items_without_meta"] == 1
    data = read_mmrec(out)
    assert data.n_users == 12 and data.n_items == 6
    assert data.variants("image") == ["cnn4096"] and data.default_variants["image"] == "cnn4096"
    image = data.select_features()["image"]
    has = np.load(out / "has_image.npy")
    assert has.tolist() == [True] * 4 + [False] * 2  # item ids follow the sorted ASINs
    np.testing.assert_allclose(image[4], np.mean([vectors[a] for a in ASINS[:4]], axis=0), rtol=1e-6)
    np.testing.assert_array_equal(image[1], vectors[ASINS[1]])
    texts = (out / "item_text.tsv").read_text(encoding="utf-8").splitlines()
    assert texts[1] == f"0\t{ASINS[0]}\tItem {ASINS[0]}. Brand: B. Category: Baby."
    assert texts[6] == f"5\t{ASINS[5]}\t"  # no metadata: empty text
    mapping = (out / "i_id_mapping.csv").read_text().splitlines()
    assert mapping[0] == "asin\titemID" and mapping[1] == f"{ASINS[0]}\t0"
    # same seed, same split; the time rule puts each user's latest reviews in test
    again = build_amazon(reviews, tmp_path / "again", options=BuildOptions(name="baby", k_user=5))
    assert again["counts"] == manifest["counts"]
    assert (tmp_path / "again" / "baby.inter").read_bytes() == (out / "baby.inter").read_bytes()
    build_amazon(reviews, tmp_path / "t", options=BuildOptions(name="t", split="time"))
    timed = read_mmrec(tmp_path / "t")
    inter = np.genfromtxt(tmp_path / "t" / "t.inter", delimiter="\t", names=True)
    for u in range(3):
        mine = inter[inter["userID"] == u]
        assert mine["timestamp"][mine["x_label"] == 2].min() >= mine["timestamp"][mine["x_label"] == 0].max()
    assert timed.n_interactions == 72


def test_build_amazon_cli_reports_skips(tmp_path, capsys):
    lines = [json.dumps(r) for r in _reviews()] + ["{broken"]
    reviews = _write_lines(tmp_path / "reviews.json", lines)
    assert main(["data", "build-amazon", "--reviews", str(reviews), "--out", str(tmp_path / "d")]) == 2
    assert "reviews.json: line 49: not a JSON object" in capsys.readouterr().err
    assert main(["data", "build-amazon", "--reviews", str(reviews), "--out", str(tmp_path / "d"),
                 "--skip-malformed"]) == 0
    out = capsys.readouterr().out
    assert "8 users, 6 items, 48 interactions" in out and '"reviews.json": 1' in out


# ---------------------------------------------------------------- MovieLens from the shared raw files

def test_build_movielens_counts_and_texts_equal_ml100k_mm(tmp_path):
    raw, ref = shared_data("ml100k-raw"), shared_data("ml100k-mm")
    out = tmp_path / "ml100k"
    assert main(["data", "build-movielens", "--ratings", str(raw / "ml-100k.inter"), "--items",
                 str(raw / "ml-100k.item"), "--texts", str(raw / "ml100k_imdb_details.csv"),
                 "--posters", str(raw / "posters"), "--out", str(out)]) == 0
    manifest = read_manifest(out)
    c = manifest["counts"]
    assert (c["users"], c["items"], c["interactions"]) == (943, 1682, 100000)
    assert (c["train"], c["valid"], c["test"]) == (80024, 9988, 9988)
    assert manifest["items_without_poster"] == 40
    for name in ("i_id_mapping.csv", "u_id_mapping.csv"):
        assert (out / name).read_text() == (ref / name).read_text()
    mine = (out / "item_text.tsv").read_text(encoding="utf-8").splitlines()
    theirs = (ref / "item_text.tsv").read_text(encoding="utf-8").splitlines()
    differ = [i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b]
    # ml100k-mm read the UTF-8 .item file as Latin-1 ("MisÃ©rables"); 9 titles with accents differ, only there
    assert len(mine) == len(theirs) and len(differ) == 9
    assert all("Ã" in theirs[i] and "Ã" not in mine[i] for i in differ)
    latin = tmp_path / "latin"
    main(["data", "build-movielens", "--ratings", str(raw / "ml-100k.inter"), "--items", str(raw / "ml-100k.item"),
          "--texts", str(raw / "ml100k_imdb_details.csv"), "--out", str(latin), "--item-encoding", "latin-1"])
    assert (latin / "item_text.tsv").read_text(encoding="utf-8") == (ref / "item_text.tsv").read_text(encoding="utf-8")
    images = (out / "item_image.tsv").read_text(encoding="utf-8").splitlines()
    has = np.load(ref / "has_image.npy")
    assert [bool(line.split("\t")[2]) for line in images[1:]] == has.tolist()


def test_movielens_bad_items_file(tmp_path):
    raw = shared_data("ml100k-raw")
    items = tmp_path / "bad.item"
    items.write_text("item_id:token\tmovie_title:token_seq\n1\tToy Story\n")
    with pytest.raises(DataError, match=r"bad.item: line 1: missing column\(s\) \['release_year', 'class'\]"):
        from ablate.data.movielens import build_movielens
        build_movielens(raw / "ml-100k.inter", items, tmp_path / "o")


# ---------------------------------------------------------------- variants, manifest, data check

def test_manifest_names_variants_and_default(tmp_path):
    from ablate.data import Dataset, write_mmrec

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(6), 4).astype(np.int32)
    items = np.tile(np.arange(4), 6).astype(np.int32)
    split = np.tile(np.array([0, 0, 1, 2], dtype=np.int8), 6)
    data = Dataset("d", users, items, split, 6, 4, {"image": {"default": rng.normal(size=(4, 32)).astype(np.float32),
                                                              "vit_b_16": rng.normal(size=(4, 12)).astype(np.float32)}},
                   {"image": "default"})
    write_mmrec(data, tmp_path)
    assert read_mmrec(tmp_path).variants("image") == ["default", "vit_b_16"]  # plain MMRec: no manifest
    add_variant(tmp_path, "image", "vit_b_16", {"file": "image_feat_vit_b_16.npy"})
    again = read_mmrec(tmp_path)
    assert again.default_variants["image"] == "default"  # the MMRec file stays the default
    add_variant(tmp_path, "image", "vit_b_16", {"file": "image_feat_vit_b_16.npy"}, make_default=True)
    assert read_mmrec(tmp_path).select_features()["image"].shape == (4, 12)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json: not valid JSON"):
        read_mmrec(tmp_path)


def test_data_check_on_amazon_baby_with_random_features(tmp_path):
    inter = shared_data("amazon", "baby.inter")
    directory = tmp_path / "baby"
    directory.mkdir()
    (directory / "baby.inter").symlink_to(inter)
    rng = np.random.default_rng(0)
    np.save(directory / "image_feat.npy", rng.random((7050, 4096), dtype=np.float32))
    np.save(directory / "text_feat.npy", rng.random((7050, 384), dtype=np.float32))
    np.save(directory / "image_feat_vit_b_16.npy", rng.random((7050, 768), dtype=np.float32))
    add_variant(directory, "image", "cnn4096", {"file": "image_feat.npy"})
    add_variant(directory, "image", "vit_b_16", {"file": "image_feat_vit_b_16.npy"})
    add_variant(directory, "text", "minilm", {"file": "text_feat.npy"})
    result = subprocess.run([sys.executable, "-m", "ablate.cli", "data", "check", str(directory)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in ("users        19445", "items        7050", "interactions 160792"):
        assert line in out
    assert "image:       cnn4096 (7050, 4096) (default), vit_b_16 (7050, 768)" in out
    assert "text:        minilm (7050, 384) (default)" in out
