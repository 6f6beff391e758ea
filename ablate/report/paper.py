"""The paper's published numbers, to print beside ablate's own when the datasets are the paper's.

Source: the appendix tables (Tables 4-11) of Ye et al., "Are Multimodal Embeddings Truly Beneficial for
Recommendation?" (arXiv 2508.07399, ECIR 2026), as released with the authors' code; test set, one seed.
The file `data/paper_appendix.json` is a copy of the project's transcription, shipped with the package so
that a report needs nothing outside it.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).with_name("data") / "paper_appendix.json"
DATASETS = ("Baby", "Sports", "Clothing")

# (condition, fill) in ablate's terms -> the appendix's table name
KNOCKOUTS = {
    ("text_only", "noise"): "image_ko_noise",
    ("image_only", "noise"): "text_ko_noise",
    ("id_only", "noise"): "dual_ko_noise",
    ("id_only", "constant_one"): "dual_ko_constant_one",
    ("id_only", "constant_zero"): "dual_ko_constant_zero",
}


@lru_cache(maxsize=1)
def appendix() -> dict:
    return json.loads(DATA.read_text())


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def paper_dataset(name: str) -> str | None:
    """The paper's dataset a name refers to ('amazon-baby', 'Baby', 'baby_5core' -> 'Baby'), else None."""
    norm = _norm(name)
    for candidate in DATASETS:
        if candidate.lower() in norm:
            return candidate
    return None


def _table(condition: str, fill: str, phase: str, encoders: dict) -> str | None:
    if phase != "retrain":
        return None
    image = _norm(encoders.get("image", "default"))
    text = _norm(encoders.get("text", "default"))
    if condition == "baseline":
        if "vit" in image:
            return "vit_image_features"
        if "llava" in image or "caption" in image:
            return "llava_captions_as_image"
        return "baseline" if image in ("default", "") and text in ("default", "") else None
    if image not in ("default", "") or text not in ("default", ""):
        return None
    return KNOCKOUTS.get((condition, fill))


def paper_value(dataset: str, model: str, condition: str, fill: str, phase: str, encoders: dict,
                metric: str) -> float | None:
    """The appendix's number for this cell, or None when the paper has no such cell."""
    name = paper_dataset(dataset)
    table = _table(condition, fill, phase, encoders or {})
    if name is None or table is None:
        return None
    models = appendix()["conditions"].get(table, {})
    key = next((m for m in models if _norm(m) == _norm(model)), None)
    if key is None:
        return None
    value = models[key].get(name, {}).get(metric)
    return None if value is None else float(value)


def paper_baseline(dataset: str, model: str, metric: str) -> float | None:
    return paper_value(dataset, model, "baseline", "none", "retrain", {}, metric)


def source() -> str:
    data = appendix()
    return f"{data['source']}; {data['note']}"
