"""The engine against the loop a user writes by hand (and Lightning's Trainer, when it is installed).

    python benchmarks/engine_speed.py [--repeats 5] [--steps 6000] [--models mlp cnn1d]

Each repeat runs, one after the other (interleaved, so drift in the machine's speed hits all alike),
as separate processes:
  plain      benchmarks/plain_loop.py MODEL                      (the hand-written loop)
  engine     backprop-lab train model=MODEL ... (MNIST-1D recipe: Adam lr 1e-2, batch 100, constant lr)
             with the default logging, validation and diagnostics on, and weights saved
  lightning  benchmarks/lightning_loop.py MODEL                  (only if `lightning` imports)
It prints the median whole-process seconds, the median training steps/s each reports, and the
ratios engine/plain (target <= 1.00) and lightning/plain.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def engine_command(model: str, steps: int, run_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "backprop_lab",
        "train",
        f"model={model}",
        "data=mnist1d",
        "optimizer=adam",
        "optimizer.lr=0.01",
        "scheduler=constant",
        "trainer.batch_size=100",
        f"trainer.max_steps={steps}",
        "trainer.progress=off",
        f"hydra.run.dir={run_dir}",
        *(["model.depth=2", "model.width=100"] if model == "mlp" else []),
    ]


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn1d"], choices=["mlp", "cnn1d"])
    args = parser.parse_args()
    contenders = ["plain", "engine"]
    if importlib.util.find_spec("lightning") is not None:
        contenders.append("lightning")
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"python {platform.python_version()}; {args.repeats} repeats, {args.steps} steps"
    )
    subprocess.run(
        engine_command("mlp", 1, Path(tempfile.mkdtemp()) / "warm"), capture_output=True
    )  # fills the data cache
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            wall: dict[str, list[float]] = {c: [] for c in contenders}
            rate: dict[str, list[float]] = {c: [] for c in contenders}
            for r in range(args.repeats):
                for c in contenders:
                    if c == "engine":
                        run_dir = Path(tmp) / f"{model}-{r}"
                        seconds, _ = timed(engine_command(model, args.steps, run_dir))
                        summary = json.loads((run_dir / "summary.json").read_text())
                        steps_per_s = summary["steps"] / summary["stages"][-1]["seconds"]
                    else:
                        script = HERE / f"{c}_loop.py"
                        seconds, out = timed([sys.executable, str(script), model, "--steps", str(args.steps)])
                        steps_per_s = json.loads(out.strip().splitlines()[-1])["steps_per_s"]
                    wall[c].append(seconds)
                    rate[c].append(steps_per_s)
            med = {c: statistics.median(wall[c]) for c in contenders}
            sps = {c: statistics.median(rate[c]) for c in contenders}
            for c in contenders:
                ratio = (
                    ""
                    if c == "plain"
                    else f"   {c}/plain: whole process x{med[c] / med['plain']:.2f}, "
                    f"training time x{sps['plain'] / sps[c]:.2f}"
                )
                print(f"{model:<6} {c:<9} whole process {med[c]:6.2f} s   training {sps[c]:7.0f} steps/s{ratio}")


if __name__ == "__main__":
    main()
