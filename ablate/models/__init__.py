"""The model registry: a new model is one file plus one line in `MODELS`."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ..graphs import InteractionGraph
from ..options import OptionError, like
from .base import Recommender
from .bm3 import BM3
from .bpr import BPR
from .damrs import DAMRS
from .dragon import DRAGON
from .dualgnn import DualGNN
from .freedom import FREEDOM
from .grcn import GRCN
from .lattice import LATTICE
from .lgmrec import LGMRec
from .lightgcn import LightGCN
from .mgcn import MGCN
from .mmgcn import MMGCN
from .pgl import PGL
from .slmrec import SLMRec
from .smore import SMORE
from .vbpr import VBPR

MODELS: dict[str, type[Recommender]] = {  # ID-only references, then the study's 14 in order of publication
    "BPR": BPR,
    "LightGCN": LightGCN,
    "VBPR": VBPR,
    "MMGCN": MMGCN,
    "GRCN": GRCN,
    "DualGNN": DualGNN,
    "LATTICE": LATTICE,
    "SLMRec": SLMRec,
    "BM3": BM3,
    "FREEDOM": FREEDOM,
    "MGCN": MGCN,
    "DRAGON": DRAGON,
    "LGMRec": LGMRec,
    "DA-MRS": DAMRS,
    "SMORE": SMORE,
    "PGL": PGL,
}


def get(name: str) -> type[Recommender]:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(MODELS)}") from None


def check_hparams(name: str, values: dict) -> dict:
    """`values` checked against model `name`'s hyper-parameters: each a known name, of the type of its default
    (and of its search grid's values); returned normalised (an integer given for a float becomes a float)."""
    cls = get(name)
    if not isinstance(values, dict):
        raise OptionError("hparams", f"a mapping of {name}'s hyper-parameters {sorted(cls.defaults)}", values)
    out = {}
    for key, value in values.items():
        if key not in cls.defaults:
            raise OptionError(str(key), f"a hyper-parameter of {name}, one of {sorted(cls.defaults)}", key)
        out[key] = like(key, value, [cls.defaults[key], *cls.search_space.get(key, [])])
    return out


def build(name: str, graph: InteractionGraph, features: dict[str, np.ndarray], hparams: dict | None = None) -> Recommender:
    """Instantiate model `name` on `graph`'s device with the features it reads (numpy arrays).

    On the CPU a float32 table reaches the model as a view of the given array, not a copy, so that a table in
    shared memory (Ray's object store, read-only) stays shared by the trials that read it: no model writes a
    feature table in place, and one that fine-tunes a table gets its own copy from `register_feature`. Another
    dtype is converted (a copy); on a GPU each table is copied to the device.
    """
    cls = get(name)
    given = {m: feature_table(x, graph.device) for m, x in features.items() if m in cls.modalities}
    if cls.modalities and not given:
        raise ValueError(f"{name} reads modalities {cls.modalities}; the dataset has {sorted(features)}")
    return cls(graph, given, **(hparams or {})).to(graph.device)


def feature_table(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """`array` as a float32 tensor on `device`: on the CPU a view of it when it is already C-contiguous float32."""
    values = np.ascontiguousarray(array, dtype=np.float32)
    with warnings.catch_warnings():
        # torch warns that a read-only array could be written through the tensor; no model writes a table
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        return torch.as_tensor(values, device=device)


__all__ = ["MODELS", "Recommender", "build", "check_hparams", "get"]
