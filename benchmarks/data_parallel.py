"""Data parallel under torchrun against one process, on the same global batch.

    python benchmarks/data_parallel.py [--repeats 3] [--steps 3000] [--nproc 2] [--models mlp cnn1d]

Each repeat runs, interleaved, as separate processes:
  one       backprop-lab train model=MODEL trainer.max_steps=STEPS        (torch's default threads)
  torchrun  torchrun --standalone --nproc-per-node=NPROC -m backprop_lab train ... (the same run)
It prints the median whole-process seconds, the median training steps/s each summary.json reports,
the ratio torchrun/one, and the largest relative difference between the two runs' final metrics
and which metric it was (data parallelism must not change the numbers; only the order of float
sums differs, which thousands of Adam steps can amplify).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def command(launcher: str, model: str, steps: int, nproc: int, run_dir: Path) -> list[str]:
    train = [
        "train",
        f"model={model}",
        f"trainer.max_steps={steps}",
        "trainer.progress=off",
        f"hydra.run.dir={run_dir}",
    ]
    if launcher == "one":
        return [sys.executable, "-m", "backprop_lab", *train]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "backprop_lab",
        *train,
    ]


def timed(cmd: list[str], run_dir: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return seconds, json.loads((run_dir / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn1d"], choices=["mlp", "cnn1d"])
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads in one process, torch "
        f"{torch.__version__}, python {platform.python_version()}; {args.repeats} repeats, {args.steps} steps, "
        f"torchrun x{args.nproc}, global batch 100"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            wall: dict[str, list[float]] = {"one": [], "torchrun": []}
            rate: dict[str, list[float]] = {"one": [], "torchrun": []}
            worst, worst_key = 0.0, ""
            for r in range(args.repeats):
                summaries = {}
                for launcher in wall:
                    run_dir = Path(tmp) / f"{model}-{launcher}-{r}"
                    seconds, summary = timed(command(launcher, model, args.steps, args.nproc, run_dir), run_dir)
                    wall[launcher].append(seconds)
                    rate[launcher].append(summary["steps"] / summary["stages"][-1]["seconds"])
                    summaries[launcher] = summary["metrics"]
                for key, value in summaries["one"].items():
                    if key.startswith("gap/"):  # train - val accuracy: near 0, so relative differences mean little
                        continue
                    difference = abs(summaries["torchrun"][key] - value) / max(abs(value), 1e-12)
                    if difference > worst:
                        worst, worst_key = difference, key
            med = {k: statistics.median(v) for k, v in wall.items()}
            sps = {k: statistics.median(v) for k, v in rate.items()}
            for launcher in wall:
                ratio = (
                    ""
                    if launcher == "one"
                    else f"   torchrun/one: whole process x{med['torchrun'] / med['one']:.2f}, "
                    f"training time x{sps['one'] / sps['torchrun']:.2f}; "
                    f"final metrics differ by <= {worst:.1e} (relative, {worst_key})"
                )
                print(
                    f"{model:<6} {launcher:<9} whole process {med[launcher]:6.2f} s   "
                    f"training {sps[launcher]:7.0f} steps/s{ratio}"
                )


if __name__ == "__main__":
    main()
