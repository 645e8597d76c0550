"""One training step of K stacked MLP members: vmap over functional_call against members.StackedMLP
(the batched matmuls the vectorized launcher uses for MLPs), side by side, Adam included.

    python benchmarks/members_step.py [--repeats 3] [--steps 100]

Prints, for each (members, width), the fastest of `repeats` means over `steps` steps, per path.
"""

from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf
from torch import nn

from backprop_lab.members import Members
from backprop_lab.models import build_mlp

SHAPES = [(5, 100), (8, 100), (49, 100), (5, 512), (2, 512)]  # (members, width): the studies' groups


def step_time(members: Members, stacked: bool, steps: int, repeats: int) -> float:
    fast = members._mlp
    members._mlp = fast if stacked else None
    count = members.count
    x, y = torch.randn(count, 100, 40), torch.randint(0, 10, (count, 100))
    optimizer = torch.optim.Adam(members.parameters(), lr=1e-3)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch 100, 40-W-W-10 MLP, ReLU")
    act, reg = OmegaConf.create({"name": "relu"}), OmegaConf.create({"batchnorm": False, "dropout": 0.0})
    for count, width in SHAPES:
        cfg = OmegaConf.create({"depth": 2, "width": width, "residual": False})
        members = Members([build_mlp(cfg, act, reg, (40,), 10) for _ in range(count)])
        assert members._mlp is not None
        vmap = step_time(members, False, args.steps, args.repeats)
        stacked = step_time(members, True, args.steps, args.repeats)
        print(
            f"{count:3d} x width {width:4d}: vmap {vmap * 1e3:6.2f} ms   batched matmuls {stacked * 1e3:6.2f} ms"
            f"   x{stacked / vmap:.2f}"
        )


if __name__ == "__main__":
    main()
