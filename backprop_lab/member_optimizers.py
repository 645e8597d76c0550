"""One optimizer and one schedule per member of a members.Members model.

A group of jobs whose optimizers differ (momentum, betas, weight decay, eps, another optimizer
altogether, another schedule) or whose optimizer is not elementwise (Muon, Adafactor, one of the
user's own) cannot step as one optimizer over the stacked tensors. Each member then gets the
optimizer its own run would build, over member k's model: a module whose parameters are views of
member k's slice of the stacked tensors. Before each step the stacked gradient's slices are handed to
those views, so every member steps exactly as its own run, and its optimizer's and schedule's state
dicts are its own run's (a checkpoint resumes as an ordinary run).

This costs one optimizer step per member (torch loops over them in Python): where the members share
one elementwise optimizer and differ at most in the learning rate, pretrain.fit_members keeps the
single stacked optimizer (members.lr_batchable).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .members import Members
from .optimizers import NOT_ELEMENTWISE, build_optimizer, build_scheduler


def needs_own_optimizers(optimizers: list[Any], schedulers: list[Any]) -> bool:
    """Must these members (their `optimizer` and `scheduler` nodes) each step with an optimizer of their
    own? Yes unless all share one elementwise optimizer and one schedule other than plateau, differing at
    most in the learning rate where members.lr_batchable allows it."""
    from omegaconf import OmegaConf

    from .members import lr_batchable

    def plain(node: Any, drop: tuple[str, ...] = ()) -> str:
        values = OmegaConf.to_container(node, resolve=True)
        assert isinstance(values, dict)
        return repr(sorted((k, v) for k, v in values.items() if k not in drop))

    first, schedule = optimizers[0], schedulers[0]
    if first.get("_target_") is not None and not first.get("elementwise", False):
        return True
    if first.get("_target_") is None and first.get("name") in NOT_ELEMENTWISE:
        return True
    if schedule.get("name") == "plateau" or len({plain(s) for s in schedulers}) > 1:
        return True  # (plateau follows each member's own validation score)
    if len({plain(o, ("lr",)) for o in optimizers}) > 1:
        return True
    if len({float(o.lr) for o in optimizers}) == 1:
        return False
    return not lr_batchable(OmegaConf.create({"optimizer": first, "scheduler": schedule}))


def member_module(members: Members, k: int) -> nn.Module:
    """Member k as an ordinary model whose parameters are views of its slice of the stacked tensors
    (its buffers stay on the meta device: this model is for optimizers, which read names and shapes)."""
    model = copy.deepcopy(members.template[0])
    for name, stacked in members.named_members_parameters():
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        module._parameters[leaf] = nn.Parameter(stacked.detach()[k])  # shares the stacked storage
    return model


class MemberOptimizers:
    """The members' own optimizers, stepped as one: what the engine calls `optimizer`."""

    def __init__(self, members: Members, optimizers: list[Any], decay_all: bool):
        self.members = members
        self.models = [member_module(members, k) for k in range(members.count)]
        self.optimizers = [build_optimizer(m, o, decay_all) for m, o in zip(self.models, optimizers, strict=True)]
        self.views = [list(m.parameters()) for m in self.models]  # member k's views, in stacked order

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.members.zero_grad(set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        for i, stacked in enumerate(self.members.stacked):
            grad = stacked.grad
            for k, views in enumerate(self.views):
                views[i].grad = None if grad is None else grad[k]
        for optimizer in self.optimizers:
            optimizer.step()

    def rates(self) -> torch.Tensor:
        """Each member's learning rate now (its first param group's), as a [K] tensor."""
        device = self.members.stacked[0].device
        return torch.tensor([o.param_groups[0]["lr"] for o in self.optimizers], device=device)

    def member_state(self, k: int) -> dict[str, Any]:
        return self.optimizers[k].state_dict()


class MemberSchedulers:
    """The members' own schedules (None where a member's is constant): what the engine calls `scheduler`."""

    def __init__(self, optimizers: MemberOptimizers, schedulers: list[Any], total_steps: int):
        self.schedulers = [
            build_scheduler(o, s, total_steps) for o, s in zip(optimizers.optimizers, schedulers, strict=True)
        ]
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
        self.per_step = [s for s in self.schedulers if s is not None and not isinstance(s, plateau)]
        self.on_score = {k: s for k, s in enumerate(self.schedulers) if isinstance(s, plateau)}

    def step(self) -> None:
        for scheduler in self.per_step:
            scheduler.step()

    def validated(self, k: int, score: float) -> None:
        """Member k's validation score: its plateau schedule, if it has one, reads it."""
        if k in self.on_score:
            self.on_score[k].step(score)

    def member_state(self, k: int) -> dict[str, Any] | None:
        scheduler = self.schedulers[k]
        return scheduler.state_dict() if scheduler is not None else None
