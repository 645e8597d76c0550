"""Explicit regularization: L1 / L2 loss penalties and decoupled weight decay.

Dropout and batch norm are layers (models.py); this module holds what acts on the loss or the weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import targets
from .errors import ConfigError
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
    if targets.is_target(reg):
        names.append(str(reg["_target_"]).rpartition(".")[2])
    return names or ["none"]


class Regularization:
    """The L1 / L2 terms of `regularizer` for one model: `penalty()` for the loss, `decay_()` after a step."""

    def __init__(self, model: nn.Module, reg: Any):
        self.model = model
        self.l1 = float(reg.l1)
        self.l2_penalty = float(reg.l2) if reg.l2_mode == "penalty" else 0.0
        self.l2_decay = float(reg.l2) if reg.l2_mode == "decoupled" else 0.0
        self.decay_all = bool(reg.decay_bias_and_norm)
        # a penalty of the user's own: regularizer._target_ (model, **its keys) -> scalar, times its weight
        self.custom = targets.resolve("regularizer", reg) if targets.is_target(reg) else None
        self.custom_weight = float(reg.get("weight", 1.0))
        self.custom_args = targets.arguments("regularizer", reg) if self.custom is not None else {}
        self.custom_name = str(reg.get("_target_"))
        if self.custom is not None and not callable(self.custom):
            raise ConfigError("regularizer._target_", self.custom_name, "is not a function (model) -> scalar tensor")

    def _params(self) -> list[torch.Tensor]:
        # Re-read each time: fine-tuning replaces the head and unfreezes blocks as it goes.
        return [p for n, p in self.model.named_parameters() if p.requires_grad and (self.decay_all or is_decayed(n, p))]

    @property
    def adds_to_loss(self) -> bool:
        return self.l1 > 0 or self.l2_penalty > 0 or self.custom is not None

    def penalty(self) -> torch.Tensor:
        """l1 * sum|w| + 0.5 * l2 * sum w^2 over the regularised parameters."""
        params = self._params()
        total = params[0].new_zeros(())
        if self.l1 > 0:
            total = total + self.l1 * sum(p.abs().sum() for p in params)
        if self.l2_penalty > 0:
            total = total + 0.5 * self.l2_penalty * sum(p.pow(2).sum() for p in params)
        if self.custom is not None:
            total = total + self.custom_weight * self._custom_penalty()
        return total

    def _custom_penalty(self) -> torch.Tensor:
        try:
            value = self.custom(self.model, **self.custom_args)  # type: ignore[misc]
        except TypeError as err:
            raise ConfigError("regularizer._target_", self.custom_name, f"rejected its arguments ({err})") from None
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            raise ConfigError(
                "regularizer._target_",
                self.custom_name,
                f"returned {type(value).__name__} {tuple(getattr(value, 'shape', ()))}: it must return a scalar tensor",
            )
        return value

    @torch.no_grad()
    def decay_(self, lr: float | torch.Tensor) -> None:
        """Decoupled weight decay (Loshchilov & Hutter 2019): w <- w - lr * l2 * w, for any optimizer.
        `lr` may be one rate per member (a [K] tensor, for members.Members trained at several rates)."""
        if self.l2_decay <= 0:
            return
        if isinstance(lr, torch.Tensor):
            for p in self._params():
                p.mul_((1.0 - lr * self.l2_decay).view(-1, *[1] * (p.ndim - 1)))
        else:
            torch._foreach_mul_(self._params(), 1.0 - lr * self.l2_decay)
