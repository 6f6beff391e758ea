"""The only changes MMRec's code needs to run on a CPU-only machine with this project's environment.

MMRec (github.com/enoche/MMRec) is run from its own source tree, unmodified; `install()` is called in the
process before MMRec's modules are imported and changes nothing of any model's arithmetic:

- `Tensor.cuda()` returns the tensor itself when no GPU is present (MMRec's LATTICE moves its frozen kNN
  graphs with `.cuda()` instead of to its configured device; everything else in MMRec follows
  `config['device']`, which MMRec itself sets to the CPU when CUDA is unavailable).
- `numpy.float` restored as the alias of `float` it was before numpy 1.24 removed it (MMRec's NDCG uses it as a
  dtype; the alias is the builtin, so the arithmetic is what it was).
- `scipy.sparse.dok_matrix._update`, the unchecked bulk insertion scipy 1.13 dropped when the matrix stopped
  being a dict (MMRec's LightGCN, FREEDOM, BM3... build their adjacency with it): the same `dict.update` on
  the matrix's entries.
- Stand-ins for `lmdb` and `torchvision.transforms.functional` when they are not installed: MMRec's
  `utils/dataset.py` and `utils/data_utils.py` import them at module level, but use them only to read raw
  images (`use_raw_features: True`), which a comparison on pre-extracted features never does; any use of
  the stand-ins raises. (torchvision is not installed here on purpose: it would pull another torch.)
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import numpy
import torch


def _unavailable(name: str):
    def call(*args, **kwargs):
        raise RuntimeError(f"{name} is a stand-in (benchmarks/mmrec_cpu_shim.py): raw-image input is not supported here")
    return call


def _stand_in(name: str, attributes: tuple[str, ...] = ()) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # so that find_spec() answers for it
    for attribute in attributes:
        setattr(module, attribute, _unavailable(f"{name}.{attribute}"))
    return module


def install() -> list[str]:
    """Apply the shims that this machine needs; returns their names (printed by the comparison)."""
    applied = []
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
        applied.append("Tensor.cuda() -> itself (no GPU)")
    if not hasattr(numpy, "float"):
        numpy.float = float
        applied.append("numpy.float = float (removed alias)")
    from scipy.sparse import dok_matrix

    if not hasattr(dok_matrix, "_update"):
        dok_matrix._update = lambda self, entries: self._dict.update(entries)
        applied.append("dok_matrix._update (removed in scipy 1.13)")
    if importlib.util.find_spec("lmdb") is None:
        sys.modules["lmdb"] = _stand_in("lmdb", ("open",))
        applied.append("lmdb stand-in (raw images only)")
    if importlib.util.find_spec("torchvision") is None:
        functional = _stand_in("torchvision.transforms.functional", ("pad", "resize"))
        transforms = _stand_in("torchvision.transforms")
        transforms.functional = functional
        torchvision = _stand_in("torchvision")
        torchvision.transforms = transforms
        sys.modules.update({"torchvision": torchvision, "torchvision.transforms": transforms,
                            "torchvision.transforms.functional": functional})
        applied.append("torchvision.transforms.functional stand-in (raw images only)")
    return applied
