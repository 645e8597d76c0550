"""Explicit regularization: L1 / L2 loss penalties and decoupled weight decay.

Dropout and batch norm are layers (models.py); this module holds what acts on the loss or the weights.
"""

from __future__ import annotations

import operator
from functools import reduce
from typing import Any

import torch
from torch import nn

from backprop_lab import targets
from backprop_lab.components.optimizers import is_decayed
from backprop_lab.errors import ConfigError


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
    """The L1 / L2 terms of `regularizer` for one model: `penalty()` their value, `add_penalty_gradients_()`
    their gradient after backward, `decay_()` before a step; a penalty of the user's own joins the loss."""

    def __init__(self, model: nn.Module, reg: Any, member_regs: list[Any] | None = None):
        """`member_regs`: each member's `regularizer` node, for members.Members whose l1 / l2 differ
        (the coefficients then are [K] tensors, each member's own)."""
        self.model = model
        self.l1: float | torch.Tensor = float(reg.l1)
        self.l2_penalty: float | torch.Tensor = float(reg.l2) if reg.l2_mode == "penalty" else 0.0
        self.l2_decay: float | torch.Tensor = float(reg.l2) if reg.l2_mode == "decoupled" else 0.0
        if member_regs is not None:
            device = next(model.parameters()).device
            l1s, l2s = [float(r.l1) for r in member_regs], [float(r.l2) for r in member_regs]
            if len(set(l1s)) > 1:
                self.l1 = torch.tensor(l1s, device=device)
            if len(set(l2s)) > 1 and reg.l2_mode == "penalty":
                self.l2_penalty = torch.tensor(l2s, device=device)
            elif len(set(l2s)) > 1:
                self.l2_decay = torch.tensor(l2s, device=device)
        self.decay_all = bool(reg.decay_bias_and_norm)
        # a penalty of the user's own: regularizer._target_ (model, **its keys) -> scalar, times its weight
        self.custom = targets.resolve("regularizer", reg) if targets.is_target(reg) else None
        self.custom_weight = float(reg.get("weight", 1.0))
        self.custom_args = targets.arguments("regularizer", reg) if self.custom is not None else {}
        self.custom_name = str(reg.get("_target_"))
        if self.custom is not None and not callable(self.custom):
            raise ConfigError("regularizer._target_", self.custom_name, "is not a function (model) -> scalar tensor")
        # what the loop asks every step, decided once (a [K] coefficient would otherwise sync each time)
        self._l1_on, self._l2_on = _on(self.l1), _on(self.l2_penalty)
        self._decays = _on(self.l2_decay)

    def _params(self) -> list[torch.Tensor]:
        # Re-read each time: fine-tuning replaces the head and unfreezes blocks as it goes.
        return [p for n, p in self.model.named_parameters() if p.requires_grad and (self.decay_all or is_decayed(n, p))]

    @property
    def adds_to_loss(self) -> bool:
        """A penalty of the user's own, which goes through autograd (custom_term)."""
        return self.custom is not None

    @property
    def adds_to_gradients(self) -> bool:
        """L1 or L2 penalties, whose gradients add_penalty_gradients_ adds."""
        return self._l1_on or self._l2_on

    @property
    def decays(self) -> bool:
        return self._decays

    def penalty(self) -> torch.Tensor:
        """l1 * sum|w| + 0.5 * l2 * sum w^2 over the regularised parameters (per-member coefficients:
        each member's sum times its own)."""
        params = self._params()
        total = params[0].new_zeros(())
        if isinstance(self.l1, torch.Tensor) or self.l1 > 0:
            total = total + _weighted(self.l1, [p.abs() for p in params])
        if isinstance(self.l2_penalty, torch.Tensor) or self.l2_penalty > 0:
            total = total + 0.5 * _weighted(self.l2_penalty, [p.pow(2) for p in params])
        if self.custom is not None:
            total = total + self.custom_term()
        return total

    def custom_term(self) -> torch.Tensor:
        """The user's penalty times regularizer.weight, for the loss."""
        return self.custom_weight * self._custom_penalty()

    @torch.no_grad()
    def add_penalty_gradients_(self) -> None:
        """Add l1 * sign(w) + l2 * w to each regularised parameter's gradient: what backward of the L1 / L2
        terms of penalty() adds, in one pass: a small fraction of what autograd takes for the same
        terms (BENCHMARKS.md)."""
        assert self._l1_on or self._l2_on, "called only when a penalty is on (adds_to_gradients)"
        for p in self._params():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if self._l1_on:
                _add_times_(p.grad, self.l1, torch.sign(p))
            if self._l2_on:
                _add_times_(p.grad, self.l2_penalty, p)

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
        if not self.decays:
            return
        factor = 1.0 - lr * self.l2_decay
        if isinstance(factor, torch.Tensor):
            for p in self._params():
                p.mul_(factor.view(-1, *[1] * (p.ndim - 1)))
        elif _foreach_mul_ is not None:
            _foreach_mul_(self._params(), factor)
        else:
            for p in self._params():
                p.mul_(factor)


# torch's multi-tensor kernel, what torch.optim's foreach paths call: private, so a later torch may drop it
_foreach_mul_ = getattr(torch, "_foreach_mul_", None)


def _on(coefficient: float | torch.Tensor) -> bool:
    """Is a coefficient (or any member's) positive?"""
    return bool((coefficient > 0).any()) if isinstance(coefficient, torch.Tensor) else coefficient > 0


def _add_times_(total: torch.Tensor, coefficient: float | torch.Tensor, t: torch.Tensor) -> None:
    """total += coefficient * t in one pass, without a temporary (a [K] coefficient: each member's own)."""
    if isinstance(coefficient, torch.Tensor):
        total.addcmul_(coefficient.view(-1, *[1] * (t.ndim - 1)), t)
    else:
        total.add_(t, alpha=coefficient)


def _weighted(coefficient: float | torch.Tensor, terms: list[torch.Tensor]) -> torch.Tensor:
    """coefficient * the sum of all terms; a [K] coefficient weighs each member's own sum."""
    if isinstance(coefficient, torch.Tensor):
        return (coefficient * reduce(operator.add, (t.flatten(1).sum(1) for t in terms))).sum()
    return coefficient * reduce(operator.add, (t.sum() for t in terms))
