"""Datasets: the in-memory form, the MMRec-layout reader/writer, and the synthetic generator."""
from __future__ import annotations

from pathlib import Path

from .dataset import DEFAULT_VARIANT, MODALITIES, TEST, TRAIN, VALID, DataError, Dataset
from .mmrec import read_mmrec, write_mmrec
from .split import split_per_user
from .synthetic import SyntheticSpec, make_synthetic, spec_from_string


def load(source: str | Path, allow_sparse_ids: bool = False) -> Dataset:
    """`synthetic[:key=value,...]` or a dataset directory in the MMRec layout (see `read_mmrec`)."""
    text = str(source)
    if text == "synthetic" or text.startswith("synthetic:"):
        return make_synthetic(spec_from_string(text))
    return read_mmrec(Path(text), allow_sparse_ids=allow_sparse_ids)


__all__ = [
    "DEFAULT_VARIANT", "MODALITIES", "TEST", "TRAIN", "VALID", "DataError", "Dataset", "SyntheticSpec",
    "load", "make_synthetic", "read_mmrec", "spec_from_string", "split_per_user", "write_mmrec",
]
