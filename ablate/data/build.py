"""Raw interactions to a dataset directory: de-duplicate, k-core, remap ids, split, write MMRec layout + manifest.

What a builder writes into ``out``:

- ``<name>.inter``: ``userID itemID rating timestamp x_label`` (tab-separated, MMRec's layout);
- ``u_id_mapping.csv`` / ``i_id_mapping.csv``: raw id -> contiguous id (tab-separated, header);
- ``item_text.tsv``: ``itemID <raw id> text``, the texts a text encoder reads (``ablate features extract``);
- ``item_image.tsv`` (when images are files): ``itemID <raw id> path``, empty path = no image;
- ``image_feat.npy`` + ``has_image.npy`` (when image features come with the raw data): items without an
  image get the mean of the others and ``has_image`` False, as the paper's data does;
- ``manifest.json``: sources with their hashes, k-core, split rule and seed, counts, skipped lines, features.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from .dataset import TEST, TRAIN, VALID, DataError
from .kcore import encode, kcore_mask
from .manifest import add_variant, source_entry, write_manifest
from .split import split_per_user

SPLIT_RULES = ("random", "time")


@dataclass
class RawInteractions:
    """Interactions with raw ids, as read from a dump; ``rating``/``timestamp`` may be None."""

    users: np.ndarray
    items: np.ndarray
    rating: np.ndarray | None = None
    timestamp: np.ndarray | None = None
    skipped: dict = field(default_factory=dict)


@dataclass
class BuildOptions:
    name: str
    k_user: int = 5
    k_item: int | None = None  # None: same as k_user
    split: str = "random"
    seed: int = 0
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    min_for_ratio: int = 10

    def __post_init__(self):
        if self.split not in SPLIT_RULES:
            raise ValueError(f"split rule {self.split!r}: expected one of {SPLIT_RULES}")
        if len(self.ratios) != 3 or abs(sum(self.ratios) - 1) > 1e-6 or min(self.ratios) < 0:
            raise ValueError(f"split ratios {self.ratios}: expected three non-negative numbers summing to 1")


@dataclass
class Built:
    """What `build_interactions` decided: the kept interactions with new ids, and the id mappings."""

    users: np.ndarray  # int32, new ids
    items: np.ndarray
    split: np.ndarray  # int8
    rating: np.ndarray | None
    timestamp: np.ndarray | None
    user_ids: np.ndarray  # raw id of each new user id
    item_ids: np.ndarray
    info: dict


def build_interactions(raw: RawInteractions, options: BuildOptions) -> Built:
    """De-duplicate (user, item) keeping the earliest (else the first) row, k-core filter, remap, split."""
    u_codes, _ = encode(raw.users)
    i_codes, _ = encode(raw.items)
    n_raw = u_codes.size
    if n_raw == 0:
        raise DataError("no interactions were read (check the input files)")
    pair = u_codes * (int(i_codes.max()) + 1) + i_codes
    order_key = raw.timestamp if raw.timestamp is not None else np.arange(n_raw)
    order = np.lexsort((np.arange(n_raw), order_key, pair))
    first = np.r_[True, pair[order][1:] != pair[order][:-1]]
    keep_rows = np.sort(order[first])
    duplicates = n_raw - keep_rows.size

    def take(a):
        return None if a is None else np.asarray(a)[keep_rows]

    users_raw, items_raw = np.asarray(raw.users)[keep_rows], np.asarray(raw.items)[keep_rows]
    rating, timestamp = take(raw.rating), take(raw.timestamp)
    u_codes, i_codes = u_codes[keep_rows], i_codes[keep_rows]
    mask, rounds = kcore_mask(u_codes, i_codes, options.k_user, options.k_item)
    if not mask.any():
        raise DataError(f"k-core filtering with k_user={options.k_user}, k_item={options.k_item or options.k_user} "
                        f"removed every interaction; expected a smaller k for this data")
    users_raw, items_raw = users_raw[mask], items_raw[mask]
    rating = None if rating is None else rating[mask]
    timestamp = None if timestamp is None else timestamp[mask]
    users, user_ids = encode(users_raw)
    items, item_ids = encode(items_raw)
    if options.split == "time":
        if timestamp is None:
            raise DataError("split rule 'time' needs timestamps, and the interactions have none")
        order = np.asarray(timestamp, dtype=np.float64)
    else:
        order = None
    split = split_per_user(users, options.seed, ratios=tuple(options.ratios), order=order,
                           min_for_ratio=options.min_for_ratio)
    counts = np.bincount(split, minlength=3)
    info = {
        "k_core": {"user": options.k_user, "item": options.k_item if options.k_item is not None else options.k_user,
                   "rounds": rounds},
        "split": {"rule": options.split, "seed": options.seed, "ratios": list(options.ratios),
                  "min_for_ratio": options.min_for_ratio,
                  "description": "per user, " + ("shuffled" if options.split == "random" else "ordered by time")
                  + f", cut {list(options.ratios)}; users with fewer than {options.min_for_ratio} interactions "
                  "give one to valid and one to test"},
        "counts": {"raw_interactions": int(n_raw), "duplicates_dropped": int(duplicates),
                   "users": int(user_ids.size), "items": int(item_ids.size), "interactions": int(users.size),
                   "train": int(counts[TRAIN]), "valid": int(counts[VALID]), "test": int(counts[TEST])},
        "skipped": dict(raw.skipped),
    }
    return Built(users.astype(np.int32), items.astype(np.int32), split, rating, timestamp, user_ids, item_ids, info)


def _tsv(path: Path, columns: dict) -> None:
    """Tab-separated with an unquoted header (MMRec's readers and ours both take it)."""
    with open(path, "wb") as handle:
        handle.write(("\t".join(columns) + "\n").encode())
        pacsv.write_csv(pa.table(columns), handle,
                        write_options=pacsv.WriteOptions(delimiter="\t", quoting_style="none", include_header=False))


def write_built(built: Built, out: Path, name: str, user_label: str, item_label: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    columns = {"userID": built.users, "itemID": built.items}
    if built.rating is not None:
        columns["rating"] = np.asarray(built.rating, dtype=np.float64)
    if built.timestamp is not None:
        columns["timestamp"] = np.asarray(built.timestamp, dtype=np.int64)
    columns["x_label"] = built.split.astype(np.int32)
    _tsv(out / f"{name}.inter", columns)
    _tsv(out / "u_id_mapping.csv", {user_label: built.user_ids.astype(str), "userID": np.arange(built.user_ids.size)})
    _tsv(out / "i_id_mapping.csv", {item_label: built.item_ids.astype(str), "itemID": np.arange(built.item_ids.size)})


def write_item_table(path: Path, raw_ids: np.ndarray, values: list[str], raw_label: str, value_label: str) -> None:
    """itemID, raw id, value; tabs and newlines in values become spaces (one item per line)."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(f"itemID\t{raw_label}\t{value_label}\n")
        for i, (raw, value) in enumerate(zip(raw_ids, values)):
            handle.write(f"{i}\t{' '.join(str(raw).split())}\t{' '.join(str(value).split())}\n")


def read_item_table(path: Path, value_label: str, n_items: int | None = None) -> list[str]:
    """The values of an ``item_text.tsv`` / ``item_image.tsv`` by itemID, checked to cover 0..n-1 once."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing (expected a tab-separated file with columns itemID and {value_label}; "
                        f"'ablate data build-*' writes it)")
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or "itemID" not in rows[0] or value_label not in rows[0]:
        raise DataError(f"{path}: line 1: header {rows[0] if rows else []}; expected columns itemID and {value_label}")
    id_col, value_col = rows[0].index("itemID"), rows[0].index(value_label)
    values: dict[int, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise DataError(f"{path}: line {line}: {len(row)} fields; expected {len(rows[0])} (tab-separated)")
        try:
            item = int(row[id_col])
        except ValueError:
            raise DataError(f"{path}: line {line}, column 'itemID': {row[id_col]!r} is not an integer") from None
        if item in values:
            raise DataError(f"{path}: line {line}: itemID {item} appears twice; expected one row per item")
        values[item] = row[value_col]
    n = n_items if n_items is not None else len(values)
    missing = [i for i in range(n) if i not in values]
    if missing or len(values) != n:
        extra = sorted(set(values) - set(range(n)))
        raise DataError(f"{path}: itemIDs must be 0..{n - 1} once each; missing {missing[:5]}, "
                        f"unexpected {extra[:5]}")
    return [values[i] for i in range(n)]


def fill_missing_with_mean(features: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Rows where ``present`` is False get the mean of the present rows (the paper's treatment)."""
    features = np.asarray(features, dtype=np.float32)
    if present.any() and not present.all():
        features[~present] = features[present].mean(axis=0, dtype=np.float64).astype(np.float32)
    return features


def finish(out: Path, name: str, sources: dict, built: Built, extra: dict | None = None) -> dict:
    manifest = {"name": name, "sources": {k: source_entry(v) for k, v in sources.items() if v is not None},
                **built.info, **(extra or {})}
    write_manifest(out, manifest)
    return manifest


def record_feature(out: Path, modality: str, name: str, array: np.ndarray, entry: dict, default: bool = True,
                   mask: np.ndarray | None = None) -> None:
    """Save ``<modality>_feat.npy`` (the MMRec default file) and name it in the manifest."""
    file = f"{modality}_feat.npy"
    np.save(out / file, np.ascontiguousarray(array, dtype=np.float32))
    entry = {"file": file, "dim": int(array.shape[1]), **entry}
    if mask is not None:
        np.save(out / f"has_{modality}.npy", mask.astype(bool))
        entry["mask"] = f"has_{modality}.npy"
        entry["missing"] = int((~mask).sum())
    add_variant(out, modality, name, entry, make_default=default)
