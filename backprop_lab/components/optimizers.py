"""Optimizers and learning-rate schedules: name -> torch, as plain dicts."""

from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

try:  # torch's own check of a fused kernel's device and dtype: private, so a later torch may move it
    from torch.optim.optimizer import _device_dtype_check_for_fused
except ImportError:  # then the foreach kernels, which every torch >= 2.0 has (see _fastest)
    _device_dtype_check_for_fused = None  # type: ignore[assignment]

from backprop_lab import targets
from backprop_lab.errors import ConfigError

# Schedules that scale every member's rate by the same factor at each step (a cosine's min_lr must be
# 0), so members at different rates of a rate-linear optimizer may share one: members.lr_batchable.
LR_PROPORTIONAL_SCHEDULES = ("constant", "step", "multistep", "onecycle", "cosine", "warmup_cosine")


@dataclass(frozen=True)
class OptimInfo:
    """What the lab knows of one optimizer; every batching decision reads it (in the spirit of timm's
    OptimInfo). Every key of the `optimizer` node except NOT_ARGUMENTS goes to `factory` as it is, so
    configs/optimizer/<name>.yaml names exactly the arguments of the torch optimizer."""

    # the class, or "package.module:Class" of a package that is an optional extra (imported when built)
    factory: type[torch.optim.Optimizer] | str
    # Each element's update depends on that element alone (no factored moment, no orthogonalised
    # matrix): a stacked tensor of several members steps as each member alone, so they may share one.
    elementwise: bool
    # The update is linear in the rate (w <- w - lr * u, decoupled decay included), so members at
    # different rates may share one built at rate 1 (under LR_PROPORTIONAL_SCHEDULES).
    lr_linear: bool
    fixed: dict[str, Any] = field(default_factory=dict)  # arguments the name implies

    extra: str | None = None  # the optional extra that installs a "package:Class" factory
    # train()/eval() switch the weights between the training and the averaged point (schedule-free):
    # the engine evaluates in eval mode (engine.loop.optimizer_mode)
    has_modes: bool = False

    @property
    def cls(self) -> type[torch.optim.Optimizer]:
        """The optimizer class; an optional package not installed is a ConfigError naming its extra."""
        if not isinstance(self.factory, str):
            return self.factory
        module, _, name = self.factory.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:
            package = module.split(".")[0]
            raise ConfigError(
                "optimizer", module, f"needs the {package} package: pip install 'backprop-lab[{self.extra}]'"
            ) from None

    @property
    def own_instances(self) -> bool:
        """Must members of a batched group each step with an instance of their own?"""
        return not self.elementwise


OPTIMIZERS: dict[str, OptimInfo] = {
    "sgd": OptimInfo(torch.optim.SGD, elementwise=True, lr_linear=True),
    "momentum": OptimInfo(torch.optim.SGD, elementwise=True, lr_linear=True),
    "nesterov": OptimInfo(torch.optim.SGD, elementwise=True, lr_linear=True, fixed={"nesterov": True}),
    "adam": OptimInfo(torch.optim.Adam, elementwise=True, lr_linear=True),
    "adamw": OptimInfo(torch.optim.AdamW, elementwise=True, lr_linear=True),
    "rmsprop": OptimInfo(torch.optim.RMSprop, elementwise=True, lr_linear=True),
    "adagrad": OptimInfo(torch.optim.Adagrad, elementwise=True, lr_linear=True),  # (lr_decay > 0: not linear)
    "adadelta": OptimInfo(torch.optim.Adadelta, elementwise=True, lr_linear=True),
    "nadam": OptimInfo(torch.optim.NAdam, elementwise=True, lr_linear=True),
    "radam": OptimInfo(torch.optim.RAdam, elementwise=True, lr_linear=True),
    "adamax": OptimInfo(torch.optim.Adamax, elementwise=True, lr_linear=True),
    # factored second moments (Shazeer & Stern 2018): an element's update reads its row and column
    "adafactor": OptimInfo(torch.optim.Adafactor, elementwise=False, lr_linear=False),
    # on the hidden 2-D weights (an orthogonalised matrix), AdamW on the rest: MuonWithAdamW
    "muon": OptimInfo(torch.optim.Muon, elementwise=False, lr_linear=False),
    # self-tuning (the extra `selftuning`): schedule-free AdamW (Defazio et al. 2024, AlgoPerf's
    # self-tuning winner) needs no schedule; Prodigy (Mishchenko & Defazio 2024) estimates its own rate
    # from all the parameters at once (d), so it is not elementwise
    "schedulefree_adamw": OptimInfo(
        "schedulefree:AdamWScheduleFree", elementwise=True, lr_linear=False, extra="selftuning", has_modes=True
    ),
    "prodigy": OptimInfo("prodigyopt:Prodigy", elementwise=False, lr_linear=False, extra="selftuning"),
}
_TUPLES = ("betas", "eps")  # YAML lists that torch takes as tuples (Adafactor's eps is a pair)
# Keys of an `optimizer` node that are the lab's, not the optimizer's arguments: its name, and the
# search space --tuning budget:N draws trials from (lab/studies/tuning.py)
NOT_ARGUMENTS = ("name", "search")


def optim_info(opt_cfg: Any) -> OptimInfo | None:
    """The record of an `optimizer` node: a shipped name's, or, for an option of the user's own
    (`_target_`), one its YAML declares (`elementwise: true` lets members share one); None for a name
    no record has (validate refuses it)."""
    if targets.is_target(opt_cfg):
        return OptimInfo(torch.optim.Optimizer, elementwise=bool(opt_cfg.get("elementwise", False)), lr_linear=False)
    return OPTIMIZERS.get(str(opt_cfg.get("name")))


def is_decayed(name: str, param: nn.Parameter) -> bool:
    """Weights of linear and conv layers are decayed; biases, norm parameters and PReLU slopes are not.
    (A parameter of members.Members holds all members along its first dimension.)"""
    return param.ndim - getattr(param, "member_dim", False) >= 2


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool) -> list[dict[str, Any]]:
    """Two groups, so weight decay reaches only the weights unless `decay_all`; one group when no
    parameter is decayed (each group costs the optimizer its own pass: 9% of a small MLP's step)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (decay if decay_all or weight_decay == 0 or is_decayed(name, p) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, opt_cfg: Any, decay_all: bool) -> torch.optim.Optimizer:
    if targets.is_target(opt_cfg):
        return _target_optimizer(model, opt_cfg, decay_all)
    # plain values only: an OmegaConf list kept in the optimizer's state would make its checkpoint
    # unloadable with torch.load(weights_only=True) wherever torch keeps it as given (torch 2.9)
    values = OmegaConf.to_container(opt_cfg, resolve=True) if OmegaConf.is_config(opt_cfg) else dict(opt_cfg)
    assert isinstance(values, dict)  # an option node is a mapping
    kwargs: dict[str, Any] = {
        str(k): (tuple(v) if k in _TUPLES and isinstance(v, list) else v)
        for k, v in values.items()
        if k not in NOT_ARGUMENTS
    }
    info = OPTIMIZERS[opt_cfg["name"]]
    kwargs.update(info.fixed)
    weight_decay = float(kwargs.pop("weight_decay", 0.0))
    if opt_cfg["name"] == "muon":
        return _muon(model, kwargs, weight_decay, decay_all)
    cls = info.cls
    groups = param_groups(model, weight_decay, decay_all)
    try:
        if "fused" in kwargs or "foreach" in kwargs:  # the user chose the kernel: +optimizer.fused=false
            return cls(groups, **kwargs)
        return _fastest(cls, groups, kwargs)
    except TypeError as err:  # a key in the YAML that this torch class does not take
        raise ConfigError(
            "optimizer", opt_cfg["name"], f"torch.optim.{cls.__name__} rejected its arguments ({err})"
        ) from None


def _target_optimizer(model: nn.Module, opt_cfg: Any, decay_all: bool) -> torch.optim.Optimizer:
    """An optimizer of the user's own: a torch.optim.Optimizer subclass, or a callable
    (params, **kwargs) -> optimizer, given our param groups (param_groups: no decay on biases and norms)."""
    target = targets.resolve("optimizer", opt_cfg)
    if not callable(target):
        raise ConfigError("optimizer._target_", opt_cfg["_target_"], "is not a class or a function")
    groups = param_groups(model, float(opt_cfg.get("weight_decay") or 0.0), decay_all)
    made = targets.call("optimizer", opt_cfg, target, groups)
    if not isinstance(made, torch.optim.Optimizer):
        raise ConfigError(
            "optimizer._target_",
            opt_cfg["_target_"],
            f"made a {type(made).__name__}, not a torch.optim.Optimizer (a subclass, or a function returning one)",
        )
    return made


class MuonWithAdamW(torch.optim.Optimizer):
    """optimizer=muon: torch's Muon (momentum, then Newton-Schulz orthogonalisation) for the 2-D
    weights of the hidden layers, AdamW for everything else (biases, norms, conv filters, the output
    layer), the recipe of Jordan et al. 2024. With adjust_lr_fn=match_rms_adamw (Liu et al. 2025)
    one learning rate and one weight decay serve both. `param_groups` are the two optimizers' own
    groups, so schedulers and the engine set and read the learning rate of both."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw
        self.param_groups = [*muon.param_groups, *adamw.param_groups]
        self.defaults = dict(adamw.defaults)
        self._optimizer_step_pre_hooks: dict[int, Any] = {}
        self._optimizer_step_post_hooks: dict[int, Any] = {}

    @property
    def state(self) -> Any:  # type: ignore[override]
        return {**self.muon.state, **self.adamw.state}

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])


def _output_layer(model: nn.Module) -> nn.Module | None:
    """The layer that makes the output: a Classifier's head, an autoencoder's decoder, else the last Linear."""
    for name in ("decoder", "head"):
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    return next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)


def _muon(model: nn.Module, kwargs: dict[str, Any], weight_decay: float, decay_all: bool) -> MuonWithAdamW:
    output = _output_layer(model)
    skip = {id(p) for p in output.parameters()} if output is not None else set()
    hidden = [p for p in model.parameters() if p.ndim == 2 and id(p) not in skip]
    if not hidden:
        raise ConfigError("optimizer", "muon", "the model has no 2-D hidden weights for Muon (use adamw)")
    muon_keys = ("lr", "momentum", "nesterov", "ns_steps", "adjust_lr_fn")  # (betas and eps are AdamW's)
    try:
        muon = torch.optim.Muon(hidden, weight_decay=weight_decay, **{k: kwargs[k] for k in muon_keys if k in kwargs})
    except (TypeError, ValueError) as err:
        raise ConfigError("optimizer", "muon", f"torch.optim.Muon rejected its arguments ({err})") from None
    taken = {id(p) for p in hidden}
    rest = [
        {**g, "params": [p for p in g["params"] if id(p) not in taken]}
        for g in param_groups(model, weight_decay, decay_all)
    ]
    adamw = torch.optim.AdamW(
        [g for g in rest if g["params"]],
        lr=kwargs["lr"],
        betas=kwargs.get("betas", (0.9, 0.999)),
        eps=kwargs.get("eps", 1e-8),
        foreach=True,
    )
    return MuonWithAdamW(muon, adamw)


def _fastest(
    cls: type[torch.optim.Optimizer], groups: list[dict[str, Any]], kwargs: dict[str, Any]
) -> torch.optim.Optimizer:
    """The fused kernel where torch has one for this class and device (one kernel for all parameters,
    ~25% faster steps for a small MLP on CPU), else the foreach kernels; never the per-tensor loop."""
    parameters = inspect.signature(cls).parameters
    if "fused" in parameters and _device_dtype_check_for_fused is not None:
        try:  # torch's own check, which it would otherwise make only at the first step
            for p in (p for g in groups for p in g["params"]):
                _device_dtype_check_for_fused(p, cuda_unsupported=cls is torch.optim.Adagrad)
            return cls(groups, **{**kwargs, "fused": True})
        except (RuntimeError, ValueError):  # not on this device or dtype, or not with these options
            pass
    return cls(groups, **({**kwargs, "foreach": True} if "foreach" in parameters else kwargs))


def _warmup_cosine(warmup: int, total: int, floor: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, sched_cfg: Any, total_steps: int):
    """The schedule of `scheduler`, stepped once per training step (plateau: once per evaluation).
    A scheduler of the user's own (`_target_`) is called as target(optimizer, **its keys)."""
    if targets.is_target(sched_cfg):
        made = targets.call("scheduler", sched_cfg, targets.resolve("scheduler", sched_cfg), optimizer)
        if not hasattr(made, "step") or not hasattr(made, "state_dict"):
            raise ConfigError(
                "scheduler._target_", sched_cfg["_target_"], f"made a {type(made).__name__}, not a torch LR scheduler"
            )
        return made
    name = sched_cfg["name"]
    lr = optimizer.param_groups[0]["lr"]
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
