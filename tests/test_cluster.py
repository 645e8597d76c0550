"""Sweeps through Hydra's cluster plugins, from the installed CLI in a subprocess:
hydra/launcher=submitit_local (SLURM's twin on one machine). (hydra/sweeper=optuna: test_search.py)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CLI = [sys.executable, "-m", "backprop_lab", "train", "-m"]
FAST = ["data=synthetic", "trainer=smoke", "trainer.progress=off"]


def _sweep(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *FAST, *args, f"hydra.sweep.dir={folder}"], capture_output=True, text=True, timeout=300
    )


def _summaries(folder: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/summary.json")}


def test_submitit_local_runs_each_job_in_its_own_process_and_counts_failures(tmp_path):
    done = _sweep(tmp_path / "sweep", "hydra/launcher=submitit_local", "optimizer=sgd", "optimizer.lr=0.1,1e12")
    assert done.returncode == 1, done.stderr[-2000:]  # one job diverged: the sweep says so
    assert "1 run(s) did not complete" in done.stderr and "diverged" in done.stderr
    runs = _summaries(tmp_path / "sweep")
    assert {r["overrides"][-1].split("=")[1]: r["status"] for r in runs.values()} == {
        "0.1": "completed",
        "1000000000000.0": "diverged",
    }
    assert all(r["torch_threads"] == 1 for r in runs.values())  # hydra.launcher.cpus_per_task
    assert (tmp_path / "sweep" / ".submitit").is_dir()  # submitit's own logs of each job


def test_submitit_slurm_config_has_our_values_and_the_plugins_keys(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "backprop_lab",
            "train",
            "hydra/launcher=submitit_slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.qos=high",
            "--cfg",
            "hydra",
            "--package",
            "hydra.launcher",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    launcher = yaml.safe_load(done.stdout)  # (printed as "# @package hydra.launcher")
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["partition"], launcher["qos"], launcher["timeout_min"], launcher["cpus_per_task"]) == (
        "gpu",
        "high",
        60,
        2,
    )
    assert (launcher["signal_delay_s"], launcher["max_num_timeout"]) == (120, 3)  # checkpoint, then requeue


def test_a_preempted_submitit_job_checkpoints_requeues_and_resumes_in_its_folder(tmp_path):
    """SIGUSR2 (what SLURM sends before a preemption or the time limit, as submitit asks) to a running
    submitit_local job: the step finishes and checkpoints (checkpoint_every=0: only that one), submitit
    requeues the job, and the requeued job continues from the checkpoint in the same folder."""
    import os
    import signal
    import time

    from conftest import run_cfg

    overrides = ["data=synthetic", "regularizer=dropout", "scheduler=cosine", "trainer.max_steps=600",
                 "trainer.log_every=20", "trainer.eval_every=100", "trainer.checkpoint_every=0",
                 "trainer.progress=off", "seed=0"]  # fmt: skip
    sweep = subprocess.Popen(
        [*CLI, "hydra/launcher=submitit_local", *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    run_dir, deadline = tmp_path / "sweep" / "0", time.time() + 120
    while time.time() < deadline and _rows(run_dir) < 8:
        time.sleep(0.02)
    os.kill(int((run_dir / ".lock").read_text().split()[1]), signal.SIGUSR2)  # the job's own process
    _, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and len(summary["resumed"]) == 1
    assert 0 < summary["resumed"][0]["step"] < 600  # from the signal's checkpoint, not from step 0
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*.err"))
    assert "Caught signal SIGUSR2" in logs and "this job is preempted" in logs  # submitit requeued it
    reference = run_cfg(tmp_path / "reference", *overrides)  # (torch threads may differ: float tolerance)
    steps = [[(r["split"], r["step"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
             for d in (run_dir, tmp_path / "reference")]  # fmt: skip
    assert steps[0] == steps[1]  # every row once: those after the checkpoint were not written twice
    for key, value in reference["metrics"].items():
        assert summary["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def _rows(run_dir: Path) -> int:
    try:
        return (run_dir / "metrics.jsonl").read_text().count("\n")
    except OSError:
        return 0
