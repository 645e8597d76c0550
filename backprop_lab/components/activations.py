"""Activation functions and weight initialisations: name -> torch, as plain dicts."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from backprop_lab import targets
from backprop_lab.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "celu": nn.CELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "hardswish": nn.Hardswish,
    "identity": nn.Identity,
}

# Config keys that are not arguments of the activation's torch class.
_NOT_KWARGS = {"name", "init"}


class FunctionActivation(nn.Module):
    """An activation given as a function tensor -> tensor (act._target_ naming a function)."""

    def __init__(self, fn: Callable[..., torch.Tensor], **kwargs: Any):
        super().__init__()
        self.fn, self.kwargs = fn, kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, **self.kwargs)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))


def activation_class(act_cfg: Any) -> type[nn.Module]:
    """The module class make_activation builds for `act` (the diagnostics find the activations by it)."""
    if not targets.is_target(act_cfg):
        return ACTIVATIONS[act_cfg["name"]]
    target = targets.resolve("act", act_cfg)
    return target if isinstance(target, type) and issubclass(target, nn.Module) else FunctionActivation


def _target_activation(act_cfg: Any) -> nn.Module:
    """An nn.Module class (its keys are the constructor's arguments), or a function tensor -> tensor
    (its keys are passed with every call)."""
    target = targets.resolve("act", act_cfg)
    if isinstance(target, type) and issubclass(target, nn.Module):
        made = targets.call("act", act_cfg, target)
        probe = torch.linspace(-3, 3, 16).view(2, 8)
        try:  # (a module made for one width may refuse this probe: the run then says how)
            out = made(probe)
        except Exception:
            return made
        if not isinstance(out, torch.Tensor) or out.shape != probe.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(
                "act._target_", act_cfg["_target_"], f"must return a tensor of its input's shape; (2, 8) gave {shape}"
            )
        return made
    if isinstance(target, type) or not callable(target):
        raise ConfigError(
            "act._target_", act_cfg["_target_"], "is not an nn.Module class or a function tensor -> tensor"
        )
    module = FunctionActivation(target, **targets.arguments("act", act_cfg))
    probe = torch.linspace(-3, 3, 8)
    try:
        out = module(probe)
    except Exception as err:
        raise ConfigError(
            "act._target_", act_cfg["_target_"], f"failed on a tensor ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(out, torch.Tensor) or out.shape != probe.shape:
        raise ConfigError("act._target_", act_cfg["_target_"], "must return a tensor of its input's shape")
    return module


def make_activation(act_cfg: Any) -> nn.Module:
    """A fresh activation module; every key of `act` but name/init is an argument of its class."""
    if targets.is_target(act_cfg):
        return _target_activation(act_cfg)
    kwargs = {k: v for k, v in dict(act_cfg).items() if k not in _NOT_KWARGS}
    if act_cfg["name"] == "prelu":  # learnable slope: torch calls the start value `init`
        kwargs = {"init": kwargs.pop("init_slope", 0.25), **kwargs}
    return ACTIVATIONS[act_cfg["name"]](**kwargs)


Gain = Literal["leaky_relu", "tanh", "sigmoid", "selu", "linear", "relu"]
_GAINS: dict[str, Gain] = {
    "leaky_relu": "leaky_relu",
    "prelu": "leaky_relu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "selu": "selu",
    "identity": "linear",
}


def _gain_name(act_name: str) -> Gain:
    """The nonlinearity name torch.nn.init.calculate_gain understands for this activation."""
    return _GAINS.get(act_name, "relu")


def _he(w: torch.Tensor, act_cfg: Any) -> None:
    slope = act_cfg.get("negative_slope", act_cfg.get("init_slope", 0.0)) or 0.0
    leaky = _gain_name(act_cfg["name"]) == "leaky_relu"
    nonlinearity: Literal["leaky_relu", "relu"] = "leaky_relu" if leaky else "relu"
    nn.init.kaiming_normal_(w, a=slope, nonlinearity=nonlinearity)


def _xavier(w: torch.Tensor, act_cfg: Any) -> None:
    nn.init.xavier_uniform_(w)  # Glorot & Bengio 2010's "normalised" init, gain 1


def _lecun(w: torch.Tensor, act_cfg: Any) -> None:
    fan_in = w[0].numel()
    nn.init.normal_(w, 0.0, 1.0 / math.sqrt(fan_in))


def _orthogonal(w: torch.Tensor, act_cfg: Any) -> None:
    nn.init.orthogonal_(w, gain=nn.init.calculate_gain(_gain_name(act_cfg["name"])))


INITS: dict[str, Callable[[torch.Tensor, Any], None] | None] = {
    "he": _he,
    "xavier": _xavier,
    "lecun": _lecun,
    "orthogonal": _orthogonal,
    "torch": None,  # keep PyTorch's own default (Kaiming-uniform with a=sqrt(5))
}


def init_weights(model: nn.Module, init_name: str, act_cfg: Any) -> None:
    """Initialise every Linear/Conv weight with `init_name`, and zero their biases."""
    init = INITS[init_name]
    if init is None:
        return
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            init(module.weight.data, act_cfg)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
