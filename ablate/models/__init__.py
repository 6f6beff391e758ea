"""The model registry: a new model is one file plus one line in `MODELS`."""
from __future__ import annotations

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
    """Instantiate model `name` on `graph`'s device with the features it reads (numpy arrays, copied)."""
    cls = get(name)
    given = {
        m: torch.tensor(np.asarray(x), dtype=torch.float32, device=graph.device)
        for m, x in features.items()
        if m in cls.modalities
    }
    if cls.modalities and not given:
        raise ValueError(f"{name} reads modalities {cls.modalities}; the dataset has {sorted(features)}")
    return cls(graph, given, **(hparams or {})).to(graph.device)


__all__ = ["MODELS", "Recommender", "build", "check_hparams", "get"]
