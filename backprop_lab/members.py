"""Several runs that differ only in their seed, trained as one batched model (hydra/launcher=vectorized).

`Members` stacks the K members' parameters along a new first dimension and runs the forward pass
with `torch.func.vmap` over `functional_call`, so a linear layer becomes one batched matmul for all K.
Each member keeps its own init (built under its own seed), its own data order (the engine draws a
permutation per member) and its own dropout masks (vmap's randomness="different"). The loss is the
sum of the members' losses, so every member gets exactly its own gradient, and the optimizers we
register are elementwise (SGD, Adam, RMSprop, ...), so one optimizer over stacked tensors steps each
member as its own optimizer would.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


class Members(nn.Module):
    """K models of one architecture as one: forward maps [K, B, ...] to [K, B, classes]."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.count = len(models)
        params, buffers = stack_module_state(list(models))
        # Parameter names may not contain '.', so the stacked ones are kept in plain dicts by module path.
        self.names = list(params)
        self.stacked = nn.ParameterList(nn.Parameter(p) for p in params.values())
        for p in self.stacked:
            p.member_dim = True  # optimizers.is_decayed looks at the shape of one member
        self.buffer_names = list(buffers)
        for i, b in enumerate(buffers.values()):
            self.register_buffer(f"buffer_{i}", b)
        template = copy.deepcopy(models[0])
        self.template = [template.to("meta")]  # a list hides it from .parameters() and .to()
        self.capture: dict[str, torch.Tensor] | None = None  # set by Diagnostics.arm for one forward pass
        self._forward = vmap(self._one, in_dims=(0, 0, 0), randomness="different")
        self._forward_shared = vmap(self._one, in_dims=(0, 0, None), randomness="different")

    def params(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.stacked, strict=True))

    def buffers_by_name(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, f"buffer_{i}") for i, n in enumerate(self.buffer_names)}

    def _one(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> Any:
        out = functional_call(self.template[0], (params, buffers), (x,))
        # What forward hooks stored during this call exists only inside vmap: return it to get it out.
        return out if self.capture is None else (out, dict(self.capture))

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """x is [K, B, ...] (each member its own batch), or [B, ...] given to all with shared=True."""
        run = self._forward_shared if shared else self._forward
        if self.capture is None:
            return run(self.params(), self.buffers_by_name(), x)
        out, captured = run(self.params(), self.buffers_by_name(), x)
        self.capture.update(captured)  # one value per member
        self.capture = None
        return out

    def train(self, mode: bool = True) -> Members:
        super().train(mode)
        self.template[0].train(mode)  # dropout and batch norm read the template's mode inside vmap
        return self

    def named_members_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """(module path, stacked tensor): the names a single model's named_parameters() would give."""
        return list(zip(self.names, self.stacked, strict=True))

    def state(self) -> dict[str, torch.Tensor]:
        """The stacked state, keyed like a single model's state_dict."""
        return {**self.params(), **self.buffers_by_name()}

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's weights as a single model's state_dict: loads into an ordinary model."""
        return {name: t[k].detach().clone() for name, t in self.state().items()}

    def load_member_states(self, states: Sequence[dict[str, torch.Tensor]]) -> None:
        """Set member k to `states[k]` (ordinary state dicts, as member_state gives)."""
        with torch.no_grad():
            for name, t in self.state().items():
                t.copy_(torch.stack([s[name] for s in states]))


@torch.no_grad()
def clip_grad_norm_per_member_(params: Sequence[torch.Tensor], max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ for each member on its own (the first dimension is the member)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch.linalg.vector_norm(torch.stack([g.reshape(len(g), -1).norm(dim=1) for g in grads]), dim=0)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # torch's formula, per member
    for g in grads:
        g.mul_(coef.view(-1, *[1] * (g.ndim - 1)))


def why_not_batched(cfg: Any) -> str | None:
    """Why runs of `cfg` that differ only in their seed cannot train as one Members model, or None."""
    if cfg.pretrain.name != "none":
        return f"pretrain={cfg.pretrain.name} trains in stages, with a new head and frozen blocks"
    if cfg.scheduler.get("name") == "plateau":
        return "scheduler=plateau follows each run's own validation score"
    return why_not_elementwise(cfg)


# Shipped optimizers whose step is linear in the learning rate (the update u does not depend on it:
# w <- w - lr * u, decoupled decay included), so members may train at different rates: see lr_batchable.
LR_LINEAR = (
    "sgd",
    "momentum",
    "nesterov",
    "adam",
    "adamw",
    "rmsprop",
    "adagrad",
    "adadelta",
    "nadam",
    "radam",
    "adamax",
)
LR_PROPORTIONAL_SCHEDULES = ("constant", "step", "multistep", "onecycle", "cosine", "warmup_cosine")


def batched_keys(cfg: Any) -> list[str]:
    """The keys in which jobs of `cfg` may differ and still train as one Members model, besides the seed:
    regularizer.l1 and regularizer.l2 (each member's penalty or decay with its own coefficient), and
    optimizer.lr where lr_batchable."""
    if why_not_batched(cfg) is not None:
        return []
    return ["regularizer.l1", "regularizer.l2", *(["optimizer.lr"] if lr_batchable(cfg) else [])]


def lr_batchable(cfg: Any) -> bool:
    """May jobs of `cfg` that differ in optimizer.lr train as one Members model? Yes when the optimizer
    steps linearly in the rate and the schedule scales every member's rate by the same factor (a
    cosine's min_lr must be 0): the engine then steps with rate factor f(t) and scales each member's
    update by its own rate, which is what each member's own run computes. (Asked by batched_keys, once
    the jobs are known to batch at all.)"""
    opt, sched = cfg.optimizer, cfg.scheduler
    if opt.get("_target_") is not None or opt.get("name") not in LR_LINEAR or opt.get("lr_decay", 0):
        return False
    if sched.get("_target_") is not None or sched.get("name") not in LR_PROPORTIONAL_SCHEDULES:
        return False
    return not sched.get("min_lr", 0)


def why_not_elementwise(cfg: Any) -> str | None:
    """Options of the user's own are batched only where that is known to give each member's own
    numbers: an optimizer that declares `elementwise: true`, any activation (vmap runs it per member)."""
    from .optimizers import NOT_ELEMENTWISE

    opt = cfg.optimizer
    if opt.get("_target_") is not None and not opt.get("elementwise", False):
        return (
            f"optimizer {opt['_target_']} is not declared elementwise (its YAML may say `elementwise: true` when "
            "each element's update depends on that element alone)"
        )
    if opt.get("_target_") is None and opt.get("name") in NOT_ELEMENTWISE:
        return f"optimizer={opt.name} is not elementwise: a stacked tensor would not step as each member's own"
    if cfg.model.get("_target_") is not None:
        return f"model {cfg.model['_target_']} is the user's own: not known to stack with torch.func"
    if cfg.regularizer.get("_target_") is not None:
        return f"regularizer {cfg.regularizer['_target_']} takes the model, which is one model per run"
    return None
