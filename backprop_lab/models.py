"""Models: a body of blocks (layer -> [batch norm] -> activation -> [dropout]) and a linear head.

Every model is a `Classifier`, so pretraining can swap the head, freeze blocks and read features
the same way whatever the architecture.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from .activations import init_weights, make_activation
from .errors import ConfigError


class Classifier(nn.Module):
    """`blocks` turn an input of `input_shape` into features; `head` maps them to class logits."""

    def __init__(self, blocks: Sequence[nn.Module], input_view: tuple[int, ...], feature_dim: int,
                 num_classes: int, residual_from: int | None = None):
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

    def train(self, mode: bool = True) -> "Classifier":
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


def _conv_net(conv: type[nn.Module], norm: type[nn.Module], in_view: tuple[int, ...], cfg: Any,
              act_cfg: Any, reg: Any, num_classes: int) -> Classifier:
    blocks, c_in = [], in_view[0]
    for c_out, k, s in zip(cfg.channels, cfg.kernel_sizes, cfg.strides):
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
        raise ConfigError("model", "cnn1d", f"cnn1d needs sequences (shape [L]); this data has shape {list(input_shape)}: use model=cnn2d or model=mlp")
    return _conv_net(nn.Conv1d, nn.BatchNorm1d, (1, *input_shape), cfg, act_cfg, reg, num_classes)


def build_cnn2d(cfg: Any, act_cfg: Any, reg: Any, input_shape: tuple[int, ...], num_classes: int) -> Classifier:
    if len(input_shape) != 2:
        raise ConfigError("model", "cnn2d", f"cnn2d needs images (shape [H, W]); this data has shape {list(input_shape)}: use model=cnn1d or model=mlp")
    return _conv_net(nn.Conv2d, nn.BatchNorm2d, (1, *input_shape), cfg, act_cfg, reg, num_classes)


MODELS = {"mlp": build_mlp, "cnn1d": build_cnn1d, "cnn2d": build_cnn2d}


def build_model(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> Classifier:
    """The model of `cfg.model`, with `cfg.act` inside and the regularizer's dropout / batch norm."""
    model = MODELS[cfg.model.name](cfg.model, cfg.act, cfg.regularizer, tuple(input_shape), num_classes)
    init_weights(model, cfg.model.init or cfg.act.init, cfg.act)
    return model


class Reconstructor(nn.Module):
    """The autoencoder of pretrain=autoencoder: the classifier's body and a linear decoder."""

    def __init__(self, classifier: Classifier, input_numel: int):
        super().__init__()
        self.classifier = classifier
        self.decoder = nn.Linear(classifier.feature_dim, input_numel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.classifier.features(x))
