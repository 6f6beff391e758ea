"""Datasets: the in-memory form, the MMRec-layout reader/writer, and the synthetic generator."""
from __future__ import annotations

from pathlib import Path

from . import remote
from .dataset import DEFAULT_VARIANT, MODALITIES, TEST, TRAIN, VALID, DataError, Dataset
from .mmrec import read_mmrec, write_mmrec
from .split import split_per_user
from .synthetic import SyntheticSpec, make_synthetic, spec_from_string


def load(source: str | Path, allow_sparse_ids: bool = False) -> Dataset:
    """`synthetic[:key=value,...]`, a dataset directory in the MMRec layout (see `read_mmrec`), or one in object
    storage (``s3://bucket/path/<name>``: downloaded once into a local cache keyed by its content, see `remote`)."""
    text = str(source)
    if text == "synthetic" or text.startswith("synthetic:"):
        return make_synthetic(spec_from_string(text))
    if remote.is_remote(text):
        return read_mmrec(remote.fetch(text), name=text.rstrip("/").rsplit("/", 1)[-1],
                          allow_sparse_ids=allow_sparse_ids)
    return read_mmrec(Path(text), allow_sparse_ids=allow_sparse_ids)


__all__ = [
    "DEFAULT_VARIANT", "MODALITIES", "TEST", "TRAIN", "VALID", "DataError", "Dataset", "SyntheticSpec",
    "load", "make_synthetic", "read_mmrec", "spec_from_string", "split_per_user", "write_mmrec",
]
