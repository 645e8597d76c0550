"""An 8-seed sweep four ways, timed side by side (whole processes, interleaved per repeat).

    python benchmarks/sweep_speed.py [--repeats 3] [--steps 6000] [--seeds 8] [--model mlp]
    python benchmarks/sweep_speed.py --lr-grid 0.001,0.003,0.01,0.03 --seeds 2 --steps 3000   (issue 12)
    python benchmarks/sweep_speed.py --grid optimizer=momentum --grid optimizer.momentum=0.5,0.8,0.9,0.95 --seeds 2

  plain x8     benchmarks/plain_loop.py run once per seed, one process after another
  basic        backprop-lab train -m 'seed=range(8)' ...                            (Hydra's basic launcher)
  joblib       backprop-lab train -m hydra/launcher=joblib 'seed=range(8)' ...      (parallel processes)
  vectorized   backprop-lab train -m hydra/launcher=vectorized 'seed=range(8)' ... (one batched model)

Targets (issue 4): vectorized <= 0.40 x plain x8; joblib <= 0.65 x basic. With --lr-grid, the sweep is
the learning rates x the seeds, basic against vectorized only (one group); target (issue 12): <= 0.35.
--grid OVERRIDE (repeatable) sweeps any other values the same way, e.g. momenta, whose members each
step with an optimizer of their own (backprop_lab/member_optimizers.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from engine_speed import HERE, engine_command, timed


def sweep_command(
    model: str, steps: int, seeds: int, sweep_dir: Path, launcher: str | None, grid: list[str] | None = None
) -> list[str]:
    grid = grid or []
    swept = tuple(g.split("=", 1)[0] + "=" for g in grid)
    base = engine_command(model, steps, sweep_dir)
    base = [a for a in base if not a.startswith("hydra.run.dir=") and not (swept and a.startswith(swept))]
    extra = [f"hydra/launcher={launcher}"] if launcher else []
    extra += grid
    return [*base[:4], "-m", *extra, f"seed=range({seeds})", *base[4:], f"hydra.sweep.dir={sweep_dir}"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn1d"])
    parser.add_argument("--lr-grid", help="comma-separated learning rates: time that grid x the seeds")
    parser.add_argument("--grid", action="append", default=[], help="an override to sweep besides the seeds")
    args = parser.parse_args()
    grid = [*args.grid, *([f"optimizer.lr={args.lr_grid}"] if args.lr_grid else [])]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, python "
        f"{platform.python_version()}; {args.model}, {args.seeds} seeds x {args.steps} steps, {args.repeats} repeats"
    )
    ways = ["basic", "vectorized"] if grid else ["plain x8", "basic", "joblib", "vectorized"]
    seconds: dict[str, list[float]] = {w: [] for w in ways}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for way in ways:
                if way == "plain x8":
                    total = sum(
                        timed(
                            [
                                sys.executable,
                                str(HERE / "plain_loop.py"),
                                args.model,
                                "--steps",
                                str(args.steps),
                                "--seed",
                                str(s),
                            ]
                        )[0]
                        for s in range(args.seeds)
                    )
                else:
                    launcher = None if way == "basic" else way
                    total = timed(
                        sweep_command(args.model, args.steps, args.seeds, Path(tmp) / f"{way}-{r}", launcher, grid)
                    )[0]
                seconds[way].append(total)
                print(f"  repeat {r + 1}: {way:<10} {total:7.2f} s", flush=True)
    med = {w: statistics.median(v) for w, v in seconds.items()}
    for way in ways:
        print(f"{way:<10} median {med[way]:7.2f} s")
    if grid:
        target = "   (target <= 0.35)" if args.lr_grid and not args.grid else ""
        print(f"vectorized / basic:    x{med['vectorized'] / med['basic']:.2f}{target}")
        return
    print(f"vectorized / plain x8: x{med['vectorized'] / med['plain x8']:.2f}   (target <= 0.40)")
    print(f"joblib / basic:        x{med['joblib'] / med['basic']:.2f}   (target <= 0.65)")
    print(f"vectorized / basic:    x{med['vectorized'] / med['basic']:.2f}")


if __name__ == "__main__":
    main()
