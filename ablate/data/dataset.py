"""The in-memory dataset every trial reads: interactions with split labels, and item features."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

TRAIN, VALID, TEST = 0, 1, 2
MODALITIES = ("text", "image")
DEFAULT_VARIANT = "default"


class DataError(ValueError):
    """A dataset a user brought is malformed; the message names the file, the row or field, and what was expected."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Interactions and item features, as plain numpy arrays (cheap to share through Ray's object store).

    users, items: int32 (n_interactions,), 0-based ids.
    split: int8 (n_interactions,), 0 train / 1 valid / 2 test.
    features: modality -> variant name -> float32 (n_items, dim); row i belongs to item i.
    """

    name: str
    users: np.ndarray
    items: np.ndarray
    split: np.ndarray
    n_users: int
    n_items: int
    features: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    default_variants: dict[str, str] = field(default_factory=dict)

    @property
    def n_interactions(self) -> int:
        return int(self.users.shape[0])

    def pairs(self, split: int) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) of one split."""
        mask = self.split == split
        return self.users[mask], self.items[mask]

    def variants(self, modality: str) -> list[str]:
        return sorted(self.features.get(modality, {}))

    def select_features(self, encoders: dict[str, str] | None = None) -> dict[str, np.ndarray]:
        """One feature matrix per modality: the variant `encoders` names, else the modality's default."""
        encoders = dict(encoders or {})
        unknown = set(encoders) - set(self.features)
        if unknown:
            raise KeyError(f"dataset {self.name!r} has no modality {sorted(unknown)}; it has {sorted(self.features)}")
        chosen = {}
        for modality, variants in self.features.items():
            name = encoders.get(modality, self.default_variants.get(modality, DEFAULT_VARIANT))
            if name not in variants:
                raise KeyError(
                    f"dataset {self.name!r}: modality {modality!r} has no encoder variant {name!r}; "
                    f"it has {sorted(variants)}"
                )
            chosen[modality] = variants[name]
        return chosen

    def content_hash(self, encoders: dict[str, str] | None = None, modalities=None) -> str:
        """A digest of the data a trial reads: the interactions (ids, splits, sizes) and, for each modality of
        `modalities` (default: all), the feature variant `encoders` selects. Equal data, wherever it was
        loaded from, gives the same digest; any changed id, label or feature value gives another."""
        chosen = self.select_features(encoders)
        digest = hashlib.blake2b(digest_size=12)
        digest.update(f"{self.n_users},{self.n_items}".encode())
        for array in (self.users, self.items, self.split):
            digest.update(_array_digest(array, np.int64))
        for modality in sorted(chosen if modalities is None else set(modalities) & set(chosen)):
            digest.update(modality.encode() + _array_digest(chosen[modality], np.float32))
        return digest.hexdigest()

    def summary(self) -> dict:
        counts = np.bincount(self.split, minlength=3)
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "train": int(counts[TRAIN]),
            "valid": int(counts[VALID]),
            "test": int(counts[TEST]),
            "density": self.n_interactions / max(1, self.n_users * self.n_items),
            "features": {
                m: {v: list(a.shape) for v, a in sorted(vs.items())} for m, vs in sorted(self.features.items())
            },
        }


def _array_digest(array: np.ndarray, dtype) -> bytes:
    """Digest of an array's values and shape in a fixed dtype and layout (int32 and int64 ids hash alike)."""
    values = np.ascontiguousarray(array, dtype=dtype)
    return hashlib.blake2b(memoryview(values).cast("B"), digest_size=16).digest() + str(values.shape).encode()
