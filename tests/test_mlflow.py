"""logger=mlflow: each run is an MLflow run, read back here with MLflow's own client from the store
the CLI wrote; a sweep is one experiment; a resumed run goes on in its MLflow run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

mlflow_tracking = pytest.importorskip("mlflow.tracking")

CLI = [sys.executable, "-m", "backprop_lab"]
FAST = ["data=synthetic", "trainer=smoke", "trainer.max_steps=40", "trainer.eval_every=10", "trainer.progress=off"]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_sweep_is_one_experiment_whose_runs_hold_the_run_folders_numbers(tmp_path):
    sweep = tmp_path / "sweep"
    done = subprocess.run(
        [*CLI, "train", "-m", *FAST, "logger=[tensorboard,mlflow]", "optimizer.lr=0.01", "seed=0,1",
         f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "mlflow.db").is_file()  # the default store: a SQLite file in the working directory
    client = mlflow_tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(str(sweep))
    runs = {r.data.params["seed"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["0", "1"]
    for seed, run in runs.items():
        run_dir = sweep / seed
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["mlflow"]["run_id"] == run.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
        assert run.data.tags["run_dir"] == str(run_dir)
        params = run.data.params
        assert (params["act"], params["optimizer"], params["optimizer.lr"]) == ("relu", "adam", "0.01")
        assert params["trainer.max_steps"] == "40" and f"seed={seed}" in params["overrides"]
        history = client.get_metric_history(run.info.run_id, "val/acc")
        val = [r for r in _rows(run_dir) if r["split"] == "val"]
        assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["acc"])) for r in val]
        assert run.data.metrics["test/acc"] == pytest.approx(summary["metrics"]["test/acc"])
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"summary.json", "config.yaml"}
    assert list(sweep.glob("0/events.out.tfevents.*"))  # and TensorBoard's files beside it


def test_a_resumed_run_goes_on_in_its_mlflow_run(tmp_path):
    from test_resume import LONG, kill_mid_run

    from backprop_lab.run.training import resume

    store = f"sqlite:///{tmp_path / 'store.db'}"
    run_dir = tmp_path / "run"
    overrides = [*LONG, "logger=mlflow", f"logger.tracking_uri={store}"]
    p = kill_mid_run(run_dir, signal.SIGTERM, overrides, after_rows=10)
    assert p.returncode == 130
    first = json.loads((run_dir / "summary.json").read_text())
    client = mlflow_tracking.MlflowClient(tracking_uri=store)
    assert client.get_run(first["mlflow"]["run_id"]).info.status == "KILLED"

    resume(run_dir)  # what `backprop-lab resume` runs (end to end: test_resume.py), in this process
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mlflow"]["run_id"] == first["mlflow"]["run_id"]
    run = client.get_run(summary["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    experiment = client.get_experiment_by_name("backprop-lab")  # a run outside a sweep
    assert len(client.search_runs([experiment.experiment_id])) == 1
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
    assert steps == [r["step"] for r in _rows(run_dir) if r["split"] == "val"]  # each evaluation once


def test_a_store_mlflow_cannot_open_is_one_line_and_the_folder_says_why(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [*CLI, "train", *FAST, "logger=mlflow", "logger.tracking_uri=nosuchscheme://x", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]  # (refused once the run tried the store: no folder is left)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: logger.tracking_uri=nosuchscheme://x is not valid")
    assert not run_dir.exists()
