"""``manifest.json`` beside a dataset: where it came from and what its feature files are.

A dataset directory built by ``ablate data build-*`` carries a manifest::

    {"format": 1, "name": "baby", "sources": {"reviews": {"path": ..., "sha256": ..., "bytes": ...}, ...},
     "k_core": {"user": 5, "item": 5, "rounds": 3}, "split": {"rule": "random", "seed": 0, ...},
     "counts": {"users": ..., "items": ..., "interactions": ..., "train": ..., "valid": ..., "test": ...},
     "skipped": {...},
     "features": {"image": {"default": "cnn4096",
                            "variants": {"cnn4096": {"file": "image_feat.npy", "dim": 4096, ...},
                                         "vit_b_16": {"file": "image_feat_vit_b_16.npy", "encoder": ...,
                                                      "weights_sha256": ..., "dim": 768, ...}}}}}

The feature part names each variant (the unsuffixed ``<modality>_feat.npy`` of the MMRec layout gets a real
name, e.g. ``cnn4096``) and says which one is the modality's default. A directory without a manifest is read
as plain MMRec (variant ``default`` for the unsuffixed file).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .dataset import DataError

MANIFEST = "manifest.json"
FORMAT = 1


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def source_entry(path: str | Path) -> dict:
    """Path, size and SHA-256 of a source file (a folder: its file count and a hash over names and sizes)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        digest = hashlib.sha256()
        for p in files:
            digest.update(f"{p.relative_to(path)}\t{p.stat().st_size}\n".encode())
        return {"path": str(path.resolve()), "files": len(files), "listing_sha256": digest.hexdigest()}
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def read_manifest(directory: str | Path) -> dict | None:
    """The manifest of a dataset directory, or None when it has none."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); expected the manifest ablate writes") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level is {type(data).__name__}; expected a JSON object")
    features = data.get("features", {})
    if not isinstance(features, dict):
        raise DataError(f"{path}: field 'features' is {type(features).__name__}; expected an object")
    for modality, entry in features.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("variants", {}), dict):
            raise DataError(f"{path}: features.{modality}: expected an object with 'variants' (an object)")
        for name, variant in entry.get("variants", {}).items():
            if not isinstance(variant, dict) or not isinstance(variant.get("file"), str):
                raise DataError(f"{path}: features.{modality}.variants.{name}: expected an object with 'file'")
    return data


def write_manifest(directory: str | Path, data: dict) -> Path:
    """Write atomically (a reader never sees half a manifest)."""
    path = Path(directory) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"format": FORMAT, **data}, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def add_variant(directory: str | Path, modality: str, name: str, entry: dict, make_default: bool = False) -> dict:
    """Record a feature variant (``entry`` holds at least ``file``) in the manifest; create it if absent.

    The first variant of a modality becomes its default; ``make_default`` moves the default to this one.
    """
    data = read_manifest(directory) or {}
    data.pop("format", None)
    features = data.setdefault("features", {})
    if modality not in features:
        features[modality] = {"variants": {}}
        plain = f"{modality}_feat.npy"
        if (Path(directory) / plain).is_file() and entry.get("file") != plain:
            # an MMRec directory's own file stays its modality's default, under the name the reader gives it
            features[modality] = {"default": "default", "variants": {"default": {"file": plain}}}
    modality_entry = features[modality]
    modality_entry["variants"][name] = entry
    if make_default or modality_entry.get("default") not in modality_entry["variants"]:
        modality_entry["default"] = name
    write_manifest(directory, data)
    return data


def variant_names(manifest: dict | None) -> dict[tuple[str, str], str]:
    """(modality, file name) -> variant name, from a manifest (empty without one)."""
    out = {}
    for modality, entry in ((manifest or {}).get("features") or {}).items():
        for name, variant in entry.get("variants", {}).items():
            out[(modality, variant["file"])] = name
    return out


def default_variants(manifest: dict | None) -> dict[str, str]:
    return {m: e["default"] for m, e in ((manifest or {}).get("features") or {}).items() if "default" in e}
