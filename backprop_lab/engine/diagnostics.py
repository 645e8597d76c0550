"""What happens inside the network, measured at logging points only (Glorot & Bengio 2010's plots).

Layer i = 0 is the input side; the last index is the output layer (head or decoder). Per layer:
  grad_norm/i     L2 norm of the gradient of all its parameters
  weight_norm/i   L2 norm of its weight
  update_ratio/i  ||w_after - w_before|| / ||w_before|| over the optimizer step
and per hidden block, from its activation's output:
  act_mean/i, act_std/i
  saturated/i     sigmoid/tanh: fraction of outputs within 1% of the bounds
  dead/i          ReLU family: fraction of units (features or channels) that are <= 0 for the whole batch
Everything stays a tensor until the engine's one sync at the logging point.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from backprop_lab.components.activations import ACTIVATIONS
from backprop_lab.vectorized.members import Members

SATURATING = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}
NO_DEAD_UNITS = {"identity", "softplus", *SATURATING}  # outputs that are never 0 or not gated


def _layers(model: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """(hidden blocks, output layer) of a Classifier or of the Reconstructor around one."""
    inner: Any = getattr(model, "classifier", model)
    last: nn.Module = model.get_submodule("decoder") if hasattr(model, "decoder") else inner.head
    return list(inner.blocks), last


def _weight_name(layer: nn.Module) -> str:
    """The name, inside `layer`, of its (first) linear or conv weight."""
    return next(
        f"{n}.weight" if n else "weight"
        for n, m in layer.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
    )


class Diagnostics:
    """For an ordinary model every value is a scalar tensor; for `members.Members` a vector, one per member."""

    def __init__(self, model: nn.Module, act_name: str, act_class: type[nn.Module] | None = None):
        self.members = isinstance(model, Members)
        net = model.template[0] if isinstance(model, Members) else model
        named = dict(model.named_members_parameters() if isinstance(model, Members) else model.named_parameters())
        path = {id(m): n for n, m in net.named_modules()}
        blocks, last = _layers(net)
        layers = [*blocks, last]
        self.params = [[named[f"{path[id(layer)]}.{n}"] for n, _ in layer.named_parameters()] for layer in layers]
        self.weights = [named[f"{path[id(layer)]}.{_weight_name(layer)}"] for layer in layers]
        self.model = model
        self.act_name = act_name
        act_cls = act_class or ACTIVATIONS[act_name]
        self.acts = [next(m for m in b.modules() if isinstance(m, act_cls)) for b in blocks]
        self._hooks: list[Any] = []
        self._before: list[torch.Tensor] = []
        self.values: dict[str, torch.Tensor] = {}

    def _norm(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(len(t), -1).norm(dim=1) if self.members else t.norm()

    def arm(self) -> None:
        """Capture activation statistics in the next forward pass."""
        self.values = {}
        if isinstance(self.model, Members):
            self.model.capture = self.values  # the hooks run inside vmap: Members hands their values out
        for i, act in enumerate(self.acts):
            self._hooks.append(act.register_forward_hook(self._activation_hook(i)))

    def _activation_hook(self, i: int):
        def hook(module: nn.Module, inputs: Any, out: torch.Tensor) -> None:
            h = out.detach().float()
            self.values[f"act_mean/{i}"] = h.mean()
            self.values[f"act_std/{i}"] = h.std()
            if self.act_name in SATURATING:
                low, high = SATURATING[self.act_name]
                margin = 0.01 * (high - low)
                self.values[f"saturated/{i}"] = ((h < low + margin) | (h > high - margin)).float().mean()
            elif self.act_name not in NO_DEAD_UNITS:
                units = h.transpose(0, 1).reshape(h.shape[1], -1)  # a unit: a feature (MLP) or a channel (CNN)
                self.values[f"dead/{i}"] = (units <= 0).all(dim=1).float().mean()

        return hook

    def after_backward(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for i, params in enumerate(self.params):
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                self.values[f"grad_norm/{i}"] = torch.linalg.vector_norm(
                    torch.stack([self._norm(g) for g in grads]), dim=0
                )
        self._before = [w.detach().clone() for w in self.weights]

    def after_step(self) -> dict[str, torch.Tensor]:
        for i, (w, before) in enumerate(zip(self.weights, self._before, strict=True)):
            w = w.detach()
            self.values[f"weight_norm/{i}"] = self._norm(w)
            self.values[f"update_ratio/{i}"] = self._norm(w - before) / self._norm(before).clamp_min(1e-12)
        return self.values
