"""ResNet-50 and ViT-B/16 as plain torch modules whose parameter names equal torchvision's.

They exist so that image features need neither torchvision nor a download: a user loads a torchvision
state dict (``torch.save(model.state_dict(), path)``, or the ``.pth`` files torchvision caches) into them with
``load_weights``. Both return pooled features instead of class scores: ResNet-50 the global-average-pooled
output of its last stage (2048-d), ViT-B/16 the final-LayerNorm'd [CLS] token (768-d).

Architectures (He et al. 2016, "v1.5" with the stride on the 3x3 convolution; Dosovitskiy et al. 2021):

    ResNet-50: conv7x7/2 - maxpool/2 - [3, 4, 6, 3] bottlenecks (1x1 -> 3x3 -> 1x1, x4 expansion) - avgpool
    ViT-B/16:  16x16 patches -> 768-d tokens, [CLS] + learned positions (197 tokens at 224x224),
               12 pre-norm blocks (12-head attention, MLP 3072 with GELU), LayerNorm, token 0
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """(batch, 3, H, W) -> (batch, 2048)."""

    dim = 2048
    head_prefixes = ("fc.",)

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for index, (planes, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
            layers = []
            for b in range(blocks):
                layers.append(Bottleneck(inplanes, planes, stride if b == 0 else 1))
                inplanes = planes * Bottleneck.expansion
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)  # kept so torchvision checkpoints load as they are; unused
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class _MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout))


class _EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _MLP(dim, hidden, dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class _Encoder(nn.Module):
    def __init__(self, tokens: int, layers: int, dim: int, heads: int, hidden: int):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, tokens, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", _EncoderBlock(dim, heads, hidden)) for i in range(layers)))
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class ViTB16(nn.Module):
    """(batch, 3, 224, 224) -> (batch, 768): the [CLS] token after the final LayerNorm."""

    dim = 768
    head_prefixes = ("heads.",)

    def __init__(self, image_size: int = 224, patch: int = 16, layers: int = 12, heads: int = 12,
                 hidden: int = 3072, num_classes: int = 1000):
        super().__init__()
        self.image_size, self.patch = image_size, patch
        self.conv_proj = nn.Conv2d(3, self.dim, patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, self.dim))
        self.encoder = _Encoder((image_size // patch) ** 2 + 1, layers, self.dim, heads, hidden)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(self.dim, num_classes)))  # unused; for loading

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"ViT-B/16 takes {self.image_size}x{self.image_size} images; got {h}x{w}")
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)  # (n, 196, 768)
        tokens = torch.cat([self.class_token.expand(n, -1, -1), tokens], dim=1)
        return self.encoder(tokens)[:, 0]


BACKBONES = {"resnet50": ResNet50, "vit_b_16": ViTB16}


def load_weights(model: nn.Module, state: dict, source: str) -> None:
    """Load a torchvision-style state dict, ignoring the classification head; any other mismatch is an error."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    heads = tuple(getattr(model, "head_prefixes", ()))
    own = model.state_dict()
    body = {k: v for k, v in state.items() if not k.startswith(heads)}
    missing = [k for k in own if not k.startswith(heads) and k not in body]
    unexpected = [k for k in body if k not in own]
    wrong = [f"{k} {tuple(body[k].shape)} (expected {tuple(own[k].shape)})"
             for k in body if k in own and tuple(body[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source}: not a {type(model).__name__} checkpoint in torchvision's naming: "
            f"{len(missing)} missing key(s) {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
            f"wrong shapes {wrong[:3]}"
        )
    model.load_state_dict(body, strict=False)
