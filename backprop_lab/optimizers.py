"""Optimizers and learning-rate schedules: name -> torch, as plain dicts."""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import _device_dtype_check_for_fused

from .errors import ConfigError

# Every key of the `optimizer` node except `name` is passed to the class as it is, so
# configs/optimizer/<name>.yaml names exactly the arguments of the torch optimizer.
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "momentum": torch.optim.SGD,
    "nesterov": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "adamax": torch.optim.Adamax,
}
_FIXED_KWARGS = {"nesterov": {"nesterov": True}}


def is_decayed(name: str, param: nn.Parameter) -> bool:
    """Weights of linear and conv layers are decayed; biases, norm parameters and PReLU slopes are not.
    (A parameter of members.Members holds all members along its first dimension.)"""
    return param.ndim - getattr(param, "member_dim", False) >= 2


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool) -> list[dict[str, Any]]:
    """Two groups, so weight decay reaches only the weights unless `decay_all`."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (decay if decay_all or is_decayed(name, p) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, opt_cfg: Any, decay_all: bool) -> torch.optim.Optimizer:
    kwargs: dict[str, Any] = {k: (tuple(v) if k == "betas" else v) for k, v in dict(opt_cfg).items() if k != "name"}
    kwargs.update(_FIXED_KWARGS.get(opt_cfg["name"], {}))
    weight_decay = float(kwargs.pop("weight_decay", 0.0))
    cls = OPTIMIZERS[opt_cfg["name"]]
    groups = param_groups(model, weight_decay, decay_all)
    try:
        if "fused" in kwargs or "foreach" in kwargs:  # the user chose the kernel: +optimizer.fused=false
            return cls(groups, **kwargs)
        return _fastest(cls, groups, kwargs)
    except TypeError as err:  # a key in the YAML that this torch class does not take
        raise ConfigError(
            "optimizer", opt_cfg["name"], f"torch.optim.{cls.__name__} rejected its arguments ({err})"
        ) from None


def _fastest(
    cls: type[torch.optim.Optimizer], groups: list[dict[str, Any]], kwargs: dict[str, Any]
) -> torch.optim.Optimizer:
    """The fused kernel where torch has one for this class and device (one kernel for all parameters,
    ~25% faster steps for a small MLP on CPU), else the foreach kernels; never the per-tensor loop."""
    if "fused" in inspect.signature(cls).parameters:
        try:  # torch's own check, which it would otherwise make only at the first step
            for p in (p for g in groups for p in g["params"]):
                _device_dtype_check_for_fused(p, cuda_unsupported=cls is torch.optim.Adagrad)
            return cls(groups, **{**kwargs, "fused": True})
        except (RuntimeError, ValueError):  # not on this device or dtype, or not with these options
            pass
    return cls(groups, **{**kwargs, "foreach": True})


def _warmup_cosine(warmup: int, total: int, floor: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, sched_cfg: Any, total_steps: int, lr: float):
    """The schedule of `scheduler`, stepped once per training step (plateau: once per evaluation)."""
    name = sched_cfg["name"]
    S = torch.optim.lr_scheduler
    if name == "constant":
        return None
    if name == "step":
        return S.StepLR(optimizer, step_size=sched_cfg.step_size, gamma=sched_cfg.gamma)
    if name == "multistep":
        return S.MultiStepLR(optimizer, milestones=list(sched_cfg.milestones), gamma=sched_cfg.gamma)
    if name == "cosine":
        return S.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=sched_cfg.min_lr)
    if name == "warmup_cosine":
        return S.LambdaLR(optimizer, _warmup_cosine(sched_cfg.warmup_steps, total_steps, sched_cfg.min_lr / lr))
    if name == "onecycle":
        return S.OneCycleLR(
            optimizer,
            max_lr=lr,
            total_steps=total_steps,
            pct_start=sched_cfg.pct_start,
            div_factor=sched_cfg.div_factor,
            final_div_factor=sched_cfg.final_div_factor,
        )
    if name == "plateau":
        return S.ReduceLROnPlateau(
            optimizer, mode="max", factor=sched_cfg.factor, patience=sched_cfg.patience, min_lr=sched_cfg.min_lr
        )
    raise KeyError(name)


SCHEDULERS = ("constant", "step", "multistep", "cosine", "warmup_cosine", "onecycle", "plateau")
