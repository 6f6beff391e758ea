"""Datasets in object storage: ``s3://bucket/path/<name>`` (a directory in the MMRec layout) is downloaded once
into a local cache keyed by its content, then read like any local dataset directory.

The key is a hash of each object's name, size and ETag (S3's content tag), so a changed file gives a new cache
entry and an unchanged dataset is never downloaded again. An entry is written under a temporary name and
renamed when complete, so an interrupted download is never read. The cache lives in ``$ABLATE_DATA_CACHE``, else
``~/.cache/ablate/datasets``. The endpoint of an S3-compatible server comes from ``AWS_ENDPOINT_URL`` when set;
credentials come from the usual AWS sources (environment, profile, instance role) and are never stored.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from .dataset import DataError


def is_remote(source: str) -> bool:
    return str(source).startswith("s3://")


def cache_root() -> Path:
    return Path(os.environ.get("ABLATE_DATA_CACHE") or Path.home() / ".cache" / "ablate" / "datasets")


def fetch(uri: str, cache: Path | None = None) -> Path:
    """The local directory holding the dataset at `uri`, downloaded first when its content is not cached."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    prefix = prefix.strip("/")
    if not bucket or not prefix:
        raise DataError(f"{uri}: expected s3://BUCKET/PATH/NAME, a dataset directory in the MMRec layout")
    client = _client()
    objects = _listing(client, bucket, prefix + "/", uri)
    if not any(name.endswith(".inter") for name, _, _ in objects):
        names = ", ".join(name for name, _, _ in objects[:10]) or "nothing"
        raise DataError(f"{uri}: no <name>.inter file there (found {names}); expected a dataset directory in the "
                        f"MMRec layout")
    content = hashlib.sha256(repr(sorted(objects)).encode()).hexdigest()[:16]
    root = cache or cache_root()
    target = root / f"{prefix.rsplit('/', 1)[-1]}-{content}"
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        for name, _, _ in objects:
            client.download_file(bucket, f"{prefix}/{name}", str(partial / name))
        try:
            partial.rename(target)
        except OSError:  # another process finished the same download first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _client():
    try:
        import boto3
    except ImportError:
        raise DataError("s3:// datasets need boto3 (pip install 'boto3>=1.34')") from None
    return boto3.client("s3")


def _listing(client, bucket: str, prefix: str, uri: str) -> list[tuple[str, int, str]]:
    """(file name, size, ETag) of each object directly under `prefix` (sub-folders are not part of a dataset)."""
    out = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            for item in page.get("Contents", []):
                name = item["Key"][len(prefix):]
                if name:
                    out.append((name, int(item["Size"]), item["ETag"].strip('"')))
    except client.exceptions.NoSuchBucket:
        raise DataError(f"{uri}: no bucket {bucket!r}") from None
    return out
