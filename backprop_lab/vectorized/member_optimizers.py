"""One optimizer and one schedule per member of a members.Members model.

A group of jobs whose optimizers differ (momentum, betas, weight decay, eps, another optimizer
altogether, another schedule) or whose optimizer is not elementwise (Muon, Adafactor, one of the
user's own) cannot step as one optimizer over the stacked tensors. Each member then gets the
optimizer its own run would build, over member k's model: a module whose parameters are views of
member k's slice of the stacked tensors. Before each step the stacked gradient's slices are handed to
those views, so every member steps exactly as its own run, and its optimizer's and schedule's state
dicts are its own run's (a checkpoint resumes as an ordinary run).

Neighbouring members that do share one elementwise optimizer (differing at most in a rate
members.lr_batchable allows) form a family, which steps as one optimizer over its slice of the stacked
tensors: a learning-rate search over 7 optimizers x 7 rates steps 7 optimizers, not 49 (the
optimizers study's search: BENCHMARKS.md). Where all members share one, pretrain.fit_members
keeps the single stacked optimizer.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from backprop_lab.components.optimizers import build_optimizer, build_scheduler, optim_info
from backprop_lab.vectorized.members import Members


def needs_own_optimizers(optimizers: list[Any], schedulers: list[Any]) -> bool:
    """Must these members (their `optimizer` and `scheduler` nodes) each step with an optimizer of their
    own? Yes unless all share one elementwise optimizer and one schedule other than plateau, differing at
    most in the learning rate where members.lr_batchable allows it."""
    from omegaconf import OmegaConf

    from backprop_lab.vectorized.members import lr_batchable

    def plain(node: Any, drop: tuple[str, ...] = ()) -> str:
        values = OmegaConf.to_container(node, resolve=True)
        assert isinstance(values, dict)
        return repr(sorted((k, v) for k, v in values.items() if k not in drop))

    first, schedule = optimizers[0], schedulers[0]
    info = optim_info(first)
    if info is None or info.own_instances:
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


def families(optimizers: list[Any], schedulers: list[Any]) -> list[range]:
    """The members cut into runs of neighbours that may share one optimizer (needs_own_optimizers says
    so of each run), in order; a member no neighbour may join is a run of one. A learning-rate search
    over several optimizers (Hydra's order: optimizer, then lr) gives one run per optimizer."""
    runs, start = [], 0
    for k in range(1, len(optimizers) + 1):
        if k == len(optimizers) or needs_own_optimizers(optimizers[start : k + 1], schedulers[start : k + 1]):
            runs.append(range(start, k))
            start = k
    return runs


class Family:
    """Members `ids` (neighbours) stepping as one optimizer over their slice of the stacked tensors: built
    at rate 1 when their rates differ, each member's update then scaled by its own rate (as the engine
    does for a whole group: members.lr_batchable), or at their shared rate. One member alone steps with
    the optimizer its own run builds, over member_module's views."""

    def __init__(self, members: Members, ids: range, optimizers: list[Any], decay_all: bool):
        from omegaconf import OmegaConf

        self.ids = ids
        cfg = optimizers[ids.start]
        self.rates: torch.Tensor | None = None  # members' own rates for the update's scaling; None: shared
        self.lrs = [float(optimizers[k].lr) for k in ids] if "lr" in cfg else [1.0] * len(ids)
        if len(ids) == 1:
            self.model = member_module(members, ids.start)
        else:
            self.model = _slice_module(members, ids)
            if len(set(self.lrs)) > 1:
                cfg = OmegaConf.merge(cfg, {"lr": 1.0})
                self.rates = torch.tensor(self.lrs, dtype=torch.float32, device=members.stacked[0].device)
        self.optimizer = build_optimizer(self.model, cfg, decay_all)
        self.params = list(self.model.parameters())  # views, in stacked order

    def take_grads(self, stacked: list[torch.Tensor]) -> None:
        """Hand each view its slice of the stacked gradient."""
        for view, p in zip(self.params, stacked, strict=True):
            if p.grad is None:
                view.grad = None
            else:
                view.grad = p.grad[self.ids.start] if len(self.ids) == 1 else p.grad[self.ids.start : self.ids.stop]

    def step(self) -> None:
        if self.rates is None:
            self.optimizer.step()
        else:
            step_at_rates(self.optimizer, self.params, self.rates)

    def scale(self, k: int) -> float:
        """What member k's rates are this optimizer's times: its own rate where the family steps at
        rate 1, else 1."""
        return 1.0 if self.rates is None else self.lrs[k - self.ids.start]

    def rate(self, k: int) -> float:
        """Member k's learning rate now."""
        return float(self.optimizer.param_groups[0]["lr"]) * self.scale(k)

    def member_state(self, k: int) -> dict[str, Any]:
        """Member k's optimizer state, as its own run's optimizer would hold it."""
        state = self.optimizer.state_dict()
        if len(self.ids) == 1:
            return state
        return member_optimizer_state(state, k - self.ids.start, self.scale(k))


@torch.no_grad()
def step_at_rates(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], rates: torch.Tensor) -> None:
    """Step `optimizer` (built at rate 1: it steps at the schedule's factor f(t)) over stacked `params`,
    then scale member k's update by rates[k]: what each member's own run at its rate computes, for
    optimizers whose update is linear in the rate (members.lr_batchable)."""
    before = [p.detach().clone() for p in params]
    optimizer.step()
    for p, b in zip(params, before, strict=True):
        p.sub_(b).mul_(rates.view(-1, *[1] * (p.ndim - 1))).add_(b)


def _slice_module(members: Members, ids: range) -> nn.Module:
    """A module whose parameters are the stacked tensors' slices [ids] (views: members' storage), marked
    as stacked (member_dim) so that weight decay reaches the same tensors as in each member's model."""
    module = nn.Module()
    for i, (_, stacked) in enumerate(members.named_members_parameters()):
        view = nn.Parameter(stacked.detach()[ids.start : ids.stop])
        # optimizers.is_decayed looks at the shape of one member
        view.member_dim = True  # type: ignore[attr-defined]
        module.register_parameter(f"p{i}", view)
    return module


class MemberOptimizers:
    """The members' optimizers, stepped as one: what the engine calls `optimizer`. Members form families
    (families()): each family steps as one optimizer, a member alone with its own."""

    def __init__(self, members: Members, optimizers: list[Any], schedulers: list[Any], decay_all: bool):
        self.members = members
        self.families = [Family(members, ids, optimizers, decay_all) for ids in families(optimizers, schedulers)]
        self.family_of = [f for f in self.families for _ in f.ids]  # member k -> its family

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.members.zero_grad(set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        stacked = list(self.members.stacked)
        for family in self.families:
            family.take_grads(stacked)
            family.step()

    def train(self) -> None:
        """Schedule-free families: their training point (engine.loop.optimizer_mode)."""
        self._mode("train")

    def eval(self) -> None:
        """Schedule-free families: their averaged point, the one evaluated."""
        self._mode("eval")

    def _mode(self, mode: str) -> None:
        for family in self.families:
            switch = getattr(family.optimizer, mode, None)
            if callable(switch):
                switch()

    def rates(self) -> torch.Tensor:
        """Each member's learning rate now, as a [K] tensor."""
        device = self.members.stacked[0].device
        return torch.tensor([f.rate(k) for k, f in enumerate(self.family_of)], device=device)

    def member_state(self, k: int) -> dict[str, Any]:
        return self.family_of[k].member_state(k)


RATE_KEYS = ("lr", "initial_lr", "max_lr", "min_lr", "base_lrs", "_last_lr")  # (optimizer groups, schedulers)


def member_optimizer_state(state: dict[str, Any], k: int, rate: float = 1.0) -> dict[str, Any]:
    """Member k's part of an optimizer state over stacked parameters: what an optimizer of member k
    alone would hold (the optimizers are elementwise; scalar entries such as `step` are shared). Members
    trained at rate factors have their groups' rates scaled by member k's `rate`."""
    sliced = {
        i: {key: v[k].clone() if isinstance(v, torch.Tensor) and v.ndim > 0 else v for key, v in s.items()}
        for i, s in state["state"].items()
    }
    return {"state": sliced, "param_groups": [scaled_rates(g, rate) for g in state["param_groups"]]}


def scaled_rates(state: dict[str, Any], rate: float) -> dict[str, Any]:
    """A param group's or a scheduler's state with every learning rate in it times `rate`."""
    if rate == 1.0:
        return state

    def scale(v: Any) -> Any:
        return [x * rate for x in v] if isinstance(v, list) else v * rate

    return {key: scale(v) if key in RATE_KEYS else v for key, v in state.items()}


class MemberSchedulers:
    """The families' schedules (None where a family's is constant): what the engine calls `scheduler`."""

    def __init__(self, optimizers: MemberOptimizers, schedulers: list[Any], total_steps: int):
        self.family_of = optimizers.family_of
        self.schedulers = [
            build_scheduler(f.optimizer, schedulers[f.ids.start], total_steps) for f in optimizers.families
        ]
        self.schedule_of = [s for f, s in zip(optimizers.families, self.schedulers, strict=True) for _ in f.ids]
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau  # (only a member alone has one: families())
        self.per_step = [s for s in self.schedulers if s is not None and not isinstance(s, plateau)]
        self.on_score = {
            f.ids.start: s for f, s in zip(optimizers.families, self.schedulers, strict=True) if isinstance(s, plateau)
        }

    def step(self) -> None:
        for scheduler in self.per_step:
            scheduler.step()

    def validated(self, k: int, score: float) -> None:
        """Member k's validation score: its plateau schedule, if it has one, reads it."""
        if k in self.on_score:
            self.on_score[k].step(score)

    def member_state(self, k: int) -> dict[str, Any] | None:
        scheduler = self.schedule_of[k]
        return None if scheduler is None else scaled_rates(scheduler.state_dict(), self.family_of[k].scale(k))
