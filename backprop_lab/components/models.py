"""Models: a body of blocks (layer -> [batch norm] -> activation -> [dropout]) and a linear head.

Every model is a `Classifier`, so pretraining can swap the head, freeze blocks and read features
the same way whatever the architecture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backprop_lab import targets
from backprop_lab.components.activations import init_weights, make_activation
from backprop_lab.errors import ConfigError


class Classifier(nn.Module):
    """`blocks` turn an input of `input_shape` into features; `head` maps them to class logits."""

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        input_view: tuple[int, ...],
        feature_dim: int,
        num_classes: int,
        residual_from: int | None = None,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.input_view = input_view  # per-example shape the first block expects
        self.feature_dim = feature_dim
        self.residual_from = residual_from  # blocks from this index on add their input back
        self.head = nn.Linear(feature_dim, num_classes)
        self.frozen: set[int] = set()  # blocks that neither train nor update batch-norm statistics

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], *self.input_view)
        for i, block in enumerate(self.blocks):
            out = block(h)
            h = h + out if self.residual_from is not None and i >= self.residual_from else out
        return h.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        for i in self.frozen:  # a frozen block is a fixed feature extractor: no dropout, fixed BN stats
            self.blocks[i].eval()
        return self

    def set_frozen(self, indices: set[int]) -> None:
        self.frozen = set(indices)
        for i, block in enumerate(self.blocks):
            block.requires_grad_(i not in self.frozen)
        self.train(self.training)

    def new_head(self, num_classes: int) -> None:
        """Replace the head (transfer to a task with other classes)."""
        device = self.head.weight.device
        self.head = nn.Linear(self.feature_dim, num_classes).to(device)


def _block(layer: nn.Module, norm: nn.Module | None, act_cfg: Any, dropout: float) -> nn.Sequential:
    parts = [layer]
    if norm is not None:
        parts.append(norm)
    parts.append(make_activation(act_cfg))
    if dropout > 0:
        parts.append(nn.Dropout(dropout))
    return nn.Sequential(*parts)


def build_mlp(cfg: Any, act_cfg: Any, reg: Any, input_shape: tuple[int, ...], num_classes: int) -> Classifier:
    n_in = math.prod(input_shape)
    blocks, width_in = [], n_in
    for _ in range(cfg.depth):
        norm = nn.BatchNorm1d(cfg.width) if reg.batchnorm else None
        blocks.append(_block(nn.Linear(width_in, cfg.width), norm, act_cfg, reg.dropout))
        width_in = cfg.width
    residual_from = 1 if cfg.residual else None  # block 0 changes the width, so it has no skip
    return Classifier(blocks, (n_in,), cfg.width, num_classes, residual_from)


def _conv_net(
    conv: type[nn.Module],
    norm: type[nn.Module],
    in_view: tuple[int, ...],
    cfg: Any,
    act_cfg: Any,
    reg: Any,
    num_classes: int,
) -> Classifier:
    blocks, c_in = [], in_view[0]
    for c_out, k, s in zip(cfg.channels, cfg.kernel_sizes, cfg.strides, strict=True):
        layer = conv(c_in, c_out, kernel_size=k, stride=s, padding=cfg.padding)
        blocks.append(_block(layer, norm(c_out) if reg.batchnorm else None, act_cfg, reg.dropout))
        c_in = c_out
    probe = Classifier(blocks, in_view, 1, 1)
    with torch.no_grad():  # the flattened feature size follows from the shapes; measure it once
        feature_dim = probe.eval().features(torch.zeros(1, *in_view)).shape[1]
    if feature_dim == 0:
        raise ConfigError("model.strides", list(cfg.strides), f"the input of shape {in_view[1:]} shrinks to nothing")
    return Classifier(blocks, in_view, feature_dim, num_classes)


def build_cnn1d(cfg: Any, act_cfg: Any, reg: Any, input_shape: tuple[int, ...], num_classes: int) -> Classifier:
    if len(input_shape) != 1:
        raise ConfigError(
            "model",
            "cnn1d",
            f"cnn1d needs sequences (shape [L]); this data has shape {list(input_shape)}: use model=cnn2d or model=mlp",
        )
    return _conv_net(nn.Conv1d, nn.BatchNorm1d, (1, *input_shape), cfg, act_cfg, reg, num_classes)


def _image_view(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) for a model of images: data of shape [C, H, W], or [H, W] (one channel)."""
    if len(input_shape) == 2:
        return (1, input_shape[0], input_shape[1])
    if len(input_shape) != 3:
        raise ConfigError(
            "model",
            name,
            f"{name} needs images (shape [C, H, W] or [H, W]); this data has shape "
            f"{list(input_shape)}: use model=mlp (or model=cnn1d for sequences)",
        )
    return (input_shape[0], input_shape[1], input_shape[2])


def build_cnn2d(cfg: Any, act_cfg: Any, reg: Any, input_shape: tuple[int, ...], num_classes: int) -> Classifier:
    return _conv_net(nn.Conv2d, nn.BatchNorm2d, _image_view("cnn2d", input_shape), cfg, act_cfg, reg, num_classes)


class BasicBlock(nn.Module):
    """He et al. 2016's CIFAR block: conv3x3 -> [BN] -> act -> conv3x3 -> [BN], plus the shortcut,
    then act. The shortcut is the identity; where the block halves the size and doubles the width it
    subsamples and pads the new channels with zeros (the paper's option A: no parameters)."""

    def __init__(self, c_in: int, c_out: int, stride: int, act_cfg: Any, batchnorm: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batchnorm)
        self.norm1 = nn.BatchNorm2d(c_out) if batchnorm else None
        self.act1 = make_activation(act_cfg)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=not batchnorm)
        self.norm2 = nn.BatchNorm2d(c_out) if batchnorm else None
        self.act2 = make_activation(act_cfg)
        self.stride, self.extra = stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.act1(out if self.norm1 is None else self.norm1(out))
        out = self.conv2(out)
        out = out if self.norm2 is None else self.norm2(out)
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.extra:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return self.act2(out + shortcut)


def build_resnet(cfg: Any, act_cfg: Any, reg: Any, input_shape: tuple[int, ...], num_classes: int) -> Classifier:
    """The CIFAR ResNet (He et al. 2016, section 4.2): a 3x3 conv, three stages of
    `blocks_per_stage` basic blocks at widths w, 2w, 4w (the last two start with stride 2), global
    average pooling, [dropout], the head: 6n + 2 layers (n = 3: ResNet-20). Blocks, for freezing and
    the per-layer diagnostics: the stem, then one per stage."""
    view = _image_view("resnet", input_shape)
    w, n, bn = cfg.width, cfg.blocks_per_stage, reg.batchnorm
    stem = [
        nn.Conv2d(view[0], w, 3, padding=1, bias=not bn),
        *([nn.BatchNorm2d(w)] if bn else []),
        make_activation(act_cfg),
    ]
    stages: list[nn.Sequential] = []
    c_in = w
    for stage, width in enumerate((w, 2 * w, 4 * w)):
        layers: list[nn.Module] = []
        for i in range(n):
            layers.append(BasicBlock(c_in, width, 2 if stage > 0 and i == 0 else 1, act_cfg, bn))
            c_in = width
        stages.append(nn.Sequential(*layers))
    stages[-1].append(nn.AdaptiveAvgPool2d(1))
    if reg.dropout > 0:
        stages[-1].append(nn.Dropout(reg.dropout))  # dropout before the head
    return Classifier([nn.Sequential(*stem), *stages], view, 4 * w, num_classes)


MODELS = {"mlp": build_mlp, "cnn1d": build_cnn1d, "cnn2d": build_cnn2d, "resnet": build_resnet}


def build_model(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The model of `cfg.model`, with `cfg.act` inside and the regularizer's dropout / batch norm."""
    if targets.is_target(cfg.model):
        return _target_model(cfg, tuple(input_shape), num_classes)
    model = MODELS[cfg.model.name](cfg.model, cfg.act, cfg.regularizer, tuple(input_shape), num_classes)
    init_weights(model, cfg.model.init or cfg.act.init, cfg.act)
    return model


def _target_model(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A model of the user's own: target(input_shape=, num_classes=, act=, **its keys), where `act()`
    makes a fresh activation module of `cfg.act`. It keeps its own initialisation unless its YAML sets
    `init`. A Classifier (blocks and a head) can be pretrained, frozen and diagnosed; see has_blocks."""
    target = targets.resolve("model", cfg.model)
    if not callable(target):
        raise ConfigError("model._target_", cfg.model["_target_"], "is not a class or a function")
    model = targets.call(
        "model",
        cfg.model,
        target,
        input_shape=input_shape,
        num_classes=num_classes,
        act=lambda: make_activation(cfg.act),
    )
    if not isinstance(model, nn.Module):
        raise ConfigError("model._target_", cfg.model["_target_"], f"made a {type(model).__name__}, not an nn.Module")
    if cfg.model.get("init") is not None:
        init_weights(model, cfg.model.init, cfg.act)
    return model


def has_blocks(model: nn.Module) -> bool:
    """Does the model have the shipped models' shape: `blocks` (a list of modules) and a linear `head`?"""
    return isinstance(getattr(model, "blocks", None), (nn.ModuleList, nn.Sequential)) and isinstance(
        getattr(model, "head", None), nn.Linear
    )


class Reconstructor(nn.Module):
    """The autoencoder of pretrain=autoencoder: the classifier's body and a linear decoder."""

    def __init__(self, classifier: Classifier, input_numel: int):
        super().__init__()
        self.classifier = classifier
        self.decoder = nn.Linear(classifier.feature_dim, input_numel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.classifier.features(x))
