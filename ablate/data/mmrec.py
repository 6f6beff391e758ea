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


MAX_ID = 2**31 - 2  # ids are stored as 32-bit integers, and n = max id + 1 must fit as well
SPARSE_IDS = "allow_sparse_ids"


def _line(row: int) -> int:
    """File line number (1-based, header is line 1) of data row `row` (0-based), for a file without blank lines."""
    return row + 2


class _Lines:
    """The lines of a text file as the CSV parser sees them (ended by \\n, \\r\\n or \\r; blank ones skipped, the
    first other one is the header); ``number[row]`` is the 1-based file line of data row `row`."""

    def __init__(self, raw: bytes):
        self.raw = raw
        buf = np.frombuffer(raw, dtype=np.uint8)
        newline, carriage = buf == 10, buf == 13
        lone_cr = carriage & ~np.append(newline[1:], False)
        ends = np.flatnonzero(newline | lone_cr)
        if not ends.size or ends[-1] != buf.size - 1:
            ends = np.append(ends, buf.size)  # a last line without its line end
        starts = np.concatenate(([0], ends[:-1] + 1))
        crlf = np.zeros(ends.size, dtype=bool)
        inside = ends < buf.size
        crlf[inside] = newline[ends[inside]] & (ends[inside] > starts[inside]) & carriage[np.maximum(ends[inside] - 1, 0)]
        filled = np.flatnonzero(ends - starts - crlf > 0) + 1
        self.header = int(filled[0]) if filled.size else 0
        self.number = filled[1:].astype(np.int64)

    @property
    def text(self) -> list[bytes]:
        return self.raw.splitlines()

    def of(self, row: int) -> int:
        return int(self.number[row])


def _diagnose(path: Path, lines: _Lines, width: int, error: Exception) -> DataError:
    """The first line the parser must have stumbled on, else the parser's own words; always naming the file."""
    text = lines.text
    for number in lines.number:
        line = text[number - 1]
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return DataError(f"{path}: line {number} is not UTF-8 text ({line[:60]!r}); expected a UTF-8 text file")
        fields = line.count(b"\t") + 1
        if fields != width:
            return DataError(f"{path}: line {number} has {fields} tab-separated field(s), the header {width}: "
                             f"{line[:60].decode('utf-8', 'replace')!r}; expected one value per column, separated "
                             f"by single tabs (no quoting)")
    return DataError(f"{path}: not a tab-separated file with a header row ({error})")


def _integer_column(table: pa.Table, column: str, path: Path, lines: _Lines, expected: str) -> np.ndarray:
    """A column of whole numbers written as digits (no sign but '-', no decimal point, no exponent)."""
    text = pc.utf8_trim_whitespace(table.column(column))
    if text.null_count:
        row = int(np.flatnonzero(text.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: line {lines.of(row)}, column {column!r}: empty value (expected {expected})")
    ok = pc.match_substring_regex(text, r"^-?[0-9]{1,10}$").to_numpy(zero_copy_only=False)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        value = text[row].as_py()
        why = "is too large" if re.fullmatch(r"-?[0-9]+", value) else "is not an integer"
        raise DataError(f"{path}: line {lines.of(row)}, column {column!r}: {value!r} {why} (expected {expected}, "
                        f"written as digits)")
    return pc.cast(text, pa.int64()).to_numpy(zero_copy_only=False)


def _read_table(path: Path) -> tuple[pa.Table, _Lines]:
    """The required columns as text, and where each row sits in the file; every parse error names the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    lines = _Lines(raw)
    first = re.search(rb"[^\r\n]+(\r\n|\r|\n|$)", raw)  # the header: the first line that is not blank
    try:
        header = first.group(0).decode("utf-8").rstrip("\r\n").split("\t") if first else []
    except UnicodeDecodeError:
        raise DataError(f"{path}: line {lines.header} (the header) is not UTF-8 text") from None
    # a header written with quoted names (older ablate versions did) means the same columns
    header = [n[1:-1] if len(n) > 1 and n[0] == n[-1] == '"' else n for n in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; header has {header}, expected at least "
                        f"{list(REQUIRED_COLUMNS)} (tab-separated)")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DataError(f"{path}: line {lines.header}: column(s) {repeated} appear more than once in the header; "
                        f"expected each column once")
    try:
        table = pacsv.read_csv(
            pa.BufferReader(raw[first.end():]),
            read_options=pacsv.ReadOptions(column_names=header),
            # MMRec files are plain tab-separated text: a '"' is a character, never a quote
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False,
                                             newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(include_columns=list(REQUIRED_COLUMNS),
                                                 column_types={c: pa.string() for c in REQUIRED_COLUMNS},
                                                 null_values=[""], strings_can_be_null=True),
        )
    except (pa.ArrowInvalid, pa.ArrowKeyError, pa.ArrowTypeError) as exc:
        raise _diagnose(path, lines, len(header), exc) from None
    if table.num_rows != len(lines.number):
        raise DataError(f"{path}: {table.num_rows} rows parsed from {len(lines.number)} data lines; expected one "
                        f"row per line")
    return table, lines


def _read_inter(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, _Lines]:
    path = Path(path)
    table, lines = _read_table(path)
    expected = f"a 0-based integer id up to {MAX_ID}"
    users = _integer_column(table, "userID", path, lines, expected)
    items = _integer_column(table, "itemID", path, lines, expected)
    labels = _integer_column(table, "x_label", path, lines, "0 train, 1 valid or 2 test")
    for name, values in (("userID", users), ("itemID", items)):
        negative = np.flatnonzero(values < 0)
        if negative.size:
            row = int(negative[0])
            raise DataError(f"{path}: line {lines.of(row)}, column {name!r}: {values[row]} is negative "
                            f"(expected ids >= 0)")
        large = np.flatnonzero(values > MAX_ID)
        if large.size:
            row = int(large[0])
            raise DataError(f"{path}: line {lines.of(row)}, column {name!r}: {values[row]} is too large "
                            f"(expected {expected}: ids are stored as 32-bit integers)")
    bad = np.flatnonzero((labels < 0) | (labels > 2))
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"{path}: line {lines.of(row)}, column 'x_label': {labels[row]} is not a split label "
            f"(expected 0 train, 1 valid or 2 test)"
        )
    return users, items, labels.astype(np.int8), lines


def read_inter(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, split) of an MMRec `.inter` file, validated."""
    users, items, split, _ = _read_inter(path)
    return users, items, split


def check_interactions(users: np.ndarray, items: np.ndarray, split: np.ndarray, source: str,
                       lines: np.ndarray | None = None) -> None:
    """Checks that hold for any dataset: a train split, no duplicates, every evaluated user trained.

    `lines[row]` is the file line of row `row` (default: the row after a one-line header)."""
    def line(row: int) -> int:
        return int(lines[row]) if lines is not None else _line(row)

    if users.size == 0:
        raise DataError(f"{source}: no interactions")
    if not (split == TRAIN).any():
        raise DataError(f"{source}: the train split is empty (no row with x_label 0)")
    # one key per pair: ids are below 2**31 (checked when read), so user * 2**32 + item fits in 63 bits
    pair = (users.astype(np.int64) << 32) | items.astype(np.int64)
    order = np.argsort(pair, kind="stable")
    dup = np.flatnonzero(pair[order][1:] == pair[order][:-1])
    if dup.size:
        first, second = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
        raise DataError(
            f"{source}: lines {line(first)} and {line(second)} repeat the pair (user {users[first]}, "
            f"item {items[first]}); expected each (user, item) once (remove duplicates, keeping the copy "
            f"in the split you intend)"
        )
    untrained = np.flatnonzero(~np.isin(users, users[split == TRAIN]))
    if untrained.size:
        row = int(untrained[0])
        raise DataError(
            f"{source}: line {line(row)}: user {users[row]} has valid/test rows but no train row "
            f"(expected every evaluated user to have at least one x_label 0 row)"
        )


def check_id_range(values: np.ndarray, column: str, source: str, lines: np.ndarray) -> None:
    """Ids must cover most of 0..max: a dataset with more unused ids than used ones is an error naming the line
    of the largest id (a typo, or ids never re-encoded after filtering would size every table by it)."""
    n = int(values.max()) + 1
    if n <= 2 * values.size:  # else more ids are unused than there are rows: no need to count them
        seen = np.zeros(n, dtype=bool)
        seen[values] = True
        used = int(seen.sum())
    else:
        used = int(np.unique(values).size)
    if n > 2 * used:
        row = int(np.argmax(values))
        raise DataError(
            f"{source}: line {int(lines[row])}, column {column!r}: id {values[row]} makes {n} ids, but only "
            f"{used} distinct ones appear (more ids unused than used); expected 0-based ids with few gaps "
            f"(re-encode them as 0..{used - 1}, or allow sparse ids: --allow-sparse-ids, {SPARSE_IDS}=True)"
        )


def _check_file(path: Path, directory: Path) -> None:
    """A feature file must be a regular file inside the dataset folder (a link may point within it)."""
    target = path.resolve()
    if not target.is_relative_to(directory.resolve()):
        raise DataError(f"{path}: links to {target}, outside the dataset folder {directory}; expected a regular "
                        f"file inside the folder (copy it in)")
    if not target.is_file():
        raise DataError(f"{path}: not a regular file; expected a .npy file")


def _npy_header(path: Path) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, data offset) from a .npy file's header, without reading its data or unpickling anything."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        return shape, dtype, handle.tell()


def read_features(path: Path, n_items: int, items_hint: str = "") -> np.ndarray:
    """A feature matrix from a `.npy` file, read without pickle, validated, as float32.

    `items_hint` says where n_items comes from (named when the row count does not match)."""
    path = Path(path)
    expected = f"a 2-D float array of shape (n_items={n_items}, dim) written by numpy.save"
    try:
        shape, dtype, offset = _npy_header(path)
    except (ValueError, OSError, EOFError, SyntaxError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable .npy file ({exc or type(exc).__name__}); expected {expected}") from None
    if dtype.hasobject:
        raise DataError(f"{path}: dtype {dtype} holds Python objects (pickled objects are refused); expected {expected}")
    if len(shape) != 2:
        raise DataError(f"{path}: shape {shape}; expected {expected}")
    if not np.issubdtype(dtype, np.floating):
        raise DataError(f"{path}: dtype {dtype}; expected floating point features (float32 or float64)")
    size, needed = path.stat().st_size, offset + int(np.prod(shape)) * dtype.itemsize
    if size < needed:
        raise DataError(f"{path}: truncated: {size} bytes, the header's shape {shape} of {dtype} needs {needed}; "
                        f"expected the whole file (write it again)")
    if shape[0] != n_items:
        raise DataError(f"{path}: {shape[0]} rows; expected one row per item, n_items={n_items}{items_hint}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy file ({exc}); expected {expected}") from None
    finite = np.isfinite(array)
    if not finite.all():
        row, col = (int(x) for x in np.argwhere(~finite)[0])
        raise DataError(f"{path}: row {row}, column {col} is {array[row, col]}; expected finite values (no NaN or inf)")
    return np.ascontiguousarray(array, dtype=np.float32)


def read_mmrec(directory: str | Path, name: str | None = None, allow_sparse_ids: bool = False) -> Dataset:
    """Load a dataset directory in the MMRec layout (see the module docstring), or one `.inter` file
    (features are then read from the files beside it).

    `allow_sparse_ids`: accept ids that leave most of 0..max unused (every table is still sized by max + 1)."""
    path = Path(directory)
    if path.is_file() and path.suffix == ".inter":
        inter, directory = path, path.parent
    else:
        inter, directory = find_inter_file(path), path
    users, items, split, lines = _read_inter(inter)
    if users.size == 0:
        raise DataError(f"{inter}: no interaction rows")
    check_interactions(users, items, split, str(inter), lines.number)
    if not allow_sparse_ids:
        check_id_range(users, "userID", str(inter), lines.number)
        check_id_range(items, "itemID", str(inter), lines.number)
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    largest = int(np.argmax(items))
    hint = f" (the largest itemID, {items[largest]}, on line {lines.of(largest)} of {inter})"
    features: dict[str, dict[str, np.ndarray]] = {}
    manifest = read_manifest(directory)  # names the variants and their defaults, when the directory has one
    names = variant_names(manifest)
    for path in sorted(directory.glob("*.npy")):
        match = FEATURE_FILE.match(path.name)
        if not match:
            continue
        _check_file(path, directory)
        modality = match["modality"]
        variant = names.get((modality, path.name), match["variant"] or DEFAULT_VARIANT)
        features.setdefault(modality, {})[variant] = read_features(path, n_items, hint)
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
    with open(directory / f"{dataset.name}.inter", "wb") as handle:
        handle.write(("\t".join(table.column_names) + "\n").encode())  # the header unquoted, as MMRec's are
        pacsv.write_csv(table, handle,
                        write_options=pacsv.WriteOptions(delimiter="\t", quoting_style="none", include_header=False))
    for modality, variants in dataset.features.items():
        for variant, array in variants.items():
            suffix = "" if variant == DEFAULT_VARIANT else f"_{variant}"
            np.save(directory / f"{modality}_feat{suffix}.npy", array)
    return directory
