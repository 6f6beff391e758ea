"""The results table: append-only Parquet rows, one file per finished trial, at a local path or a URI.

Each row is written to its own file (``part-<key>-<unique>.parquet``, written under a temporary name and
renamed) so a crash never loses or corrupts a finished row, and concurrent writers never collide. Reading
goes through `pyarrow.dataset`; a rerun asks `done_keys()` and skips trials already there. A file that cannot
be read is named in one `UnreadableResults` warning and left out: its trial counts as not done. When a key
appears more than once (two writers raced), `read` keeps the first row written.
"""
from __future__ import annotations

import uuid
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .metrics import DEFAULT_KS, METRICS


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
    """Some result files could not be read; they are left out of the rows and of the keys done."""


class ResultStore:
    """Append-only results at `uri`: a local directory, or any URI pyarrow understands (s3://bucket/path)."""

    def __init__(self, uri: str | Path):
        uri = str(uri)
        if uri.startswith("s3://"):
            self.fs, self.path = s3_filesystem(uri)
        elif "://" in uri:
            self.fs, self.path = pafs.FileSystem.from_uri(uri)
        else:
            self.fs, self.path = pafs.LocalFileSystem(), str(Path(uri).resolve())
        self.uri = uri

    def append(self, row: dict) -> str:
        """Write one row; returns the file's path."""
        columns = schema(_ks_of(row))
        extra = [(k, pa.array([v]).type) for k, v in row.items() if k not in columns.names]
        table = pa.Table.from_pylist([row], schema=schema(_ks_of(row), extra))
        self.fs.create_dir(self.path, recursive=True)
        name = f"part-{row['key']}-{uuid.uuid4().hex[:12]}.parquet"
        final = f"{self.path}/{name}"
        if isinstance(self.fs, pafs.LocalFileSystem):
            temporary = f"{self.path}/.{name}.tmp"
            pq.write_table(table, temporary, filesystem=self.fs)
            self.fs.move(temporary, final)
        else:  # object stores publish a whole object at once
            pq.write_table(table, final, filesystem=self.fs)
        return final

    def _files(self, prefix: str = "part-") -> list[str]:
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return []
        selector = pafs.FileSelector(self.path, recursive=False)
        return sorted(f.path for f in self.fs.get_file_info(selector)
                      if f.base_name.startswith(prefix) and f.base_name.endswith(".parquet"))

    def has(self, key: str) -> bool:
        """Whether a readable row with `key` is already there (an unreadable file does not count)."""
        return bool(self._readable(self._files(f"part-{key}-"), quiet=True))

    def _readable(self, files: list[str], quiet: bool = False) -> list[str]:
        """`files` less those Parquet cannot read, which are named in one `UnreadableResults` warning."""
        good, bad = [], []
        for path in files:
            try:
                pq.read_table(path, filesystem=self.fs)
                good.append(path)
            except (pa.ArrowException, OSError) as exc:
                bad.append((path, exc))
        if bad and not quiet:
            names = ", ".join(p.rsplit("/", 1)[-1] for p, _ in bad)
            warnings.warn(f"{self.uri}: {len(bad)} unreadable result file(s) left out, their trials count as "
                          f"not done (move them away or delete them): {names} ({bad[0][1]})", UnreadableResults,
                          stacklevel=3)
        return good

    def child(self, name: str) -> "ResultStore":
        """A store in the subdirectory `name` (for example the chosen hyper-parameters)."""
        return ResultStore(join_uri(self.uri, name))

    def append_record(self, record: dict) -> str:
        """Write one free-form row (any flat columns, with a 'key'); `read_records` gives them back."""
        table = pa.Table.from_pylist([record])
        self.fs.create_dir(self.path, recursive=True)
        final = f"{self.path}/part-{record['key']}-{uuid.uuid4().hex[:12]}.parquet"
        pq.write_table(table, final, filesystem=self.fs)
        return final

    def read_records(self):
        """Rows written with `append_record`, as a pandas DataFrame (first row per key)."""
        files = self._readable(self._files())
        if not files:
            import pandas as pd

            return pd.DataFrame()
        frames = [pq.read_table(f, filesystem=self.fs).to_pandas() for f in files]
        import pandas as pd

        return pd.concat(frames, ignore_index=True).drop_duplicates("key").reset_index(drop=True)

    def read_table(self) -> pa.Table:
        files = self._files()
        if not files:
            return schema().empty_table()
        try:
            table = self._read_files(files)
        except (pa.ArrowException, OSError):  # some file is unreadable: leave it out, and say so
            files = self._readable(files)
            if not files:
                return schema().empty_table()
            table = self._read_files(files)
        # keep the first row per key (files sort by key, then by a random suffix; order by finish time)
        frame = table.to_pandas().sort_values(["finished_at"], kind="stable").drop_duplicates("key")
        return pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)

    def _read_files(self, files: list[str]) -> pa.Table:
        fragments = pads.dataset(files, filesystem=self.fs, format="parquet").get_fragments()
        unified = pa.unify_schemas([f.physical_schema for f in fragments])  # rows may carry extra columns
        return pads.dataset(files, filesystem=self.fs, format="parquet", schema=unified).to_table()

    def read(self):
        """All rows as a pandas DataFrame, one per key."""
        return self.read_table().to_pandas()

    def done_keys(self) -> set[str]:
        return set(self.read_table().column("key").to_pylist())


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
