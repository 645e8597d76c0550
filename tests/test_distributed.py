"""Data parallelism under torchrun, with 2 CPU processes (gloo), against one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cfg

from backprop_lab.run.runlog import read_metrics

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "backprop_lab"]
SMALL = [
    "data.n_train=400",
    "trainer.max_steps=60",
    "trainer.eval_every=20",
    "trainer.log_every=10",
    "trainer.batch_size=40",
    "trainer.progress=off",
    "model.width=32",
]


def _run(command: list[str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*command, "train", *SMALL, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _only_run_folder(cwd: Path) -> Path:
    folders = [p.parent for p in (cwd / "outputs").glob("*/*/summary.json")]
    assert len(folders) == 1, folders  # rank 1 wrote no folder of its own
    return folders[0]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    two = tmp_path / "two"
    two.mkdir()
    pair = _run(TORCHRUN, two)
    assert pair.returncode == 0, pair.stderr[-3000:]
    a = run_cfg(tmp_path / "one", *SMALL)  # the same run in one process (this one)
    b = json.loads((_only_run_folder(two) / "summary.json").read_text())
    assert (a["world_size"], b["world_size"], b["batch_per_process"]) == (1, 2, 20)
    for key, value in a["metrics"].items():  # same steps, same data; only the order of float sums differs
        assert b["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    rows_a = read_metrics(tmp_path / "one" / "metrics.jsonl")
    rows_b = read_metrics(_only_run_folder(two) / "metrics.jsonl")
    assert [(r["split"], r["step"]) for r in rows_a] == [(r["split"], r["step"]) for r in rows_b]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4), (ra, rb)
        assert rb.get("acc") == pytest.approx(ra.get("acc"), abs=1e-6)


def test_gradual_fine_tuning_and_batch_norm_run_data_parallel(tmp_path):
    """Blocks unfreeze mid-stage (DistributedDataParallel would refuse) and BN statistics are pooled."""
    done = _run(
        TORCHRUN,
        tmp_path,
        "pretrain=supervised",
        "data.source_classes=[0,1,2,3,4]",
        "data.target_classes=[5,6,7,8,9]",
        "pretrain.steps=20",
        "pretrain.finetune=gradual",
        "pretrain.unfreeze_every=20",
        "regularizer=batchnorm",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((_only_run_folder(tmp_path) / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    assert [s["stage"] for s in summary["stages"]] == ["pretrain", "finetune"]


def test_a_global_batch_that_does_not_split_is_refused(tmp_path):
    done = _run(TORCHRUN, tmp_path, "trainer.batch_size=41")
    assert done.returncode != 0
    assert "error: trainer.batch_size=41 is not valid: is the global batch, split over 2 processes" in done.stderr
    assert not list(tmp_path.glob("outputs/*/*/summary.json"))  # a refusal leaves no run folder
