"""MovieLens (RecBole's atomic files) with item texts and posters, to a dataset directory.

Inputs:

- ratings: ``ml-100k.inter``, tab-separated, header ``user_id:token item_id:token rating:float
  timestamp:float`` (the ``:type`` suffixes are optional);
- items: ``ml-100k.item``, header ``item_id movie_title release_year class`` (genres space-separated);
- texts (optional): a CSV keyed by ``movie_id`` with ``description`` and ``director`` (a list literal such as
  ``['A', 'B']``), e.g. ``ml100k_imdb_details.csv``;
- posters (optional): a folder of ``<movie_id>.jpg`` (``.jpeg``/``.png`` also found).

The item text follows ``MOVIELENS_RECIPE`` (fields ``title``, ``year``, ``genres``, ``description``,
``directors``), the recipe of ``../shared/data/ml100k-mm``. Posters are not encoded here: their paths go to
``item_image.tsv`` (empty for items without one) for ``ablate features extract --modality image``.
"""
from __future__ import annotations

import ast
import csv
from pathlib import Path

import numpy as np

from .build import BuildOptions, RawInteractions, build_interactions, finish, write_built, write_item_table
from .dataset import DataError
from .manifest import read_manifest
from .recipe import MOVIELENS_RECIPE, TextRecipe

POSTER_SUFFIXES = (".jpg", ".jpeg", ".png")


def _read_atomic(path: Path, encoding: str, wanted: dict[str, str]) -> dict[str, list[str]]:
    """Columns of a RecBole atomic file by plain name (``user_id:token`` -> ``user_id``)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with open(path, encoding=encoding, newline="") as handle:
            rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not {encoding} text ({exc}); pass the file's encoding") from None
    if not rows:
        raise DataError(f"{path}: empty; expected a tab-separated header and rows")
    header = [h.split(":", 1)[0].strip() for h in rows[0]]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise DataError(f"{path}: line 1: missing column(s) {missing}; header has {header}, expected "
                        f"{list(wanted)} (tab-separated, RecBole atomic file)")
    index = {c: header.index(c) for c in wanted}
    out: dict[str, list[str]] = {c: [] for c in wanted}
    for line, row in enumerate(rows[1:], start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path}: line {line}: {len(row)} fields; expected {len(header)} (tab-separated)")
        for column, i in index.items():
            out[column].append(row[i].strip())
    return out


def _numbers(path: Path, column: str, values: list[str], kind: type) -> np.ndarray:
    out = np.empty(len(values), dtype=np.int64 if kind is int else np.float64)
    for row, text in enumerate(values):
        try:
            out[row] = kind(float(text)) if kind is int else float(text)
        except ValueError:
            raise DataError(f"{path}: data row {row + 1}, column {column!r}: {text!r} is not a number") from None
    return out


def read_ratings(path: str | Path) -> RawInteractions:
    path = Path(path)
    cols = _read_atomic(path, "utf-8", {"user_id": "", "item_id": "", "rating": "", "timestamp": ""})
    return RawInteractions(users=_numbers(path, "user_id", cols["user_id"], int),
                           items=_numbers(path, "item_id", cols["item_id"], int),
                           rating=_numbers(path, "rating", cols["rating"], float),
                           timestamp=_numbers(path, "timestamp", cols["timestamp"], int))


def read_items(path: str | Path, encoding: str = "utf-8") -> dict[int, dict]:
    path = Path(path)
    cols = _read_atomic(path, encoding, {"item_id": "", "movie_title": "", "release_year": "", "class": ""})
    ids = _numbers(path, "item_id", cols["item_id"], int)
    return {int(i): {"title": t, "year": y, "genres": g}
            for i, t, y, g in zip(ids, cols["movie_title"], cols["release_year"], cols["class"])}


def _list_literal(path: Path, line: int, text: str) -> list[str]:
    text = text.strip()
    if not text:
        return []
    if not text.startswith("["):
        return [text]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise DataError(f"{path}: line {line}, column 'director': {text[:60]!r}; expected a list such as "
                        f"['A', 'B']") from None
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def read_details(path: str | Path) -> dict[int, dict]:
    """movie_id -> {description, directors} from a details CSV."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("movie_id", "description", "director") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: line 1: missing column(s) {missing}; expected movie_id, description, director")
        out = {}
        for row in reader:
            line = reader.line_num
            try:
                movie = int(float(row["movie_id"]))
            except (TypeError, ValueError):
                raise DataError(f"{path}: line {line}, column 'movie_id': {row['movie_id']!r} is not an integer") from None
            if movie not in out:
                out[movie] = {"description": row["description"] or "",
                              "directors": _list_literal(path, line, row["director"] or "")}
    return out


def find_poster(folder: Path, movie: int) -> Path | None:
    for suffix in POSTER_SUFFIXES:
        candidate = folder / f"{movie}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def build_movielens(ratings: str | Path, items: str | Path, out: str | Path, texts: str | Path | None = None,
                    posters: str | Path | None = None, options: BuildOptions | None = None,
                    recipe: str = MOVIELENS_RECIPE, item_encoding: str = "utf-8") -> dict:
    """Ratings + items (+ texts, + posters) to a dataset directory; returns the manifest.

    MovieLens-100k is already 20-core for users, so ``k_user=0`` keeps all of it (the counts of ml100k-mm).
    """
    out = Path(out)
    options = options or BuildOptions(name=out.name, k_user=0)
    built = build_interactions(read_ratings(ratings), options)
    write_built(built, out, options.name, "user_id", "movie_id")
    item_fields = read_items(items, item_encoding)
    details = read_details(texts) if texts is not None else {}
    text_recipe = TextRecipe(recipe)
    missing_items = [int(m) for m in built.item_ids if int(m) not in item_fields]
    if missing_items:
        raise DataError(f"{items}: no row for item_id(s) {missing_items[:5]} that {ratings} rates; "
                        f"expected every rated item to be listed")
    rendered = [text_recipe.render({**item_fields[int(m)], **details.get(int(m), {})}) for m in built.item_ids]
    write_item_table(out / "item_text.tsv", built.item_ids, rendered, "movie_id", "text")
    extra = {"text_recipe": recipe, "item_encoding": item_encoding,
             "items_without_details": int(sum(int(m) not in details for m in built.item_ids)) if texts else None}
    if posters is not None:
        folder = Path(posters)
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder (expected posters named <movie_id>.jpg)")
        paths = [find_poster(folder, int(m)) for m in built.item_ids]
        write_item_table(out / "item_image.tsv", built.item_ids, [str(p.resolve()) if p else "" for p in paths],
                         "movie_id", "path")
        extra["items_without_poster"] = int(sum(p is None for p in paths))
    finish(out, options.name, {"ratings": ratings, "items": items, "texts": texts, "posters": posters}, built, extra)
    return read_manifest(out)
