"""Comparisons as the field's benchmarks run them: tuning rulesets that give every arm the same trials
(counted from the run folders), time to a target with censored runs, performance profiles, their plots,
and the refusals of the options that ask for them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from backprop_lab.lab.survival import Reach, TimeComparison, median_time


# ------------------------------------------------------------------ trials per arm, from the folders
def trial_counts(folder: Path) -> dict[str, int]:
    """Tuning runs per optimizer under a ruleset's folder: lr_search/ and tune_*/ run folders, each read
    from its own .hydra/overrides.yaml (not from the lab's reading of them)."""
    counts: dict[str, int] = {}
    for overrides in folder.glob("*/*/.hydra/overrides.yaml"):
        if overrides.parents[2].name == "lr_search" or overrides.parents[2].name.startswith("tune_"):
            chosen = [o.split("=", 1)[1] for o in OmegaConf.load(overrides) if o.startswith("optimizer=")]
            counts[chosen[0]] = counts.get(chosen[0], 0) + 1
    return counts


def test_each_ruleset_gives_every_arm_the_same_trials(tmp_path):
    """A miniature under three rulesets: lr gives each optimizer its 2 rates (a miniature's grid), budget:3
    three quasirandom trials, oneshot none; the self-tuning arms none under any; the report says the same."""
    from backprop_lab.lab.studies.command import main
    from backprop_lab.lab.studies.optimizers import OPTIMIZERS, SELF_TUNING

    out = tmp_path / "st"
    args = ["optimizers", "--smoke", "--tuning", "lr,budget:3,oneshot", "--self-tuning", "--out", str(out)]
    assert main(args) == 0
    assert trial_counts(out / "lr") == dict.fromkeys(OPTIMIZERS, 2)
    assert trial_counts(out / "budget_3") == dict.fromkeys(OPTIMIZERS, 3)
    assert trial_counts(out / "oneshot") == {}
    report = (out / "report.md").read_text()
    section = report.split("## Tuning budget:3")[1].split("## Tuning oneshot")[0]
    for arm in OPTIMIZERS:
        assert f"| {arm} | " in section and " | 3 | " in section.split(f"| {arm} | ")[1].splitlines()[0]
    for arm in SELF_TUNING:
        assert f"| {arm} | defaults | 0 (self-tuning) |" in section
    # each budget trial is its own point of the declared space, and the finals run at the best one's values
    trials = [OmegaConf.load(p) for p in (out / "budget_3" / "tune_adam").glob("*/.hydra/overrides.yaml")]
    rates = {o for t in trials for o in t if o.startswith("optimizer.lr=")}
    assert len(rates) == 3 and all(1e-4 <= float(r.split("=")[1]) <= 1e-1 for r in rates)
    final = OmegaConf.load(next((out / "budget_3" / "final_adam").glob("*/.hydra/overrides.yaml")))
    assert any(o in rates for o in final) and any(o.startswith("optimizer.betas.0=") for o in final)
    assert "## The rulesets side by side" in report and "| **best** |" in report
    assert (out / "lr" / "lr_sensitivity.png").is_file() and "(lr/lr_sensitivity.png)" in report


def test_a_batch_of_qmc_trials_is_the_sobol_sequence_throughout():
    """Optuna's QMCSampler draws a batch's first trial at random; the sweeper's batches follow scipy's
    scrambled Sobol sequence from the first point, mapped onto the space (log where tagged)."""
    from optuna.distributions import FloatDistribution
    from scipy.stats import qmc

    from backprop_lab.run.search import qmc_points

    space = {
        "optimizer.lr": FloatDistribution(1e-4, 1e-1, log=True),
        "optimizer.momentum": FloatDistribution(0.8, 0.99),
    }
    points = qmc_points(space, seed=100, start=0, count=4)
    unit = qmc.Sobol(2, scramble=True, seed=100).random(4)
    expected_lr = np.exp(np.log(1e-4) + unit[:, 0] * (np.log(1e-1) - np.log(1e-4)))
    np.testing.assert_allclose([p["optimizer.lr"] for p in points], expected_lr, rtol=1e-12)
    np.testing.assert_allclose([p["optimizer.momentum"] for p in points], 0.8 + unit[:, 1] * 0.19, rtol=1e-12)
    assert qmc_points(space, seed=100, start=2, count=2) == points[2:]  # a resumed study continues the sequence


# ------------------------------------------------------------------ time to target, censored
def test_a_censored_run_counts_as_not_reaching_and_changes_the_fraction():
    """Kaplan-Meier by hand: reached at 100, 200, 300 of 3 runs: the median is 200. A fourth run that
    never reached it (censored at 3000) is not dropped: 3 of 4 reached, and the survival after 200 is
    1/2 (3/4 x 2/3), so the median is still 200 but its upper bound is never (the bound stays above 1/2)."""
    reached = [Reach(100, True), Reach(200, True), Reach(300, True)]
    assert median_time(reached)[0] == 200
    with_censored = [*reached, Reach(3000, False)]
    median, low, high = median_time(with_censored)
    assert (median, low) == (200, 100) and math.isinf(high)
    assert sum(t.reached for t in with_censored) / len(with_censored) == 0.75
    # half of them never reaching it: the median itself is never reached
    assert math.isinf(median_time([Reach(100, True), Reach(3000, False), Reach(3000, False)])[0])
    assert median_time([Reach(3000, False)] * 3) == (math.inf, math.inf, math.inf)


def test_reaching_sooner_is_the_one_sided_log_rank_test():
    from scipy import stats

    fast = [Reach(s, True) for s in (100, 200, 200, 300)] + [Reach(3000, False)]
    slow = [Reach(s, True) for s in (800, 1000)] + [Reach(3000, False)] * 3
    test = TimeComparison(fast, slow)
    censored = [
        stats.CensoredData(
            uncensored=[t.step for t in side if t.reached], right=[t.step for t in side if not t.reached]
        )
        for side in (fast, slow)
    ]
    expected = stats.logrank(censored[0], censored[1], alternative="greater").pvalue
    assert test.result is not None and test.result["p"] == pytest.approx(expected) and expected < 0.05
    test.p_holm = test.result["p"]
    assert test.holds and not TimeComparison(slow, fast).holds
    assert "reached 4/5 vs 2/5" in test.effect()


def test_reach_reads_a_real_run_and_censors_one_that_never_gets_there(tmp_path):
    import subprocess

    from test_cli import EXE

    from backprop_lab.lab.compare import find_runs, metrics_rows
    from backprop_lab.lab.studies.optimizers import reach

    r = subprocess.run(
        [EXE, "train", "trainer=smoke", "trainer.eval_every=10"], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    (run,) = find_runs([tmp_path / "outputs"])
    val = [row for row in metrics_rows(run.path) if row.get("split") == "val"]
    first = val[0]
    assert reach(run, first["acc"]) == Reach(float(first["step"]), True, first["elapsed_s"])
    never = reach(run, 1.01)  # never: censored at the last evaluation
    assert never == Reach(float(val[-1]["step"]), False, val[-1]["elapsed_s"])
    assert never.in_seconds() == Reach(val[-1]["elapsed_s"], False, val[-1]["elapsed_s"])


# ------------------------------------------------------------------ performance profiles
TIMES = {  # steps to the target on three workloads (inf: never)
    "a": {"w1": 100.0, "w2": 400.0, "w3": math.inf},
    "b": {"w1": 200.0, "w2": 100.0, "w3": 300.0},
    "c": {"w1": 500.0, "w2": 150.0, "w3": 600.0},
}


def test_the_profile_of_three_workloads_is_the_hand_computation():
    """Ratios to the best per workload: a 1, 4, inf; b 2, 1, 1; c 5, 1.5, 2. rho(tau) = the fraction of
    workloads with ratio <= tau."""
    from backprop_lab.lab.profiles import profile, ratios

    assert ratios(TIMES)["a"] == {"w1": 1.0, "w2": 4.0, "w3": math.inf}
    rho = profile(TIMES, [1.0, 1.5, 2.0, 4.0])
    assert rho["a"] == [1 / 3, 1 / 3, 1 / 3, 2 / 3]
    assert rho["b"] == [2 / 3, 2 / 3, 1.0, 1.0]
    assert rho["c"] == [0.0, 1 / 3, 2 / 3, 2 / 3]


def _colour_shows(region: np.ndarray, colour: str) -> bool:
    from matplotlib.colors import to_rgb

    return bool((np.abs(region[..., :3] - np.array(to_rgb(colour))).max(-1) < 0.02).any())


def test_the_profile_plot_shows_every_method_in_its_colour(tmp_path):
    from matplotlib.image import imread

    from backprop_lab.lab.profiles import profile_plot
    from backprop_lab.lab.report import PALETTE

    image = imread(profile_plot(TIMES, tmp_path, "three workloads"))
    panel = image[: image.shape[0] * 3 // 4]  # (above the legend)
    assert all(_colour_shows(panel, PALETTE[i]) for i in range(3))


def test_the_sensitivity_plot_shows_every_optimizer_with_its_own_curve(tmp_path):
    """From a learning-rate search in miniature: each optimizer whose curve no other shares shows in
    its colour above the legend."""
    from matplotlib.image import imread

    from backprop_lab.lab.compare import find_runs
    from backprop_lab.lab.report import PALETTE
    from backprop_lab.lab.studies.optimizers import OPTIMIZERS, sensitivity_plot
    from backprop_lab.lab.studies.study import Plan, Ruleset, Setting
    from backprop_lab.run.app import launch

    search = tmp_path / "lr_search"
    grid = [f"optimizer={','.join(OPTIMIZERS)}", "optimizer.lr=0.003,0.01,0.03", "seed=100"]
    code = launch(["-m", "hydra/launcher=vectorized", "experiment=study_optimizers", *grid, "trainer.max_steps=20",
                   "trainer.eval_every=10", "data.num_samples=1000", f"hydra.sweep.dir={search}"])  # fmt: skip
    assert code == 0
    runs = find_runs([search])
    plan = Plan(Setting("study_optimizers", "MNIST-1D"), Ruleset("lr"), folder=tmp_path)
    assert sensitivity_plot(runs, [], OPTIMIZERS, plan, 20) == "lr_sensitivity.png"
    curves = {
        arm: tuple(sorted((r.settings["optimizer.lr"], round(r.metrics["val/acc"], 6)) for r in runs
                          if r.settings["optimizer"] == arm))
        for arm in OPTIMIZERS
    }  # fmt: skip
    own = [i for i, arm in enumerate(OPTIMIZERS) if list(curves.values()).count(curves[arm]) == 1]
    assert len(own) >= 4
    image = imread(tmp_path / "lr_sensitivity.png")
    panel = image[: image.shape[0] * 3 // 4]
    for i in own:
        assert _colour_shows(panel, PALETTE[i]), OPTIMIZERS[i]


# ------------------------------------------------------------------ refusals, one line each
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["optimizers", "--tuning", "budget:0"], "error: --tuning=budget:0: 'budget:0' is not a ruleset"),
        (["optimizers", "--tuning", "lr,lr"], "error: --tuning=lr,lr: a ruleset is named twice"),
        (["activations", "--tuning", "lr"], "error: --tuning=lr: study activations runs each arm at its preset"),
        (["optimizers", "--settings", "mnist1d,cifar"], "error: --settings: 'cifar' is not a setting; choose from"),
        (["pretraining", "--settings", "digits"], "error: --settings: digits is too small for the pretraining"),
        (["optimizers", "--target", "1.5"], "error: --target=1.5 is not valid: a validation accuracy in (0, 1]"),
        (["optimizers", "--variants"], "error: --variants re-measures a candidate on held-out variants"),
        (["regularization", "--self-tuning"], "error: --self-tuning: study regularization compares no optimizers"),
    ],
)
def test_a_bad_comparison_option_is_one_line(tmp_path, monkeypatch, capsys, args, message):
    from backprop_lab.lab.studies.command import main

    monkeypatch.chdir(tmp_path)
    assert main([*args, "--smoke"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_a_budget_needs_the_candidates_declared_space(tmp_path, monkeypatch, capsys):
    from backprop_lab.lab.studies.command import main

    (tmp_path / "mine" / "optimizer").mkdir(parents=True)
    (tmp_path / "mine" / "optimizer" / "plain.yaml").write_text("name: sgd\nlr: 0.1\nweight_decay: 0.0\n")
    monkeypatch.chdir(tmp_path)
    args = ["optimizers", "--smoke", "--tuning", "budget:4", "--candidate", "optimizer=plain"]
    assert main([*args, "--config-dir", str(tmp_path / "mine")]) == 2
    err = capsys.readouterr().err
    assert "draws its trials from the search space its YAML declares, and it declares none" in err
    assert err.count("\n") == 1
