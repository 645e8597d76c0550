"""What the diagnostics cost: the engine with trainer.diagnostics on vs off, interleaved, same process.

    python benchmarks/diagnostics_cost.py [--repeats 5] [--steps 3000]

Prints the median training seconds of each and the on/off ratio, for the MNIST-1D MLP and CNN
recipes at the default logging interval (trainer.log_every=100). Target: ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
from hydra import compose, initialize_config_module

from backprop_lab.data.datasets import load_arrays
from backprop_lab.run.pretrain import fit_stage, plan


class _Silent:
    def start_stage(self, *args):
        pass

    def update(self, *args):
        pass

    def end_stage(self):
        pass

    def metrics(self, **row):
        pass


def seconds(overrides: list[str], arrays, steps: int) -> float:
    with initialize_config_module(config_module="backprop_lab.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    torch.manual_seed(0)
    p = plan(cfg, arrays, torch.device("cpu"))
    return fit_stage(cfg, p.model, p.target, "train", steps, _Silent(), _Silent()).seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    for model in ("mnist1d_mlp_baseline", "mnist1d_cnn_baseline"):
        base = [f"experiment={model}"]
        with initialize_config_module(config_module="backprop_lab.configs", version_base="1.3"):
            arrays = load_arrays(compose(config_name="train", overrides=base).data)
        on, off = [], []
        for _ in range(args.repeats):  # interleaved, so drift in the machine's speed hits both alike
            off.append(seconds(base + ["trainer.diagnostics=false"], arrays, args.steps))
            on.append(seconds(base + ["trainer.diagnostics=true"], arrays, args.steps))
        m_on, m_off = statistics.median(on), statistics.median(off)
        print(
            f"{model}: {args.steps} steps, median of {args.repeats}: diagnostics off {m_off:.2f} s, "
            f"on {m_on:.2f} s, ratio on/off {m_on / m_off:.3f}"
        )


if __name__ == "__main__":
    main()
