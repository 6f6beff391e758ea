"""Pieces shared by the item-item graph models (LATTICE, MGCN, SMORE, DA-MRS, PGL), as in MMRec."""
from __future__ import annotations

from torch import Tensor

from .base import Recommender, bpr_loss, info_nce


def half_squared_norm(*embeddings: Tensor) -> Tensor:
    """MMRec's in-model regulariser of these models: (1/2) sum of squared entries, over the batch size.

    MMRec divides by the configured batch size (2048); here by the batch's own size, which is the same
    except on an epoch's last, shorter batch.
    """
    return sum(e.pow(2).sum() for e in embeddings) / (2 * embeddings[0].shape[0])


def require_both(model: str, features: dict[str, Tensor]) -> None:
    missing = {"text", "image"} - set(features)
    if missing:
        raise ValueError(f"{model} fuses text and image and needs both; missing {sorted(missing)}")


class ContentSideContrast(Recommender):
    """Scoring and loss shared by MGCN and SMORE, which differ only in how they build the side embeddings.

    `forward_all()` returns (E + s, s, E) stacked over users then items: E the content (ID, LightGCN) and s
    the side (modality) embeddings. Scores are dot products of E + s; the loss is BPR + reg_weight * half
    squared norms + cl_loss * (InfoNCE(s, E) over the batch's positive items + over its users).
    """

    temperature = 0.2

    def forward_all(self) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def final_embeddings(self):
        out, _, _ = self.forward_all()
        return out[: self.n_users], out[self.n_users :]

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        out, side, content = self.forward_all()
        u, p, n = out[users], out[self.n_users + pos], out[self.n_users + neg]
        loss = bpr_loss(u, p, n) + self.hparams["reg_weight"] * half_squared_norm(u, p, n)
        t = self.temperature
        cl = (info_nce(side[self.n_users + pos], content[self.n_users + pos], t)
              + info_nce(side[users], content[users], t))
        return loss + self.hparams["cl_loss"] * cl
