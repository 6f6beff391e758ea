"""Item encoders (text through sentence-transformers; images through ablate's ResNet-50 / ViT-B/16, the
packaged EfficientNet-Lite0, or timm) and ``extract``, which adds a dataset's feature variant.

Heavy libraries are imported only when an encoder is loaded, so ``import ablate.features`` is cheap.
"""
from __future__ import annotations

from .extract import extract, variant_name

__all__ = ["extract", "variant_name"]
