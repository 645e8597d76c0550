"""The CUDA path. Skipped without a GPU (CI is CPU-only); run on a GPU machine with `pytest -m gpu`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

MLP = ["trainer.max_steps=300", "trainer.eval_every=100", "trainer.progress=off", "trainer.device=cuda"]


def _train(tmp_path, name, *args, launcher=(sys.executable, "-m", "backprop_lab")):
    run_dir = tmp_path / name
    done = subprocess.run(
        [*launcher, "train", *MLP, *args, f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def test_cuda_fp32_and_bf16_train_on_the_gpu(tmp_path):
    fp32 = _train(tmp_path, "fp32")
    bf16 = _train(tmp_path, "bf16", "trainer.precision=bf16")
    assert fp32["device"].startswith("cuda") and bf16["device"].startswith("cuda")
    assert fp32["metrics"]["val/acc"] > 0.3 and bf16["metrics"]["val/acc"] > 0.3  # chance is 0.1
    assert abs(fp32["metrics"]["val/acc"] - bf16["metrics"]["val/acc"]) < 0.1


def test_cuda_compile_gives_the_eager_numbers(tmp_path):
    eager = _train(tmp_path, "eager", "model=cnn1d")
    compiled = _train(tmp_path, "compiled", "model=cnn1d", "trainer.compile=true")
    assert compiled["metrics"]["val/loss"] == pytest.approx(eager["metrics"]["val/loss"], rel=2e-2)


def test_torchrun_on_one_gpu(tmp_path):
    summary = _train(
        tmp_path,
        "torchrun",
        launcher=(
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=1",
            "-m",
            "backprop_lab",
        ),
    )
    assert summary["status"] == "completed" and summary["device"].startswith("cuda")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL data parallel needs 2 GPUs")
def test_torchrun_nccl_on_two_gpus(tmp_path):
    summary = _train(
        tmp_path,
        "nccl",
        launcher=(
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "backprop_lab",
        ),
    )
    assert summary["world_size"] == 2 and summary["device"] == "cuda:0"


def test_vectorized_seeds_on_the_gpu(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "backprop_lab",
            "train",
            "-m",
            "hydra/launcher=vectorized",
            "seed=range(8)",
            "model=cnn1d",
            *MLP,
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/summary.json")]
    assert len(runs) == 8 and all(r["status"] == "completed" and "vectorized" in r for r in runs)
