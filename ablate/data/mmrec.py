"""Read and write datasets in the MMRec layout, checking everything a stranger's files can get wrong.

Layout of a dataset directory ``<dir>``:

- ``<name>.inter``: tab-separated, a header naming at least ``userID itemID x_label`` (``rating`` and
  ``timestamp`` optional and ignored); ids are 0-based integers; ``x_label`` is 0 train, 1 valid, 2 test.
- ``text_feat.npy``, ``image_feat.npy``: float (n_items, dim), row i = item i; the modality's ``default``
  variant.
- ``<modality>_feat_<variant>.npy``: further encoder variants of a modality (e.g. ``image_feat_vit_b_16.npy``).
- ``manifest.json`` (optional, see ``manifest.py``): names the variants (the unsuffixed file too, e.g.
  ``cnn4096``) and each modality's default.

Duplicate (user, item) rows are an error, not a silent drop: a pair in two splits leaks test items into
training, and which copy to keep is the data owner's call.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .dataset import DEFAULT_VARIANT, TRAIN, DataError, Dataset
from .manifest import default_variants, read_manifest, variant_names

REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
FEATURE_FILE = re.compile(r"^(?P<modality>[A-Za-z]+)_feat(?:_(?P<variant>[A-Za-z0-9_.\-]+))?\.npy$")


def find_inter_file(directory: Path) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory (expected a dataset directory in the MMRec layout)")
    candidates = sorted(directory.glob("*.inter"))
    if not candidates:
        raise DataError(f"{directory}: no '*.inter' file (expected '<name>.inter' with columns userID itemID x_label)")
    if len(candidates) > 1:
        named = directory / f"{directory.name}.inter"
        if named in candidates:
            return named
        raise DataError(
            f"{directory}: several .inter files ({', '.join(c.name for c in candidates)}); "
            f"expected one, or one named '{directory.name}.inter'"
        )
    return candidates[0]


def _line(row: int) -> int:
    """File line number (1-based, header is line 1) of data row `row` (0-based)."""
    return row + 2


def _integer_column(table: pa.Table, column: str, path: Path) -> np.ndarray:
    col = table.column(column)
    if pa.types.is_integer(col.type):
        values = col.to_numpy(zero_copy_only=False)
    else:
        text = pc.utf8_trim_whitespace(pc.cast(col, pa.string()))
        ok = pc.fill_null(pc.match_substring_regex(text, r"^[+-]?\d+$"), False).to_numpy(zero_copy_only=False)
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            raise DataError(
                f"{path}: line {_line(row)}, column {column!r}: {text[row].as_py()!r} is not an integer "
                f"(expected a 0-based integer id)"
            )
        values = pc.cast(text, pa.int64()).to_numpy()
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: line {_line(row)}, column {column!r}: empty value (expected an integer)")
    return values.astype(np.int64, copy=False)


def read_inter(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, split) of an MMRec `.inter` file, validated."""
    path = Path(path)
    try:
        table = pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter="\t"),
            convert_options=pacsv.ConvertOptions(include_columns=None, strings_can_be_null=True),
        )
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: not a tab-separated file with a header row ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; header has {table.column_names}, "
            f"expected at least {list(REQUIRED_COLUMNS)} (tab-separated)"
        )
    users = _integer_column(table, "userID", path)
    items = _integer_column(table, "itemID", path)
    labels = _integer_column(table, "x_label", path)
    for name, values in (("userID", users), ("itemID", items)):
        negative = np.flatnonzero(values < 0)
        if negative.size:
            row = int(negative[0])
            raise DataError(f"{path}: line {_line(row)}, column {name!r}: {values[row]} is negative (expected ids >= 0)")
    bad = np.flatnonzero((labels < 0) | (labels > 2))
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"{path}: line {_line(row)}, column 'x_label': {labels[row]} is not a split label "
            f"(expected 0 train, 1 valid or 2 test)"
        )
    return users, items, labels.astype(np.int8)


def check_interactions(users: np.ndarray, items: np.ndarray, split: np.ndarray, n_items: int, source: str) -> None:
    """Checks that hold for any dataset: a train split, no duplicates, every evaluated user trained."""
    if users.size == 0:
        raise DataError(f"{source}: no interactions")
    if not (split == TRAIN).any():
        raise DataError(f"{source}: the train split is empty (no row with x_label 0)")
    pair = users.astype(np.int64) * int(n_items) + items
    order = np.argsort(pair, kind="stable")
    dup = np.flatnonzero(pair[order][1:] == pair[order][:-1])
    if dup.size:
        first, second = int(order[dup[0]]), int(order[dup[0] + 1])
        raise DataError(
            f"{source}: lines {_line(first)} and {_line(second)} repeat the pair (user {users[first]}, "
            f"item {items[first]}); expected each (user, item) once (remove duplicates, keeping the copy "
            f"in the split you intend)"
        )
    trained = np.zeros(int(users.max()) + 1, dtype=bool)
    trained[users[split == TRAIN]] = True
    untrained = np.flatnonzero(~trained[users])
    if untrained.size:
        row = int(untrained[0])
        raise DataError(
            f"{source}: line {_line(row)}: user {users[row]} has valid/test rows but no train row "
            f"(expected every evaluated user to have at least one x_label 0 row)"
        )


def read_features(path: Path, n_items: int) -> np.ndarray:
    """A feature matrix from a `.npy` file, read without pickle, validated, as float32."""
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: not a plain numeric .npy array ({exc}); pickled objects are refused") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read as .npy ({exc})") from None
    if array.ndim != 2:
        raise DataError(f"{path}: shape {array.shape}; expected a 2-D array (n_items={n_items}, dim)")
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{path}: dtype {array.dtype}; expected floating point features (float32 or float64)")
    if array.shape[0] != n_items:
        raise DataError(
            f"{path}: {array.shape[0]} rows; expected one row per item, n_items={n_items} "
            f"(max itemID + 1 in the .inter file)"
        )
    finite = np.isfinite(array)
    if not finite.all():
        row, col = (int(x) for x in np.argwhere(~finite)[0])
        raise DataError(f"{path}: row {row}, column {col} is {array[row, col]}; expected finite values (no NaN or inf)")
    return np.ascontiguousarray(array, dtype=np.float32)


def read_mmrec(directory: str | Path, name: str | None = None) -> Dataset:
    """Load a dataset directory in the MMRec layout (see the module docstring), or one `.inter` file
    (features are then read from the files beside it)."""
    path = Path(directory)
    if path.is_file() and path.suffix == ".inter":
        inter, directory = path, path.parent
    else:
        inter, directory = find_inter_file(path), path
    users, items, split = read_inter(inter)
    if users.size == 0:
        raise DataError(f"{inter}: no interaction rows")
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    check_interactions(users, items, split, n_items, str(inter))
    features: dict[str, dict[str, np.ndarray]] = {}
    manifest = read_manifest(directory)  # names the variants and their defaults, when the directory has one
    names = variant_names(manifest)
    for path in sorted(directory.glob("*.npy")):
        match = FEATURE_FILE.match(path.name)
        if not match:
            continue
        modality = match["modality"]
        variant = names.get((modality, path.name), match["variant"] or DEFAULT_VARIANT)
        features.setdefault(modality, {})[variant] = read_features(path, n_items)
    defaults = {}
    for modality, variants in features.items():
        defaults[modality] = DEFAULT_VARIANT if DEFAULT_VARIANT in variants else sorted(variants)[0]
        if default_variants(manifest).get(modality) in variants:
            defaults[modality] = default_variants(manifest)[modality]
    return Dataset(
        name=name or inter.stem,
        users=users.astype(np.int32),
        items=items.astype(np.int32),
        split=split,
        n_users=n_users,
        n_items=n_items,
        features=features,
        default_variants=defaults,
    )


def write_mmrec(dataset: Dataset, directory: str | Path) -> Path:
    """Write `dataset` in the MMRec layout; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table({"userID": dataset.users, "itemID": dataset.items, "x_label": dataset.split.astype(np.int32)})
    pacsv.write_csv(
        table,
        directory / f"{dataset.name}.inter",
        write_options=pacsv.WriteOptions(delimiter="\t", quoting_style="none"),
    )
    for modality, variants in dataset.features.items():
        for variant, array in variants.items():
            suffix = "" if variant == DEFAULT_VARIANT else f"_{variant}"
            np.save(directory / f"{modality}_feat{suffix}.npy", array)
    return directory
