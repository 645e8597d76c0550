"""Training speed on the image presets, the engine against a hand-written loop on the same files.

    python benchmarks/image_speed.py [--repeats 3] [--mlp-steps 2000] [--resnet-steps 150]

Writes full-size MNIST (60k + 10k, gzipped IDX) and CIFAR-10 (50k + 10k, binary version) files of
random pixels into a temporary data root (speed does not depend on what the pixels show; these
machines cannot download the real ones), then runs, interleaved, as separate processes:
  plain    benchmarks/image_plain_loop.py PRESET --root ROOT     (the hand-written loop)
  engine   backprop-lab train experiment=PRESET data.root=ROOT   (validation, logging, diagnostics,
           weights saved: the defaults)
It prints the median whole-process seconds and training steps/s, and the ratio engine/plain.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from engine_speed import timed  # (benchmarks/ is the script folder: on the path)

HERE = Path(__file__).resolve().parent


def write_data(root: Path) -> None:
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, n in (("train", 60000), ("t10k", 10000)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        with gzip.open(raw / f"{name}-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
            f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", n, 28, 28) + images.tobytes())
        with gzip.open(raw / f"{name}-labels-idx1-ubyte.gz", "wb", compresslevel=1) as f:
            f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", n) + labels.tobytes())
    folder = root / "cifar-10-batches-bin"
    folder.mkdir()
    for name, n in [*((f"data_batch_{i}.bin", 10000) for i in range(1, 6)), ("test_batch.bin", 10000)]:
        records = rng.integers(0, 256, size=(n, 3073), dtype=np.uint8)
        records[:, 0] %= 10
        records.tofile(folder / name)


def engine_command(preset: str, steps: int, root: Path, run_dir: Path) -> list[str]:
    schedule = ["trainer.max_epochs=null"] if preset == "mnist_mlp" else [f"scheduler.milestones=[{steps}]"]
    return [
        sys.executable,
        "-m",
        "backprop_lab",
        "train",
        f"experiment={preset}",
        f"data.root={root}",
        f"trainer.max_steps={steps}",
        *schedule,
        "trainer.progress=off",
        f"hydra.run.dir={run_dir}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mlp-steps", type=int, default=2000)
    parser.add_argument("--resnet-steps", type=int, default=150)
    parser.add_argument(
        "--presets", nargs="+", default=["mnist_mlp", "cifar10_resnet20"], choices=["mnist_mlp", "cifar10_resnet20"]
    )
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"python {platform.python_version()}; {args.repeats} repeats"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_data(root)
        steps_of = {"mnist_mlp": args.mlp_steps, "cifar10_resnet20": args.resnet_steps}
        for preset in args.presets:
            steps = steps_of[preset]
            wall: dict[str, list[float]] = {"plain": [], "engine": []}
            rate: dict[str, list[float]] = {"plain": [], "engine": []}
            for r in range(args.repeats):
                run_dir = Path(tmp) / f"{preset}-{r}"
                seconds, _ = timed(engine_command(preset, steps, root, run_dir))
                summary = json.loads((run_dir / "summary.json").read_text())
                wall["engine"].append(seconds)
                rate["engine"].append(summary["steps"] / summary["stages"][-1]["seconds"])
                seconds, out = timed(
                    [
                        sys.executable,
                        str(HERE / "image_plain_loop.py"),
                        preset,
                        "--root",
                        str(root),
                        "--steps",
                        str(steps),
                    ]
                )
                wall["plain"].append(seconds)
                rate["plain"].append(json.loads(out.strip().splitlines()[-1])["steps_per_s"])
            med = {c: statistics.median(v) for c, v in wall.items()}
            sps = {c: statistics.median(v) for c, v in rate.items()}
            for c in ("plain", "engine"):
                ratio = (
                    f"   engine/plain: whole process x{med['engine'] / med['plain']:.2f}, training time "
                    f"x{sps['plain'] / sps['engine']:.2f}"
                    if c == "engine"
                    else ""
                )
                print(
                    f"{preset:<17} {c:<7} {steps} steps  whole process {med[c]:7.2f} s   training "
                    f"{sps[c]:7.1f} steps/s{ratio}"
                )


if __name__ == "__main__":
    main()
