"""Explicit regularization: L1 / L2 loss penalties and decoupled weight decay.

Dropout and batch norm are layers (models.py); this module holds what acts on the loss or the weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .optimizers import is_decayed


def active_regularizers(reg: Any) -> list[str]:
    """The regularizers that are switched on by value, whatever option list selected them."""
    names = []
    if reg.l1 > 0 and reg.l2 > 0:
        names.append("elastic_net")
    elif reg.l1 > 0:
        names.append("l1")
    elif reg.l2 > 0:
        names.append("l2" if reg.l2_mode == "penalty" else "l2_decoupled")
    if reg.dropout > 0:
        names.append("dropout")
    if reg.batchnorm:
        names.append("batchnorm")
    return names or ["none"]


class Regularization:
    """The L1 / L2 terms of `regularizer` for one model: `penalty()` for the loss, `decay_()` after a step."""

    def __init__(self, model: nn.Module, reg: Any):
        self.model = model
        self.l1 = float(reg.l1)
        self.l2_penalty = float(reg.l2) if reg.l2_mode == "penalty" else 0.0
        self.l2_decay = float(reg.l2) if reg.l2_mode == "decoupled" else 0.0
        self.decay_all = bool(reg.decay_bias_and_norm)

    def _params(self) -> list[torch.Tensor]:
        # Re-read each time: fine-tuning replaces the head and unfreezes blocks as it goes.
        return [p for n, p in self.model.named_parameters() if p.requires_grad and (self.decay_all or is_decayed(n, p))]

    @property
    def adds_to_loss(self) -> bool:
        return self.l1 > 0 or self.l2_penalty > 0

    def penalty(self) -> torch.Tensor:
        """l1 * sum|w| + 0.5 * l2 * sum w^2 over the regularised parameters."""
        params = self._params()
        total = params[0].new_zeros(())
        if self.l1 > 0:
            total = total + self.l1 * sum(p.abs().sum() for p in params)
        if self.l2_penalty > 0:
            total = total + 0.5 * self.l2_penalty * sum(p.pow(2).sum() for p in params)
        return total

    @torch.no_grad()
    def decay_(self, lr: float) -> None:
        """Decoupled weight decay (Loshchilov & Hutter 2019): w <- w - lr * l2 * w, for any optimizer."""
        if self.l2_decay > 0:
            torch._foreach_mul_(self._params(), 1.0 - lr * self.l2_decay)
