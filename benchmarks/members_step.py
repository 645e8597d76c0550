"""One training step of K stacked MLP members: vmap over functional_call against members.StackedMLP
(the batched matmuls the vectorized launcher uses for MLPs), side by side, fused Adam included (until
2026-11-29 midday this script stepped torch's per-tensor Adam, ~2.7 ms a step slower for 5 x 512).

    python benchmarks/members_step.py [--repeats 3] [--steps 100]
    python benchmarks/members_step.py --balance [--rounds 8]

Prints, for each (members, width), the fastest of `repeats` means over `steps` steps, per path.
--balance times the batched-matmul step with members.member_matmul (members past the last full round
of threads as gemms over all threads) against plain bmm / baddbmm, in interleaved rounds (medians).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from omegaconf import OmegaConf
from torch import nn

import backprop_lab.vectorized.members as members_module
from backprop_lab.components.models import build_mlp
from backprop_lab.vectorized.members import Members

SHAPES = [(5, 100), (8, 100), (49, 100), (5, 512), (2, 512)]  # (members, width): the studies' groups


def step_time(members: Members, stacked: bool, steps: int, repeats: int) -> float:
    fast = members._mlp
    members._mlp = fast if stacked else None
    count = members.count
    x, y = torch.randn(count, 100, 40), torch.randint(0, 10, (count, 100))
    optimizer = torch.optim.Adam(members.parameters(), lr=1e-3, fused=True)  # (the engine's: optimizers._fastest)
    best = float("inf")
    for _ in range(repeats + 1):  # (the first round warms up)
        start = time.perf_counter()
        for _ in range(steps):
            loss = nn.functional.cross_entropy(members(x).reshape(-1, 10), y.reshape(-1), reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        best = min(best, (time.perf_counter() - start) / steps)
    members._mlp = fast
    return best


def plain_bmm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return torch.bmm(a, b) if bias is None else torch.baddbmm(bias, a, b)


def balance(rounds: int) -> None:
    """member_matmul against plain bmm in the stacked step, interleaved so both see the same machine."""
    balanced = members_module.member_matmul
    for count, width in [(5, 512), (3, 512), (5, 100)]:
        members = mlp_members(count, width)
        times: dict[str, list[float]] = {"bmm": [], "balanced": []}
        for _ in range(rounds):
            for name, matmul in (("bmm", plain_bmm), ("balanced", balanced)):
                members_module.member_matmul = matmul  # (MemberLinear looks it up at each call)
                times[name].append(step_time(members, True, 100 if width == 512 else 400, 1))
        members_module.member_matmul = balanced
        bmm, ours = (statistics.median(times[k]) for k in ("bmm", "balanced"))
        print(f"{count} x {width}: bmm {bmm * 1e3:.2f} ms, balanced {ours * 1e3:.2f} ms: x{ours / bmm:.2f}")


def mlp_members(count: int, width: int) -> Members:
    act, reg = OmegaConf.create({"name": "relu"}), OmegaConf.create({"batchnorm": False, "dropout": 0.0})
    cfg = OmegaConf.create({"depth": 2, "width": width, "residual": False})
    members = Members([build_mlp(cfg, act, reg, (40,), 10) for _ in range(count)])
    assert members._mlp is not None
    return members


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--balance", action="store_true", help="member_matmul against plain bmm")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    if args.balance:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.rounds} rounds")
        balance(args.rounds)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch 100, 40-W-W-10 MLP, ReLU")
    for count, width in SHAPES:
        members = mlp_members(count, width)
        vmap = step_time(members, False, args.steps, args.repeats)
        stacked = step_time(members, True, args.steps, args.repeats)
        print(
            f"{count:3d} x width {width:4d}: vmap {vmap * 1e3:6.2f} ms   batched matmuls {stacked * 1e3:6.2f} ms"
            f"   x{stacked / vmap:.2f}"
        )


if __name__ == "__main__":
    main()
