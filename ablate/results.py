"""The results table: Parquet rows, one per trial, at a local path or a URI; compacted into larger files later.

Files (their names carry the trial's key, so the keys already done come from one listing, no file read):

- ``part-<key>.parquet``: a finished or collapsed trial's row, written under a temporary name and renamed
  (an object store publishes a whole object at once), so a crash never leaves half a row. Rows of older
  versions (``part-<key>-<suffix>.parquet``) are read the same way.
- ``failed-<key>.parquet``: a trial that errored after its retries (status ``failed``, the error's type,
  message and last frame); a rerun runs that cell again.
- ``compact-<id>.parquet``: many rows merged by `compact`. Which keys it holds is read from its ``key`` and
  ``status`` columns only.

Readers see one row per key: a finished or collapsed row before a failed one, the first written first. That
also makes a compaction cut short harmless: a row both in a compacted file and in its part file is one row.
A file that cannot be read (one this package never writes: every file is published whole) is named in one
`UnreadableResults` warning and left out of the rows read.
"""
from __future__ import annotations

import os
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pyarrow.fs as pafs

from .metric_names import DEFAULT_KS, METRICS


def metric_columns(split: str, ks=DEFAULT_KS) -> list[str]:
    return [f"{split}_{m}@{k}" for m in METRICS for k in ks]


BASE_FIELDS = [
    ("key", pa.string()), ("dataset", pa.string()), ("data_source", pa.string()), ("model", pa.string()),
    ("condition", pa.string()), ("fill", pa.string()), ("phase", pa.string()), ("seed", pa.int64()),
    ("encoders", pa.string()), ("hparams", pa.string()), ("train_config", pa.string()),
    ("modalities", pa.string()), ("data_hash", pa.string()),
    ("status", pa.string()), ("reason", pa.string()), ("best_epoch", pa.int64()), ("epochs", pa.int64()),
    ("seconds_per_epoch", pa.float64()), ("train_seconds", pa.float64()), ("eval_seconds", pa.float64()),
    ("wall_seconds", pa.float64()), ("curve", pa.string()), ("ablate_version", pa.string()),
    ("torch_version", pa.string()), ("device", pa.string()), ("host", pa.string()), ("python", pa.string()),
    ("finished_at", pa.string()),
    # the popularity ranking's valid metric (the trial's valid_metric) and whether the trial finished below it
    ("popularity_valid", pa.float64()), ("degenerate", pa.bool_()),
]


def schema(ks=DEFAULT_KS, extra: list[tuple[str, pa.DataType]] = ()) -> pa.Schema:
    metrics = [(c, pa.float64()) for split in ("valid", "test") for c in metric_columns(split, ks)]
    return pa.schema(BASE_FIELDS + metrics + list(extra))


class UnreadableResults(UserWarning):
    """Some result files could not be read; they are left out of the rows read."""


FAILED = "failed"
ERROR_FIELDS = [("error_type", pa.string()), ("error_message", pa.string()), ("error_frame", pa.string())]


@dataclass
class Listing:
    """What one listing of a results folder shows: files by kind (paths), and the keys their names carry."""

    parts: dict[str, str] = field(default_factory=dict)  # key -> file of its finished/collapsed row
    failed: dict[str, str] = field(default_factory=dict)  # key -> file of its failed row
    compacted: list[str] = field(default_factory=list)
    temporary: list[str] = field(default_factory=list)  # left by a write or a compaction cut short


class ResultStore:
    """Results at `uri`: a local directory, or any URI pyarrow understands (s3://bucket/path)."""

    def __init__(self, uri: str | Path):
        uri = str(uri)
        if uri.startswith("s3://"):
            self.fs, self.path = s3_filesystem(uri)
        elif "://" in uri:
            self.fs, self.path = pafs.FileSystem.from_uri(uri)
        else:
            self.fs, self.path = pafs.LocalFileSystem(), str(Path(uri).resolve())
        self.uri = uri
        self.listings = 0  # listings of the folder made through this object

    # ---- writing
    def append(self, row: dict) -> str:
        """Write one trial's row (a ``failed`` one to its own file); returns the file's path."""
        columns = schema(_ks_of(row), ERROR_FIELDS if row.get("status") == FAILED else ())
        extra = [(k, pa.array([v]).type) for k, v in row.items() if k not in columns.names]
        table = pa.Table.from_pylist([row], schema=pa.schema(list(columns) + extra))
        kind = "failed" if row.get("status") == FAILED else "part"
        return self._publish(table, f"{kind}-{row['key']}.parquet")

    def append_record(self, record: dict) -> str:
        """Write one free-form row (any flat columns, with a 'key'); `read_records` gives them back."""
        return self._publish(pa.Table.from_pylist([record]), f"part-{record['key']}.parquet")

    def _publish(self, table: pa.Table, name: str) -> str:
        final = f"{self.path}/{name}"
        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.create_dir(self.path, recursive=True)
            temporary = f"{self.path}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
            pq.write_table(table, temporary, filesystem=self.fs)
            self.fs.move(temporary, final)
        else:  # object stores publish a whole object at once
            pq.write_table(table, final, filesystem=self.fs)
        return final

    # ---- what is there
    def listing(self) -> Listing:
        """One listing of the folder (on S3: one LIST call per 1,000 files)."""
        out = Listing()
        self.listings += 1
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False))
        except FileNotFoundError:
            return out
        for info in infos:
            name = info.base_name
            if name.endswith(".tmp"):
                out.temporary.append(info.path)
            elif not name.endswith(".parquet"):
                continue
            elif name.startswith("part-"):
                out.parts.setdefault(_key_of(name, "part-"), info.path)
            elif name.startswith("failed-"):
                out.failed[_key_of(name, "failed-")] = info.path
            elif name.startswith("compact-"):
                out.compacted.append(info.path)
        out.compacted.sort()
        return out

    def has(self, key: str) -> bool:
        """Whether `key`'s finished or collapsed row is in a part file (one look-up, no listing)."""
        path = f"{self.path}/part-{key}.parquet"
        if isinstance(self.fs, pafs.LocalFileSystem):
            return os.path.isfile(path)
        try:  # one HEAD request (a missing path's file info would also LIST, to look for a folder)
            self.fs.open_input_file(path).close()
        except FileNotFoundError:
            return False
        return True

    def done_keys(self, listing: Listing | None = None) -> set[str]:
        """Keys with a finished or collapsed row: part file names, and compacted files' key/status columns."""
        return self.keys_by_outcome(listing)[0]

    def failed_keys(self, listing: Listing | None = None) -> set[str]:
        """Keys whose only rows are failed ones (a rerun runs them again)."""
        return self.keys_by_outcome(listing)[1]

    def keys_by_outcome(self, listing: Listing | None = None) -> tuple[set[str], set[str]]:
        """(keys done, keys failed and not done) from one listing (plus compacted files' key/status columns)."""
        listing = listing or self.listing()
        done, failed = set(listing.parts), set(listing.failed)
        if listing.compacted:
            table = self._read_files(listing.compacted, ["key", "status"])
            is_failed = pc.equal(table["status"], FAILED).fill_null(False)
            done.update(table.filter(pc.invert(is_failed))["key"].to_pylist())
            failed.update(table.filter(is_failed)["key"].to_pylist())
        return done, failed - done

    def child(self, name: str) -> "ResultStore":
        """A store in the subdirectory `name` (for example the chosen hyper-parameters)."""
        return ResultStore(join_uri(self.uri, name))

    # ---- reading
    def read_table(self, columns: list[str] | None = None, keys=None, listing: Listing | None = None) -> pa.Table:
        """One row per key (see the module docstring), only `columns` when given (plus key, status and
        finished_at, which choose the row), only `keys` when given."""
        listing = listing or self.listing()
        if keys is not None:
            keys = set(keys)
            files = [p for k, p in {**listing.failed, **listing.parts}.items() if k in keys]
            files += listing.compacted
        else:
            files = [*listing.parts.values(), *listing.failed.values(), *listing.compacted]
        if not files:
            return schema().empty_table() if columns is None else schema().empty_table().select(
                [c for c in columns if c in schema().names])
        wanted = None if columns is None else list(dict.fromkeys([*columns, "key", "status", "finished_at"]))
        table = self._read_files(files, wanted)
        if keys is not None:
            table = table.filter(pc.is_in(table["key"], pa.array(sorted(keys), pa.string())))
        table = _one_row_per_key(table)
        return table if columns is None else table.select([c for c in columns if c in table.column_names])

    def read(self, columns: list[str] | None = None, keys=None):
        """Rows as a pandas DataFrame, one per key (see `read_table`)."""
        return self.read_table(columns, keys).to_pandas()

    def read_records(self):
        """Rows written with `append_record`, as a pandas DataFrame (first row per key)."""
        import pandas as pd

        files = sorted(self.listing().parts.values())
        if not files:
            return pd.DataFrame()
        return self._read_files(files, None).to_pandas().drop_duplicates("key").reset_index(drop=True)

    def _read_files(self, files: list[str], columns: list[str] | None) -> pa.Table:
        """The rows of `files` (columns a file lacks are null; with `columns`, only those are read)."""
        def read(path: str) -> pa.Table | Exception:
            try:
                parquet = pq.ParquetFile(path, filesystem=self.fs)
                names = parquet.schema_arrow.names
                return parquet.read(columns=None if columns is None else [c for c in columns if c in names])
            except (pa.ArrowException, OSError) as exc:
                return exc

        if len(files) == 1:
            tables = [read(files[0])]
        else:
            with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:  # small files: latency, not CPU
                tables = list(pool.map(read, files))
        bad = [(path, t) for path, t in zip(files, tables) if isinstance(t, Exception)]
        if bad:
            names = ", ".join(p.rsplit("/", 1)[-1] for p, _ in bad)
            warnings.warn(f"{self.uri}: {len(bad)} unreadable result file(s) left out (move them away or delete "
                          f"them): {names} ({bad[0][1]})", UnreadableResults, stacklevel=3)
        tables = [t for t in tables if not isinstance(t, Exception)]
        if not tables:
            empty = schema().empty_table()
            return empty if columns is None else empty.select([c for c in columns if c in empty.column_names])
        return pa.concat_tables(tables, promote_options="permissive")

    # ---- compaction
    def compact(self, rows_per_file: int = 20_000) -> dict:
        """Merge part and failed files into ``compact-<id>.parquet`` files of up to `rows_per_file` rows.

        Each new file is published whole (a temporary name renamed, or one object) before the files it
        merged are deleted, so a crash at any point loses nothing; a row already in a compacted file (same key
        and finish time: a compaction cut short after publishing) is not written again, only its part file
        deleted. Run one compaction at a time. Returns counts: files merged, rows written, files deleted.
        """
        listing = self.listing()
        for path in listing.temporary:  # from a write or compaction cut short: never published, never read
            self._remove(path)
        compacted = set()
        if listing.compacted:
            old = self._read_files(listing.compacted, ["key", "finished_at"])
            compacted = set(zip(old["key"].to_pylist(), old["finished_at"].to_pylist()))
        sources = sorted([*listing.parts.values(), *listing.failed.values()])
        summary = {"files": len(sources), "rows": 0, "deleted": 0}
        for start in range(0, len(sources), rows_per_file):
            chunk = sources[start:start + rows_per_file]
            table = self._read_files(chunk, None)
            seen = [(k, f) in compacted for k, f in zip(table["key"].to_pylist(), table["finished_at"].to_pylist())]
            table = table.filter(pa.array([not s for s in seen]))
            if table.num_rows:
                name = f"compact-{uuid.uuid4().hex[:16]}.parquet"
                self._publish(table, name)
                summary["rows"] += table.num_rows
            for path in chunk:
                self._remove(path)
                summary["deleted"] += 1
        return summary

    def _remove(self, path: str) -> None:
        self.fs.delete_file(path)


def _key_of(name: str, prefix: str) -> str:
    """The key in a row file's name: ``<prefix><key>.parquet``, or ``<prefix><key>-<12 hex digits>.parquet``
    (the names of older versions, whose suffix was always 12 hex digits: a key may itself end in ``-1``)."""
    stem = name[len(prefix):-len(".parquet")]
    head, _, tail = stem.rpartition("-")
    old_suffix = len(tail) == 12 and all(c in "0123456789abcdef" for c in tail)
    return head if head and old_suffix else stem


def _one_row_per_key(table: pa.Table) -> pa.Table:
    """A finished or collapsed row before a failed one; then the first finished."""
    if table.num_rows == 0:
        return table
    order = pa.table({"failed": pc.equal(table["status"], FAILED).fill_null(False),
                      "finished_at": table["finished_at"], "i": pa.array(range(table.num_rows))})
    ranked = pc.sort_indices(order, sort_keys=[("failed", "ascending"), ("finished_at", "ascending"),
                                               ("i", "ascending")])
    keys = pc.take(table["key"], ranked).to_pylist()
    seen, first = set(), []
    for index, key in zip(ranked.to_pylist(), keys):
        if key not in seen:
            seen.add(key)
            first.append(index)
    return table.take(pa.array(first, pa.int64()))


def join_uri(base: str, name: str) -> str:
    """`name` under `base`, a local path or a URI (whose query options, if any, stay at the end)."""
    if "://" in base:
        head, _, query = base.partition("?")
        return f"{head.rstrip('/')}/{name}" + (f"?{query}" if query else "")
    return str(Path(base) / name)


def s3_filesystem(uri: str) -> tuple[pafs.S3FileSystem, str]:
    """(filesystem, bucket/path) for an s3:// URI.

    Query options in the URI are pyarrow's (``?endpoint_override=host:port&scheme=http``); without them the
    ``AWS_ENDPOINT_URL`` environment variable, when set, points at an S3-compatible server (MinIO, a mock).
    Credentials come from the usual AWS sources (environment, profile, instance role); they are never stored.
    """
    import os
    from urllib.parse import urlparse

    if "?" in uri or not os.environ.get("AWS_ENDPOINT_URL"):
        return pafs.FileSystem.from_uri(uri)
    endpoint = urlparse(os.environ["AWS_ENDPOINT_URL"])
    fs = pafs.S3FileSystem(endpoint_override=endpoint.netloc, scheme=endpoint.scheme or "https",
                           region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    return fs, uri[len("s3://"):].rstrip("/")


def _ks_of(row: dict) -> tuple[int, ...]:
    return tuple(sorted({int(c.rsplit("@", 1)[1]) for c in row if c.startswith("test_") and "@" in c}))


def knockout_keys(results: str) -> set[str] | None:
    """Every knockout cell key recorded in `results` (``<results>/cells``); None when nothing was recorded."""
    import json

    records = ResultStore(results).child("cells").read_records()
    if records.empty:
        return None
    return {key for text in records["cells"] for key in json.loads(text)}
