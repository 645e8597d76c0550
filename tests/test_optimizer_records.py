"""One record per optimizer (components/optimizers.OptimInfo), and what each record claims checked
against torch itself: every shipped option has one, an `elementwise` optimizer steps a stack of members
as each member alone, and an `lr_linear` one moves the weights in proportion to its rate."""

from __future__ import annotations

import copy
from importlib import resources

import pytest
import torch
from omegaconf import OmegaConf

from backprop_lab.components.optimizers import _TUPLES, NOT_ARGUMENTS, OPTIMIZERS, optim_info
from backprop_lab.groups import group_options


def make(name: str, params: list[torch.Tensor], lr: float | None = None) -> torch.optim.Optimizer:
    """The shipped option's torch optimizer over `params`, with its YAML's arguments (at `lr` if given)."""
    yaml = OmegaConf.load(resources.files("backprop_lab.configs") / "optimizer" / f"{name}.yaml")
    args = {
        k: (tuple(v) if k in _TUPLES and isinstance(v, list) else v) for k, v in yaml.items() if k not in NOT_ARGUMENTS
    }
    args.update(OPTIMIZERS[name].fixed, **({"lr": lr} if lr is not None else {}))
    made = OPTIMIZERS[name].cls(params, **args)
    if OPTIMIZERS[name].has_modes:  # (schedule-free: steps only in train mode, as the engine puts it)
        made.train()  # type: ignore[attr-defined]
    return made


def walk(name: str, start: torch.Tensor, grads: list[torch.Tensor], lr: float | None = None) -> torch.Tensor:
    """The weights after one step per gradient (gradients given, so every rate sees the same ones)."""
    w = start.clone().requires_grad_(True)
    opt = make(name, [w], lr)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    return w.detach()


def test_every_shipped_optimizer_has_a_record():
    assert sorted(OPTIMIZERS) == group_options()["optimizer"]
    assert optim_info({"name": "nope"}) is None
    own = optim_info(OmegaConf.create({"_target_": "mylab.SignSGD", "elementwise": True}))
    assert own is not None and own.elementwise and not own.lr_linear  # (a user's option: its YAML says)


ELEMENTWISE = [name for name, info in OPTIMIZERS.items() if info.elementwise]
LINEAR = [name for name, info in OPTIMIZERS.items() if info.lr_linear]


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_an_elementwise_optimizer_steps_a_stack_as_each_member_alone(name):
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(2, 6, 5, generator=gen)
    grads = [torch.randn(2, 6, 5, generator=gen) for _ in range(4)]
    stacked = walk(name, start, grads)
    for k in range(2):
        alone = walk(name, start[k], [g[k] for g in grads])
        torch.testing.assert_close(stacked[k], alone, rtol=1e-6, atol=1e-7)


def tensors(state: dict) -> list[torch.Tensor]:
    return [v for per_param in state["state"].values() for v in per_param.values() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("name", LINEAR)
def test_a_rate_linear_optimizer_steps_in_proportion_to_its_rate(name):
    """What a rate grid of batched members relies on (the group steps at rate 1 and scales each member's
    update by its rate): the optimizer's state never depends on the rate, and from one state a step at
    rate r moves the weights r times as far as a step at rate 1."""
    gen = torch.Generator().manual_seed(1)
    start = torch.randn(6, 5, generator=gen)
    grads = [torch.randn(6, 5, generator=gen) for _ in range(4)]
    runs = {}
    for lr in (0.003, 0.1):
        w = start.clone().requires_grad_(True)
        opt = make(name, [w], lr)
        for g in grads[:3]:
            w.grad = g.clone()
            opt.step()
        runs[lr] = (w, opt)
    for a, b in zip(tensors(runs[0.003][1].state_dict()), tensors(runs[0.1][1].state_dict()), strict=True):
        torch.testing.assert_close(a, b)  # the state: from the gradients alone
    w, opt = runs[0.003]
    twin = w.detach().clone().requires_grad_(True)
    at_one = make(name, [twin], 1.0)
    state = copy.deepcopy(opt.state_dict())  # (load_state_dict may keep the very tensors it is given)
    at_one.load_state_dict({**state, "param_groups": [{**state["param_groups"][0], "lr": 1.0}]})
    before = w.detach().clone()
    for weights, optimizer in ((w, opt), (twin, at_one)):
        weights.grad = grads[3].clone()
        optimizer.step()
    torch.testing.assert_close(w.detach() - before, 0.003 * (twin.detach() - before), rtol=1e-4, atol=3e-7)
