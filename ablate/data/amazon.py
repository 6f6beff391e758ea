"""Readers for the Amazon review dumps (McAuley lab, 2014 and 2018 releases) and ``build_amazon``.

Files:

- reviews (``reviews_Baby_5.json.gz`` 2014, ``Baby_5.json.gz`` 2018): one JSON object per line with
  ``reviewerID``, ``asin`` and, used when present, ``overall`` (rating) and ``unixReviewTime``.
- metadata (``meta_Baby.json.gz``): one object per line with ``asin`` and text fields. The 2014 files are
  Python literals (single quotes), the 2018 files JSON; both are read. 2014 has ``categories`` (a list of
  lists) and ``description`` (a string); 2018 has ``category`` (a list) and ``description`` (a list); both
  become the recipe fields ``title``, ``brand``, ``categories``, ``description``.
- image features (``image_features_Baby.b``): records of a 10-byte ASCII ASIN followed by 4096 little-endian
  float32, back to back, no header.

Plain or gzip-compressed files are both accepted (detected from the first bytes, not the name).

Malformed input: by default the first malformed line stops the build with an error naming the file, the
line and what was expected. With ``skip_malformed=True`` such lines are skipped and counted; the counts land
in the manifest (``skipped``) and are printed. Blank lines are ignored. A truncated image file (size not a
multiple of the record size) or a non-finite value is always an error.
"""
from __future__ import annotations

import ast
import gzip
import io
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from .build import (BuildOptions, RawInteractions, build_interactions, fill_missing_with_mean, finish,
                    record_feature, write_built, write_item_table)
from .dataset import DataError
from .manifest import read_manifest
from .recipe import AMAZON_RECIPE, TextRecipe

ASIN_BYTES = 10
IMAGE_DIM = 4096


def open_text(path: str | Path) -> io.TextIOBase:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as handle:
        magic = handle.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="strict")
    return open(path, encoding="utf-8", errors="strict")


def iter_records(path: str | Path, skip_malformed: bool = False, skipped: dict | None = None,
                 required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict]]:
    """(line number, object) per non-blank line: JSON, else a Python literal (the 2014 metadata)."""
    path = Path(path)
    skipped = {} if skipped is None else skipped
    key = path.name

    def bad(line_no: int, what: str):
        if not skip_malformed:
            raise DataError(f"{path}: line {line_no}: {what}")
        skipped[key] = skipped.get(key, 0) + 1

    with open_text(path) as handle:
        line_no = 0
        while True:
            try:
                line = handle.readline()
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: after line {line_no}: not UTF-8 text ({exc})") from None
            except (OSError, EOFError) as exc:
                raise DataError(f"{path}: after line {line_no}: cannot be read ({exc}); a truncated .gz?") from None
            if not line:
                break
            line_no += 1
            text = line.strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                try:
                    record = ast.literal_eval(text)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    bad(line_no, f"not a JSON object or Python dict literal: {text[:60]!r}")
                    continue
            if not isinstance(record, dict):
                bad(line_no, f"a {type(record).__name__}; expected one object per line")
                continue
            missing = [f for f in required if not isinstance(record.get(f), str) or not record.get(f)]
            if missing:
                bad(line_no, f"field(s) {missing} missing or not a non-empty string; expected {list(required)}")
                continue
            yield line_no, record


def read_reviews(path: str | Path, skip_malformed: bool = False) -> RawInteractions:
    """Interactions of a reviews dump (2014 or 2018)."""
    skipped: dict = {}
    users, items, ratings, times = [], [], [], []
    for line_no, record in iter_records(path, skip_malformed, skipped, required=("reviewerID", "asin")):
        rating, when = record.get("overall"), record.get("unixReviewTime")
        if isinstance(rating, bool) or (rating is not None and not isinstance(rating, (int, float))):
            if not skip_malformed:
                raise DataError(f"{path}: line {line_no}, field 'overall': {rating!r}; expected a number")
            skipped[Path(path).name] = skipped.get(Path(path).name, 0) + 1
            continue
        if isinstance(when, bool) or (when is not None and not isinstance(when, int)):
            if not skip_malformed:
                raise DataError(f"{path}: line {line_no}, field 'unixReviewTime': {when!r}; expected an integer")
            skipped[Path(path).name] = skipped.get(Path(path).name, 0) + 1
            continue
        users.append(record["reviewerID"])
        items.append(record["asin"])
        ratings.append(np.nan if rating is None else float(rating))
        times.append(-1 if when is None else when)
    if not users:
        raise DataError(f"{path}: no reviews read (expected lines with reviewerID and asin)")
    ratings_a = np.asarray(ratings, dtype=np.float64)
    times_a = np.asarray(times, dtype=np.int64)
    return RawInteractions(
        users=np.asarray(users), items=np.asarray(items),
        rating=None if np.isnan(ratings_a).all() else ratings_a,
        timestamp=None if (times_a < 0).all() else times_a,
        skipped=skipped,
    )


def _description(value) -> str | list | None:
    return value if isinstance(value, (str, list)) else None


def meta_fields(record: dict) -> dict:
    """The recipe fields of one metadata record, 2014 or 2018."""
    categories = record.get("categories", record.get("category"))
    return {
        "title": record.get("title") if isinstance(record.get("title"), str) else None,
        "brand": record.get("brand") if isinstance(record.get("brand"), str) else None,
        "categories": categories if isinstance(categories, (list, str)) else None,
        "description": _description(record.get("description")),
        "main_cat": record.get("main_cat") if isinstance(record.get("main_cat"), str) else None,
        "feature": record.get("feature") if isinstance(record.get("feature"), list) else None,
    }


def read_meta(path: str | Path, asins: set[str] | None = None, skip_malformed: bool = False,
              skipped: dict | None = None) -> dict[str, dict]:
    """asin -> recipe fields, for the asins wanted (all when None); the first record of an asin wins."""
    out: dict[str, dict] = {}
    for _, record in iter_records(path, skip_malformed, skipped, required=("asin",)):
        asin = record["asin"]
        if (asins is None or asin in asins) and asin not in out:
            out[asin] = meta_fields(record)
    return out


def read_image_features(path: str | Path, asins: np.ndarray, dim: int = IMAGE_DIM) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 (len(asins), dim), present bool) from an ``image_features_*.b`` file.

    Rows of asins absent from the file are zero and ``present`` False. The file is memory-mapped: only the
    records of wanted asins are read, so a multi-GB file is fine. A repeated asin keeps its first record.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    record = ASIN_BYTES + 4 * dim
    size = path.stat().st_size
    if size % record:
        raise DataError(
            f"{path}: {size} bytes is not a whole number of records ({size // record} records and "
            f"{size % record} bytes left over); expected records of a {ASIN_BYTES}-byte ASIN followed by "
            f"{dim} float32 ({record} bytes each). Truncated download, or another dimension?"
        )
    wanted = {str(a): i for i, a in enumerate(asins)}
    features = np.zeros((len(asins), dim), dtype=np.float32)
    present = np.zeros(len(asins), dtype=bool)
    if size == 0:
        return features, present
    layout = np.dtype([("asin", f"S{ASIN_BYTES}"), ("x", "<f4", (dim,))])
    table = np.memmap(path, dtype=layout, mode="r")
    for index, raw in enumerate(table["asin"]):
        try:
            asin = raw.decode("ascii").strip("\x00 ")
        except UnicodeDecodeError:
            raise DataError(f"{path}: record {index} (byte {index * record}): ASIN {raw!r} is not ASCII; "
                            f"expected a {ASIN_BYTES}-character ASIN") from None
        row = wanted.get(asin)
        if row is None or present[row]:
            continue
        vector = np.asarray(table[index]["x"], dtype=np.float32)
        if not np.isfinite(vector).all():
            raise DataError(f"{path}: record {index} (ASIN {asin}): non-finite value; expected finite float32")
        features[row] = vector
        present[row] = True
    return features, present


def build_amazon(reviews: str | Path, out: str | Path, meta: str | Path | None = None,
                 images: str | Path | None = None, options: BuildOptions | None = None,
                 recipe: str = AMAZON_RECIPE, skip_malformed: bool = False, image_dim: int = IMAGE_DIM,
                 image_variant: str = "cnn4096") -> dict:
    """Reviews (+ metadata, + image features) to a dataset directory; returns the manifest."""
    out = Path(out)
    options = options or BuildOptions(name=out.name)
    text_recipe = TextRecipe(recipe)
    raw = read_reviews(reviews, skip_malformed)
    built = build_interactions(raw, options)
    write_built(built, out, options.name, "user_id", "asin")
    extra: dict = {"text_recipe": recipe}
    if meta is not None:
        skipped = built.info["skipped"]
        fields = read_meta(meta, set(built.item_ids.tolist()), skip_malformed, skipped)
        texts = [text_recipe.render(fields.get(a, {})) for a in built.item_ids]
        extra["items_without_meta"] = int(sum(a not in fields for a in built.item_ids))
        write_item_table(out / "item_text.tsv", built.item_ids, texts, "asin", "text")
    finish(out, options.name, {"reviews": reviews, "meta": meta, "images": images}, built, extra)
    if images is not None:
        features, present = read_image_features(images, built.item_ids, image_dim)
        if not present.any():
            raise DataError(f"{images}: none of the {built.item_ids.size} items has a record; expected the image "
                            f"features of the same category as {reviews}")
        record_feature(out, "image", image_variant, fill_missing_with_mean(features, present),
                       {"encoder": "features distributed with the Amazon data", "source": str(Path(images).resolve())},
                       mask=present)
    return read_manifest(out)
