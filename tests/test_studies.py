"""Each study in miniature (--smoke): real sweeps, a report, and a verdict computed from the runs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_cli import EXE

from backprop_lab.lab.compare import find_runs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXPECTED = {  # --smoke: 2 seeds per setting
    # + the candidate, 2 inits x 2 seeds; the same again on each of 4 held-out variants (--variants)
    "activations": ("Saturating activations starve early layers", (24 + 4) * 5),
    "regularization": ("reduces overfitting", 12),
    "optimizers": ("converges faster than sgd", 14 + 14),  # lr search: 7 optimizers x 2 rates, then 2 seeds each
    "pretraining": ("beats scratch", 24),
}

# activations: the gradient threshold, 4 act > sigmoid, 2 inits, 6 candidate lines; regularization: 5 x (gap,
# test/acc); optimizers: 3 x (loss at the probe, AUC, time to target); pretraining: 3 strategies x 3 budgets +
# the gain's shape
SUMMARY_ROWS = {"activations": 1 + 4 + 2 + 6, "regularization": 10, "optimizers": 9, "pretraining": 10}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_study_in_miniature(tmp_path, name):
    out = tmp_path / name
    if name == "activations":  # `backprop-lab study` end to end, with a candidate of the user's own
        shutil.copy(EXAMPLES / "mylab.py", tmp_path)  # examples/mylab.py's squareplus
        candidate = ["--candidate", "act=squareplus", "--config-dir", str(EXAMPLES / "configs"), "--variants"]
        args = [EXE, "study", name, "--smoke", "--out", str(out), *candidate]
        r = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    else:  # what it runs, in this process
        from backprop_lab.lab.studies.command import main

        assert main([name, "--smoke", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    if name == "activations":
        workload = report.split("## Variant ")[0]  # (then each held-out variant's section, the same lines)
        assert report.count("## Variant ") == 4
        lines = [line for line in workload.splitlines() if line.startswith("- candidate squareplus vs ")]
        assert len(lines) == 6 and all("two-sided Welch p = " in line or "n too small" in line for line in lines)
        assert all("Holm p = " in line for line in lines if "Welch" in line)
        assert "| squareplus | matched |" in report
        held_out = report.split("## Held-out variants")[1].split("###")[0]
        assert "| claim | workload | width x2 | depth +1 | another optimizer | another data set |" in held_out
        assert sum(line.startswith("| candidate squareplus vs ") for line in held_out.splitlines()) == 6
    phrase, n_runs = EXPECTED[name]
    assert phrase in report and "### Verdict" in report and "hydra/launcher=vectorized experiment=study_" in report
    # a miniature says so at the top, in study.json, and in place of every verdict
    assert report.splitlines()[4].startswith("> **miniature: 2 seeds x 8 steps (the protocol: 5 seeds x ")
    assert "is no evidence" in json.loads((out / "study.json").read_text())["miniature"]
    verdicts = [line for line in report.splitlines() if line.startswith("- ") and "(miniature)" in line]
    assert verdicts and not any(word in report for word in ("**holds**", "**does not hold**", "**better**"))
    assert len(find_runs([out])) == n_runs
    assert (out / "grad_norms.png").is_file()
    assert "Holm-Bonferroni adjusted p" in report and "### Reproduce" in report
    summary = report.split("### Summary")[1].split("###")[0].strip().splitlines()[2:]  # one row per claim tested
    assert len(summary) == SUMMARY_ROWS[name]
    assert all(row.endswith("| — (miniature) |") for row in summary)
    assert f"backprop-lab study {name} --report-only --out {out}" in report and "torch " in report


A = [0.91, 0.93, 0.90, 0.94, 0.92]
B = [0.88, 0.90, 0.87, 0.91, 0.86]


def test_welch_difference_interval_and_p_match_scipy():
    from scipy import stats

    from backprop_lab.lab.statistics import welch

    two = welch(A, B)
    reference = stats.ttest_ind(A, B, equal_var=False)
    low, high = reference.confidence_interval(0.95)
    assert (two["low"], two["high"], two["p"]) == pytest.approx((low, high, reference.pvalue), rel=1e-9)
    assert two["diff"] == pytest.approx(sum(A) / 5 - sum(B) / 5)
    greater = welch(A, B, "greater")
    assert greater["p"] == pytest.approx(stats.ttest_ind(A, B, equal_var=False, alternative="greater").pvalue)


def test_holm_adjusts_as_the_textbook_does():
    from backprop_lab.lab.statistics import holm

    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_a_family_of_tests_says_no_where_single_tests_would_say_yes():
    from backprop_lab.lab.statistics import Family

    family = Family()
    tests = [family.compare([0.54, 0.52, 0.56], [0.50, 0.49, 0.52]) for _ in range(10)]
    family.adjust()
    raw = tests[0].result["p"]
    assert raw < 0.05 and tests[0].p_holm == pytest.approx(min(1.0, 10 * raw))
    assert not any(t.holds for t in tests)  # ten looks at a small effect: none survives the correction
    clear = Family()
    strong = clear.compare(A, [0.5, 0.52, 0.51], points=True)
    worse = clear.compare([0.5, 0.52, 0.51], A)
    clear.adjust()
    assert strong.holds and not worse.holds
    assert "pp [" in strong.effect() and "Holm p = " in strong.effect()
    assert Family().compare([0.9], [0.5, 0.6]).result is None  # one run is no evidence


def test_the_summary_has_a_row_per_claim_with_its_adjusted_outcome():
    from scipy import stats

    from backprop_lab.lab.statistics import Family

    family = Family()
    family.claim("a threshold", lambda: True, "3.1e-03 vs 1.8e+00")
    strong = family.compare(A, B, points=True, label="A > B, test/acc")
    weak = family.compare([0.54, 0.52, 0.56], [0.50, 0.49, 0.52], label="small > smaller")
    family.claim("follows the test", lambda: weak.holds, "after it")  # read once the family is adjusted
    two = family.compare(B, A, two_sided=True, label="candidate B vs A")
    family.adjust()
    rows = family.summary().splitlines()
    assert rows[0] == "| claim | difference [95% CI] | Holm p | verdict |" and len(rows) == 2 + 5
    welch = stats.ttest_ind(A, B, equal_var=False, alternative="greater")
    low, high = stats.ttest_ind(A, B, equal_var=False).confidence_interval()  # two-sided 95%
    diff = sum(A) / 5 - sum(B) / 5
    shown = f"{100 * diff:+.1f} pp [{100 * low:+.1f}, {100 * high:+.1f}]"
    assert rows[3] == f"| A > B, test/acc | {shown} | {strong.p_holm:.3g} | **holds** |"
    assert strong.p_holm == pytest.approx(min(1.0, 3 * welch.pvalue))  # the smallest of three p, times three
    assert rows[2] == "| a threshold | 3.1e-03 vs 1.8e+00 | - | **holds** |"
    assert weak.holds and rows[5] == "| follows the test | after it | - | **holds** |"  # (before adjust: no Holm p)
    assert rows[6].startswith("| candidate B vs A | -0.036 [") and rows[6].endswith("| **worse** |") and two.p_holm


def test_intervals_of_positive_quantities_stay_positive_and_the_area_is_the_trapezoid():
    import math

    import numpy as np
    from scipy import stats

    from backprop_lab.lab.statistics import area_under, positive_interval

    steps = [200, 250, 900, 1500, 180]
    geo, low, high = positive_interval(steps)
    logs = np.log(steps)
    t_low, t_high = stats.t.interval(0.95, 4, loc=logs.mean(), scale=logs.std(ddof=1) / math.sqrt(5))
    assert (geo, low, high) == pytest.approx((math.exp(logs.mean()), math.exp(t_low), math.exp(t_high)))
    assert low > 0  # a symmetric t-interval on the raw counts goes below zero here
    assert stats.t.interval(0.95, 4, loc=np.mean(steps), scale=np.std(steps, ddof=1) / math.sqrt(5))[0] < 0
    x, y = [1, 50, 100, 400], [2.3, 1.1, 0.7, 0.2]
    assert area_under(x, y) == pytest.approx(np.trapezoid(y, x) / 399)


def test_unknown_study_is_one_line(tmp_path):
    r = subprocess.run([EXE, "study", "dropout"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: study 'dropout' does not exist; choose one of:")


@pytest.mark.parametrize(
    "study,candidate,message",
    [
        (
            "activations",
            "optimizer=adam",
            "error: --candidate=optimizer=adam is not valid: study activations takes one",
        ),
        ("optimizers", "optimizer=nope", "error: --candidate=optimizer=nope: In 'train': Could not find 'optimizer/no"),
        ("pretraining", "act=relu", "error: --candidate: study pretraining takes no candidate"),
    ],
)
def test_a_bad_candidate_is_one_line(tmp_path, study, candidate, message):
    r = subprocess.run([EXE, "study", study, "--candidate", candidate], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith(message) and r.stderr.count("\n") == 1
    assert not (tmp_path / "studies").exists()


def fake_mnist_and_fashion(root: Path) -> Path:
    """MNIST and Fashion-MNIST in their IDX files under `root`, as torchvision lays them out (random
    pixels whose class shows in their mean: these machines cannot reach the real files)."""
    from fake_files import random_cifar, write_idx_set

    for folder, seed in (("MNIST", 0), ("FashionMNIST", 1)):
        x, y = random_cifar(400, 10, seed=seed)
        write_idx_set(root / folder / "raw", x[:, 0, 2:30, 2:30], y, x[:80, 0, 2:30, 2:30], y[:80])
    return root


def test_pretraining_study_in_its_real_setting(tmp_path):
    """`backprop-lab study pretraining --setting real`: Fashion-MNIST -> MNIST, both in IDX files; the
    report names the setting, and --report-only recomputes it from the folder alone."""
    from backprop_lab.lab.studies.command import main

    data = fake_mnist_and_fashion(tmp_path / "data")
    out = tmp_path / "study"
    args = ["pretraining", "--setting", "real", "--smoke", "--out", str(out), f"data.root={data}"]
    assert main(args) == 0  # (`backprop-lab study` runs this: end to end in test_study_in_miniature)
    report = (out / "report.md").read_text()
    assert "Test accuracy on mnist (mean [95% CI]) by label budget; pretraining used fashion_mnist" in report
    assert "**Setting:** real: pretrain on Fashion-MNIST" in report and "experiment=study_pretraining_real" in report
    runs = find_runs([out])
    assert len(runs) == 24 and all(run.status == "completed" for run in runs)
    assert "pretrain.data=fashion_mnist" not in (out / "commands.md").read_text().splitlines()[0]  # scratch: no stage
    (out / "report.md").unlink()
    assert main(["pretraining", "--report-only", "--out", str(out)]) == 0
    again = (out / "report.md").read_text()
    assert again.split("### Sweeps")[0] == report.split("### Sweeps")[0]  # the setting and every number


@pytest.mark.parametrize("name", ["activations", "regularization", "optimizers", "pretraining"])
def test_each_real_setting_composes_and_reads_its_files(tmp_path, name):
    from backprop_lab.lab.studies.registry import STUDIES
    from backprop_lab.lab.studies.runner import setting_problem
    from backprop_lab.run.job_check import compose_train

    data = fake_mnist_and_fashion(tmp_path)
    assert setting_problem(name, "real", [f"data.root={data}"], None) is None
    setting = STUDIES[name].real
    cfg = compose_train([f"experiment={setting.experiment}"])
    assert cfg.data.name == ("fashion_mnist" if name == "regularization" else "mnist")
    assert cfg.model.name == "mlp" and cfg.trainer.max_steps <= 1500


@pytest.mark.parametrize(
    "name,present,message",
    [
        ("activations", [], "error: --setting real: data.root={root} is not valid: has no mnist files: looked in"),
        ("pretraining", ["MNIST"], "error: --setting real: data.root={root} is not valid: has no fashion_mnist files"),
    ],
)
def test_a_real_setting_without_its_files_is_one_line(tmp_path, monkeypatch, capsys, name, present, message):
    from backprop_lab.lab.studies.command import main

    root = fake_mnist_and_fashion(tmp_path / "data")
    for folder in ("MNIST", "FashionMNIST"):
        if folder not in present:
            shutil.rmtree(root / folder)
    monkeypatch.chdir(tmp_path)
    assert main([name, "--setting", "real", f"data.root={root}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(root=root)) and err.count("\n") == 1
    assert not (tmp_path / "studies").exists()  # nothing ran, nothing was written


@pytest.mark.parametrize("override", ["hydra.sweep.dir=elsewhere", "hydra.run.dir=x", "hydra.sweep.subdir=y"])
def test_a_study_refuses_hydras_folders_and_points_to_out(tmp_path, monkeypatch, capsys, override):
    from backprop_lab.lab.studies.command import main

    monkeypatch.chdir(tmp_path)
    assert main(["optimizers", "--smoke", override]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {override} is not valid for a study: its sweeps go under --out " + (
        "(backprop-lab study optimizers --out DIR)\n"
    )
    assert not any(tmp_path.iterdir())  # nothing ran, nothing was written


@pytest.mark.parametrize(
    "name,override,message",
    [
        ("pretraining", "pretrain.steps=oops", "error: pretrain.steps=oops is not valid: must be an integer >= 1"),
        ("activations", "data.rooot=1", "error: Could not override 'data.rooot'."),
        ("optimizers", "trainer.max_steps=0", "error: trainer.max_steps=0 is not valid:"),
    ],
)
def test_a_study_refuses_a_bad_override_before_any_sweep(tmp_path, monkeypatch, capsys, name, override, message):
    from backprop_lab.lab.studies.command import main

    monkeypatch.chdir(tmp_path)
    assert main([name, "--smoke", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not any(tmp_path.iterdir())  # nothing ran, nothing was written


def test_the_learning_rate_search_breaks_a_tie_by_the_larger_rate_as_a_number():
    from backprop_lab.lab.studies.tuning import best_rate

    assert best_rate([(0.63, "0.003"), (0.635, "0.001"), (0.635, "0.01")]) == "0.01"
    assert best_rate([(0.5, "0.01"), (0.5, "1e-3")]) == "0.01"  # (as strings, "1e-3" would win)
    assert best_rate([(0.7, "0.0003"), (0.5, "0.3")]) == "0.0003"
