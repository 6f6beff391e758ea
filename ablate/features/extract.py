"""Encode a dataset's items and add the result as a feature variant: ``<modality>_feat_<name>.npy`` + manifest.

Text reads ``item_text.tsv`` (written by ``ablate data build-*``), images ``item_image.tsv`` (an image path per
item; empty = no image). Items without an image get the mean of the others, and ``has_image_<name>.npy``
marks the real ones, as the paper's data does.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from ..data.build import fill_missing_with_mean, read_item_table
from ..data.dataset import DataError
from ..data.manifest import add_variant, read_manifest
from ..data.mmrec import find_inter_file, read_inter

_BAD = re.compile(r"[^A-Za-z0-9_.\-]+")


def variant_name(encoder: str) -> str:
    """A file-name-safe variant name from an encoder name (``sentence-transformers/all-MiniLM-L6-v2`` ->
    ``all-minilm-l6-v2``, ``timm:vit_base_patch16_224`` -> ``vit_base_patch16_224``)."""
    tail = encoder.rstrip("/").split("/")[-1].split(":")[-1]
    name = _BAD.sub("_", tail).strip("_").lower()
    if not name:
        raise ValueError(f"cannot make a variant name from encoder {encoder!r}; pass --name")
    return name


def _n_items(directory: Path) -> int:
    _, items, _ = read_inter(find_inter_file(directory))
    return int(items.max()) + 1


def extract(directory: str | Path, modality: str, encoder: str, weights: str | None = None,
            name: str | None = None, batch_size: int = 64, device: str = "cpu", make_default: bool = False,
            progress: bool = True, recipe_note: str | None = None, workers: int = 0, **image_options) -> dict:
    """Encode, save, record; returns the manifest entry written (with ``seconds``)."""
    directory = Path(directory)
    name = name or variant_name(encoder)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise ValueError(f"variant name {name!r}: expected letters, digits, '_', '.', '-'")
    n_items = _n_items(directory)
    started = time.time()
    manifest = read_manifest(directory) or {}
    if modality == "text":
        from .text import encode_texts, load_text_encoder

        texts = read_item_table(directory / "item_text.tsv", "text", n_items)
        model = load_text_encoder(encoder, device=device)
        features = encode_texts(model, texts, batch_size=batch_size, progress=progress)
        entry = {**model.describe(), "recipe": recipe_note or manifest.get("text_recipe"), "input": "item_text.tsv"}
        mask = None
    elif modality == "image":
        from .image import encode_images, load_image_encoder

        paths = read_item_table(directory / "item_image.tsv", "path", n_items)
        for item, path in enumerate(paths):
            if path and not Path(path).is_file():
                raise DataError(f"{directory / 'item_image.tsv'}: itemID {item}: {path} does not exist "
                                f"(expected an image file, or an empty path for an item without one)")
        model = load_image_encoder(encoder, weights, **image_options)
        features, mask = encode_images(model, paths, batch_size=batch_size, device=device, progress=progress,
                                       workers=workers)
        if not mask.any():
            raise DataError(f"{directory / 'item_image.tsv'}: no item has an image path")
        features = fill_missing_with_mean(features, mask)
        entry = {**model.describe(), "input": "item_image.tsv"}
    else:
        raise ValueError(f"modality {modality!r}: expected text or image")
    if not np.isfinite(features).all():
        raise RuntimeError(f"{encoder}: produced non-finite features; not written")
    file = f"{modality}_feat_{name}.npy"
    np.save(directory / file, features.astype(np.float32))
    entry = {"file": file, **entry, "dim": int(features.shape[1]), "items": int(features.shape[0]),
             "device": device, "seconds": round(time.time() - started, 2)}
    if mask is not None:
        mask_file = f"has_{modality}_{name}.npy"
        np.save(directory / mask_file, mask)
        entry.update(mask=mask_file, missing=int((~mask).sum()))
    add_variant(directory, modality, name, entry, make_default=make_default)
    return entry
