"""What a person sees: a refusal leaves no folder, tables print values as written and show what
differs between jobs, compare and report refuse what no run has, and every series shows in its plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST

CLI = [sys.executable, "-m", "backprop_lab"]


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    "bad,said",
    [
        (["optimizer.lr=abc"], "error: optimizer.lr=abc is not valid: must be a number in (0, inf]"),
        (["regularizer.dropout=1.5"], "error: regularizer.dropout=1.5 is not valid: must be a number in [0, 1)"),
        (["+trainer.max_step=10"], "error: +trainer.max_step=10: nothing reads trainer.max_step ('trainer' has no"),
        (["data=npz", "data.path=missing.npz"], "error: data.path=missing.npz is not valid: no such file"),
        (["-m", "optimizer.lr=0.1,abc"], "error: optimizer.lr=abc is not valid: must be a number in (0, inf] (in"),
    ],
    ids=["type", "range", "added-key", "missing-file", "sweep-job"],
)
def test_a_refused_setting_exits_2_in_one_line_and_leaves_no_folder(tmp_path, bad, said):
    flags = [a for a in bad if a.startswith("-")]  # Hydra wants -m before the overrides
    r = cli(tmp_path, "train", *flags, *FAST, *[a for a in bad if a not in flags])
    assert r.returncode == 2 and r.stderr.startswith(said), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/, no multirun/


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, str]:
    """A 3 x 2 sweep, 2 seeds each, with a single evaluation per run: (its folder, what it printed)."""
    folder = tmp_path_factory.mktemp("sweep") / "sw"
    r = cli(
        folder.parent, "train", "-m", *FAST, "act=relu,tanh,sigmoid", "optimizer=sgd,adam", "seed=0,1",
        "trainer.max_steps=4", "trainer.eval_every=4", "trainer.log_every=1", f"hydra.sweep.dir={folder}",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return folder, r.stdout


def test_the_sweeps_last_table_shows_the_overrides_in_which_its_jobs_differ(sweep):
    _, printed = sweep
    table = printed[printed.index("sweep: 12 jobs in ") :]
    header = next(line for line in table.splitlines() if "status" in line)
    assert [h.strip() for h in header.strip("┃ ").split("┃")][:5] == ["job", "seed", "act", "optimizer", "status"]
    rows = [[c.strip() for c in line.strip("│ ").split("│")] for line in table.splitlines() if "completed" in line]
    assert [row[0] for row in rows] == [str(job) for job in range(12)] and rows[1][1:4] == ["1", "relu", "sgd"]


def test_a_rate_grid_on_the_vectorized_launcher_shows_its_rates(tmp_path):
    r = cli(
        tmp_path, "train", "-m", "hydra/launcher=vectorized", *FAST, "optimizer.lr=0.001,0.03", "seed=0,1",
        f"hydra.sweep.dir={tmp_path / 'sw'}", "trainer.progress=plain",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[train, job 0, member 1 of 4: optimizer.lr=0.001 seed=0] step 3/6" in r.stdout  # whose line it is
    for title, skip in (("4 runs trained as one batched model", 0), ("sweep: 4 jobs in ", 1)):  # (skip: job)
        table = r.stdout[r.stdout.index(title) :]
        header = next(line for line in table.splitlines() if "status" in line)
        assert [h.strip() for h in header.strip("┃ ").split("┃")][skip : skip + 3] == ["seed", "optimizer.lr", "status"]
        rows = [line for line in table.splitlines() if "completed" in line][:4]
        assert [[c.strip() for c in row.strip("│ ").split("│")][skip : skip + 2] for row in rows] == [
            ["0", "0.001"], ["1", "0.001"], ["0", "0.03"], ["1", "0.03"]
        ]  # fmt: skip


def test_brackets_in_a_value_are_printed_as_written(tmp_path):
    r = cli(tmp_path, "train", *FAST, "regularizer=[l2,dropout,batchnorm]", "hydra.run.dir=run")
    assert r.returncode == 0, r.stderr[-3000:]
    assert any(line.split() == ["regularizer", "[l2,dropout,batchnorm]"] for line in r.stdout.splitlines())
    table = cli(tmp_path, "compare", "run", "--by", "regularizer").stdout
    assert "│ [l2,dropout,batchnorm] │" in table


@pytest.mark.parametrize(
    "args,said",
    [
        (["--metric", "test_acc"], "error: --metric test_acc: no run has this metric; the runs have: gap/acc"),
        (["--filter", "act=rleu"], "error: --filter act=rleu: no run has act=rleu; its values: relu, sigmoid, tanh"),
        (["--filter", "actt=relu"], "error: --filter actt=relu: no run has the setting actt; settings: act,"),
        (["--by", "optimiser"], "error: --by optimiser: no run has this setting; settings: act,"),
        (["--sort", "tst/acc"], "error: --sort tst/acc: neither a metric of the table (test/acc) nor one of its"),
    ],
    ids=["metric", "filter-value", "filter-key", "by", "sort"],
)
def test_compare_refuses_what_no_run_has(sweep, args, said):
    folder, _ = sweep
    r = cli(folder.parent, "compare", str(folder), *args)
    assert r.returncode == 2 and r.stderr.startswith(said), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""


def test_compare_still_takes_what_the_runs_have(sweep):
    folder, _ = sweep
    r = cli(folder.parent, "compare", str(folder), "--filter", "act=tanh", "--sort=-val/loss", "--metric", "val/loss")
    assert r.returncode == 0 and "2 settings" in r.stdout and "relu" not in r.stdout


def _colour_shows(region: np.ndarray, colour: str) -> bool:
    from matplotlib.colors import to_rgb

    return bool((np.abs(region - np.array(to_rgb(colour))).max(-1) < 0.02).any())


def test_every_series_shows_in_every_panel_with_a_single_evaluation(sweep, tmp_path):
    """A series with one validation point is a marker; each setting's colour is found in the pixels of
    each panel, unless another setting has the very same value there (its marker is on top)."""
    from matplotlib.image import imread

    from backprop_lab.lab.compare import compare, find_runs
    from backprop_lab.lab.report import PALETTE, _label, series, sorted_rows

    folder, _ = sweep
    r = cli(folder.parent, "report", str(folder), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = sorted_rows(compare(find_runs([folder]), ["test/acc"])[1])
    labels = [_label(row.setting) for row in rows]
    assert len(labels) == 6 and len(set(PALETTE[:6])) == 6

    def distinct(split: str, key: str) -> list[int]:
        """The series whose last value no other series shares (those must show)."""
        last = {label: round(float(mean[-1]), 6) for label, (_, mean, _) in series(rows, split, key).items()}
        return [labels.index(lb) for lb, v in last.items() if list(last.values()).count(v) == 1]

    image = imread(tmp_path / "curves_steps.png")[..., :3]
    h, w = image.shape[:2]
    panels = {("train", "loss"): (0, 0), ("val", "loss"): (0, 1), ("train", "acc"): (1, 0), ("val", "acc"): (1, 1)}
    for (split, key), (row, col) in panels.items():
        region = image[row * h // 2 : (row + 1) * h // 2 - (h // 6 if row else 0), col * w // 2 : (col + 1) * w // 2]
        shown = distinct(split, key)
        assert len(shown) >= (6 if key == "loss" else 2), (split, key)
        for i in shown:
            assert _colour_shows(region, PALETTE[i]), (split, key, labels[i])
    gap = imread(tmp_path / "gap.png")[..., :3]
    for i in distinct("val", "gap/acc"):
        assert _colour_shows(gap[: gap.shape[0] * 3 // 4], PALETTE[i]), ("gap", labels[i])
    norms = imread(tmp_path / "grad_norms.png")[..., :3]
    panel = norms[: norms.shape[0] * 3 // 4, norms.shape[1] // 2 :]  # the last logging point: every setting apart
    assert sum(_colour_shows(panel, PALETTE[i]) for i in range(6)) == 6


def test_a_study_in_miniature_on_the_users_own_data_says_both(tmp_path):
    """A miniature carries its banner (terminal, report.md, study.json, kept by --report-only), and the
    Setting line names the data the runs trained on, not the preset's MNIST-1D."""
    rng = np.random.default_rng(0)
    y = np.arange(240) % 3
    x = rng.normal(size=(240, 40)).astype("float32") + y[:, None]
    np.savez(tmp_path / "textures.npz", x=x, y=y)
    r = cli(tmp_path, "study", "activations", "--smoke", "--out", "st", "data=npz", "data.path=textures.npz")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "miniature: 2 seeds x 8 steps" in r.stdout.splitlines()[0] and "report: st/report.md" in r.stdout
    assert "### Summary" not in r.stdout and "— (miniature)" in r.stdout  # the claims' table, not the report
    assert "[activations] grid: 24/24 jobs ended" in r.stdout  # each sweep's progress
    report = (tmp_path / "st" / "report.md").read_text()
    assert "**Setting:** your own: data=npz, model=mlp, from `data=npz data.path=textures.npz`" in report
    assert "MNIST-1D (generated" not in report
    saved = json.loads((tmp_path / "st" / "study.json").read_text())
    assert saved["miniature"].startswith("miniature: 2 seeds x 8 steps") and saved["overrides"][0] == "data=npz"
    (tmp_path / "st" / "report.md").unlink()
    again = cli(tmp_path, "study", "activations", "--report-only", "--out", "st")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "st" / "report.md").read_text().split("### Sweeps")[0] == report.split("### Sweeps")[0]


def test_the_default_run_is_the_published_recipe_and_says_where_it_stands():
    from backprop_lab.run.job_check import compose_train
    from backprop_lab.run.published import note

    assert compose_train([]).optimizer.lr == 0.01  # the MNIST-1D paper's Adam
    assert compose_train(["model=cnn1d"]).optimizer.lr == 0.01
    assert compose_train(["optimizer=sgd"]).optimizer.lr == 0.1  # another optimizer keeps its own
    assert compose_train(["data=digits"]).optimizer.lr == 0.001  # another data set: Adam's usual rate
    assert compose_train(["experiment=study_regularization"]).optimizer.lr == 0.001  # a preset's own wins
    assert compose_train(["optimizer.lr=0.003"]).optimizer.lr == 0.003
    summary = {"status": "completed", "metrics": {"test/acc": 0.655}, "steps": 6000, "best_step": 4500}
    said = note(compose_train([]), summary)
    assert said is not None and "65.5%" in said and "MLP 68%, CNN 94%" in said and "this mlp: -2.5 points" in said
    assert "not comparable" in (note(compose_train(["trainer=smoke"]), {**summary, "steps": 30}) or "")
    assert note(compose_train(["data.num_samples=1000"]), summary) is None  # not the published data set


def test_a_sweep_records_the_recipe_only_where_one_was_applied(tmp_path):
    sweep = ["-m", "optimizer=sgd,adam", "trainer=smoke", "trainer.progress=off", "hydra.sweep.dir=sw"]
    r = cli(tmp_path, "train", *sweep)
    assert r.returncode == 0, r.stderr[-3000:]
    summaries = [json.loads((tmp_path / "sw" / str(k) / "summary.json").read_text()) for k in (0, 1)]
    assert [s.get("recipe") for s in summaries] == [None, "mlp_mnist1d_adam"]
    assert not any("recipe" in s["choices"] for s in summaries)  # (compare groups by choices: no extra column)
    assert [s["choices"]["optimizer"] for s in summaries] == ["sgd", "adam"]
