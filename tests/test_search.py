"""hydra/sweeper=optuna: our sweeper on Optuna's ask-and-tell API, from the CLI in a subprocess and,
where the command line adds nothing, in this process (direction from trainer.monitor, failed and
pruned trials, a study resumed from SQLite), and the search space read from Hydra's override grammar."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import sweep_here, sweep_printed

optuna = pytest.importorskip("optuna")

CLI = [sys.executable, "-m", "backprop_lab", "train", "-m"]
FAST = ["data=synthetic", "trainer=smoke", "trainer.progress=off", "hydra/sweeper=optuna"]


def _sweep(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *FAST, *args, f"hydra.sweep.dir={folder}"], capture_output=True, text=True, timeout=300
    )


def _sweep_here(capfd: pytest.CaptureFixture[str], folder: Path, *args: str) -> tuple[int, str]:
    """The same sweep in this process: its exit status and what it printed."""
    return sweep_printed(capfd, folder, *FAST, *args)


def _summaries(folder: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/summary.json")}


def _results(folder: Path) -> dict:
    return yaml.safe_load((folder / "optimization_results.yaml").read_text())


def test_the_search_space_in_hydras_grammar_becomes_optunas_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from backprop_lab.run.search import search_space

    space, fixed = search_space(
        ["optimizer.lr=tag(log, interval(1e-4, 1e-1))", "model.width=range(32,160,32)", "act=choice(relu,tanh)",
         "regularizer.dropout=interval(0.0, 0.5)", "model.depth=int(interval(1, 4))", "optimizer=sgd",
         "act=choice(gelu,elu)"]
    )  # fmt: skip
    assert space == {
        "optimizer.lr": FloatDistribution(1e-4, 1e-1, log=True),
        "model.width": IntDistribution(32, 128, step=32),  # range's end is excluded, as in a grid sweep
        "act": CategoricalDistribution(["gelu", "elu"]),  # the later override wins
        "regularizer.dropout": FloatDistribution(0.0, 0.5),
        "model.depth": IntDistribution(1, 4),
    }
    assert fixed == ["optimizer=sgd"]


def test_optuna_maximises_accuracy_and_minimises_loss(tmp_path):
    done = _sweep(tmp_path / "acc", "hydra.sweeper.n_trials=3")
    assert done.returncode == 0, done.stderr[-2000:]
    runs, results = _summaries(tmp_path / "acc"), _results(tmp_path / "acc")
    assert "maximize val/acc" in done.stdout and len(runs) == 3
    assert results["best_value"] == max(r["metrics"]["val/acc"] for r in runs.values())
    best = runs[Path(results["best_job_dir"]).name]
    assert best["metrics"]["val/acc"] == results["best_value"]
    assert f"optimizer.lr={results['best_params']['optimizer.lr']}" in best["overrides"]

    sweep_here(tmp_path / "loss", *FAST, "hydra.sweeper.n_trials=2", "trainer.monitor=val/loss")  # in this process
    runs, results = _summaries(tmp_path / "loss"), _results(tmp_path / "loss")
    assert results["direction"] == "minimize" and len(runs) == 2
    assert results["best_value"] == min(r["metrics"]["val/loss"] for r in runs.values())


def test_a_diverged_trial_is_failed_and_the_study_goes_on(tmp_path, capfd):
    # the preset's lr range stays safe; this study draws lr from {1e12, 0.1}, seeded to draw both
    status, printed = _sweep_here(
        capfd, tmp_path / "study", "hydra.sweeper.n_trials=4", "optimizer=sgd", "optimizer.lr=choice(1e12,0.1)"
    )
    statuses = sorted(r["status"] for r in _summaries(tmp_path / "study").values())
    assert "diverged" in statuses and "completed" in statuses, statuses
    assert status == 1 and "Traceback" not in printed  # like any sweep with a run that did not complete
    assert "failed: diverged: non-finite loss" in printed
    results = _results(tmp_path / "study")
    assert results["best_params"]["optimizer.lr"] == 0.1 and math.isfinite(results["best_value"])
    assert results["trials"]["fail"] == statuses.count("diverged")


def test_a_study_where_every_trial_fails_ends_in_one_line_not_a_traceback(tmp_path):
    done = _sweep(tmp_path / "study", "hydra.sweeper.n_trials=2", "optimizer=sgd", "optimizer.lr=choice(1e12)")
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    assert "no trial completed: every run diverged or failed" in done.stdout + done.stderr
    assert "2 run(s) did not complete" in done.stderr


def test_a_pruned_study_resumes_from_its_sqlite_storage(tmp_path, capfd, monkeypatch):
    """A median pruner stops trials whose validation accuracy falls behind: they end `pruned` before
    their last step, Optuna's storage holds what each run reported at its evaluations, and the same
    command with more trials goes on from the stored study."""
    study = ["trainer.max_steps=300", "trainer.eval_every=30", "hydra.sweeper.pruner=median",
             "hydra.sweeper.pruner_kwargs={n_startup_trials:2}", "hydra.sweeper.storage=sqlite:///study.db",
             "hydra.sweeper.study_name=pruned"]  # fmt: skip
    monkeypatch.chdir(tmp_path)  # (the storage's path is relative)
    status, printed = _sweep_here(capfd, tmp_path / "first", *study, "hydra.sweeper.n_trials=6")
    assert status == 0, printed[-2000:]  # pruned runs are what a pruned study is for
    runs = _summaries(tmp_path / "first")
    pruned = [r for r in runs.values() if r["status"] == "pruned"]
    assert pruned and all(r["steps"] < 300 for r in pruned)
    stored = optuna.load_study(study_name="pruned", storage=f"sqlite:///{tmp_path / 'study.db'}")
    states = [t.state.name for t in stored.trials]
    assert states.count("PRUNED") == len(pruned) and states.count("COMPLETE") == 6 - len(pruned)
    for trial in stored.trials:  # what the engine reported at every evaluation
        run_dir = Path(trial.user_attrs["job_dir"])
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        val = {r["step"]: r["acc"] for r in rows if r["split"] == "val"}
        assert trial.intermediate_values == pytest.approx(val)
    compared = subprocess.run([sys.executable, "-m", "backprop_lab", "compare", str(tmp_path / "first"),
                               "--format", "markdown"], capture_output=True, text=True)  # fmt: skip
    assert compared.stdout.count("| 1 pruned |") == len(pruned)  # (each trial is a setting of its own)

    status, printed = _sweep_here(capfd, tmp_path / "second", *study, "hydra.sweeper.n_trials=8")
    assert status == 0, printed[-2000:]
    assert "resuming: 6 trial(s) finished before" in printed
    assert len(_summaries(tmp_path / "second")) == 2  # 8 in the study, 6 of them from before
    trials = optuna.load_study(study_name="pruned", storage=f"sqlite:///{tmp_path / 'study.db'}").trials
    assert len(trials) == 8
    first, second = [t.params for t in trials[:6]], [t.params for t in trials[6:]]
    assert not any(p in first for p in second)  # the resumed session asks new trials, not the first ones again


def test_a_trial_left_running_by_a_killed_sweep_is_run_again(tmp_path, capfd):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    trial = stale.ask({"optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    import socket

    trial.set_user_attr("sweeper", f"{socket.gethostname()}:{gone.stdout.strip()}")  # a process that has ended
    lr = trial.params["optimizer.lr"]
    status, printed = _sweep_here(capfd, tmp_path / "sweep", "hydra.sweeper.n_trials=1",
                                  f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=s")  # fmt: skip
    assert status == 0, printed[-2000:]
    assert "1 interrupted trial(s) run again: [0]" in printed
    (run,) = _summaries(tmp_path / "sweep").values()
    assert f"optimizer.lr={lr}" in run["overrides"]
    states = [t.state.name for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert states == ["FAIL", "COMPLETE"]


def test_pruning_trials_of_other_processes_without_a_storage_is_one_line(tmp_path):
    done = _sweep(tmp_path / "sweep", "hydra/launcher=joblib", "hydra.sweeper.pruner=median")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        "error: hydra.sweeper.storage=null is not valid: pruning trials that JoblibLauncher runs in other "
        "processes needs a shared study: set hydra.sweeper.storage=sqlite:///study.db"
    )
    assert not (tmp_path / "sweep").exists()


def test_trials_batched_by_the_vectorized_launcher_are_pruned_member_by_member(tmp_path, capfd):
    # (Hyperband with Optuna's defaults: no pruner_kwargs given)
    status, printed = _sweep_here(capfd, tmp_path / "sweep", "hydra/launcher=vectorized", "hydra.sweeper.n_jobs=4",
                                  "hydra.sweeper.n_trials=8", "trainer.max_steps=300", "trainer.eval_every=30",
                                  "hydra.sweeper.pruner=hyperband")  # fmt: skip
    assert status == 0, printed[-2000:]
    second = [r for name, r in _summaries(tmp_path / "sweep").items() if int(name) >= 4]  # the second group of 4
    assert all(r["vectorized"]["members"] == 4 for r in second)
    pruned = [r for r in second if r["status"] == "pruned"]
    assert pruned and all(r["steps"] < 300 for r in pruned)  # stopped alone; the group went on without them
    assert _results(tmp_path / "sweep")["trials"]["pruned"] == len(pruned)
