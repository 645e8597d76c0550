"""Study "optimizers": adaptive optimizers (Adam, RMSprop, Adagrad) converge faster than SGD.

Every arm is tuned under one declared ruleset (tuning.py), then measured at seeds 0..N-1: train loss
at a step and over the run, time to a validation target (runs that never reach it censored), test
accuracy. With --self-tuning, schedule-free AdamW and Prodigy join at zero tuning budget."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from backprop_lab.lab.compare import Run, metrics_rows
from backprop_lab.lab.statistics import Family, area_under, mark
from backprop_lab.lab.studies.readers import completed, row_at, train_row, values
from backprop_lab.lab.studies.study import Plan, RunSweep
from backprop_lab.lab.studies.tuning import LR_GRID, SEARCH_SEED, search_space, trials_of, tune
from backprop_lab.lab.studies.verdicts import Lines, candidate_lines, fmt, render, table
from backprop_lab.lab.survival import Reach, TimeComparison, median_time, seconds_text, steps_text

OPTIMIZERS = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"]
ADAPTIVE = ["adam", "rmsprop", "adagrad"]
# no hyperparameter to tune, measured at zero tuning budget (their packages: the extra `selftuning`)
SELF_TUNING = ("schedulefree_adamw", "prodigy")


def optimizers_sweeps(run_sweep: RunSweep, plan: Plan) -> None:
    tuned = [*OPTIMIZERS, *([plan.candidate] if plan.candidate else [])]
    spaces = {arm: search_space(arm, plan.config_dir) for arm in tuned} if plan.ruleset.name == "budget" else {}
    chosen = tune(run_sweep, plan, tuned, spaces)
    for arm in [*OPTIMIZERS, *(SELF_TUNING if plan.self_tuning else ()), *([plan.candidate] if plan.candidate else [])]:
        overrides = chosen.get(arm, [])
        run_sweep(f"final_{arm}", [f"optimizer={arm}", *overrides, f"seed={plan.seeds}"])


def reach(run: Run, target: float) -> Reach | None:
    """The step (and seconds) at which the run's validation accuracy first reached `target`, or the last
    step it was evaluated at (censored there: a run that diverged or stopped early never reached it);
    None for a run with no evaluation."""
    last = None
    for r in metrics_rows(run.path):
        if r.get("split") == "val" and isinstance(r.get("acc"), (int, float)):
            seconds = float(r.get("elapsed_s") or math.nan)
            if r["acc"] >= target:
                return Reach(float(r["step"]), True, seconds)
            last = Reach(float(r["step"]), False, seconds)
    return last


def default_target(runs: list[Run]) -> float | None:
    """AlgoPerf's target: the median best validation accuracy of the best tuned baseline (the baseline
    with the highest median), over its measured seeds."""
    final = [r for r in runs if r.path.parent.name.startswith("final_")]
    medians = {
        opt: statistics.median(v) for opt in OPTIMIZERS if (v := values(completed(final, optimizer=opt), "val/acc"))
    }
    return max(medians.values()) if medians else None


def train_loss_auc(run: Run) -> float | None:
    """The mean training loss over the whole run: the area under its logged train-loss curve / steps."""
    rows = [r for r in metrics_rows(run.path) if r.get("split") == "train" and isinstance(r.get("loss"), (int, float))]
    return area_under([r["step"] for r in rows], [r["loss"] for r in rows])


def chosen_text(run: Run | None) -> str:
    """The hyperparameters an arm was measured at, as its runs' overrides say (its YAML's: "defaults"),
    numbers to 3 significant digits (the runs' overrides hold them in full)."""
    if run is None:
        return "-"

    def short(value: str) -> str:
        try:
            return f"{float(value):.3g}"
        except ValueError:
            return value

    own = [f"{k.removeprefix('optimizer.')}={short(v)}" for k, v in run.settings.items() if k.startswith("optimizer.")]
    return " ".join(own) or recipe_text(run)


def recipe_text(run: Run) -> str:
    """ "defaults", or, where a published recipe set the rate (train.yaml's `recipe`), which and to what."""
    import json

    from omegaconf import OmegaConf

    try:
        recipe = json.loads((run.path / "summary.json").read_text()).get("recipe")
        lr = OmegaConf.load(run.path / ".hydra" / "config.yaml").optimizer.lr
    except (OSError, ValueError, AttributeError):
        return "defaults"
    return f"defaults; recipe {recipe}: lr={lr:g}" if recipe else "defaults"


def protocol_lines(plan: Plan, arms: list[str], tuned: list[str], searched: int, target: float, whence: str) -> Lines:
    ruleset = plan.ruleset
    if ruleset.name == "oneshot":
        how = "**oneshot**: every optimizer at its YAML's defaults (a published recipe's where one applies), no tuning"
    elif ruleset.name == "lr":
        how = (
            f"**lr**: each optimizer's learning rate from the log grid {', '.join(LR_GRID)} at seed {SEARCH_SEED}, "
            f"{searched} steps; the best validation accuracy wins (a tie: the larger rate)"
        )
    else:
        how = (
            f"**budget:{ruleset.trials}**: {ruleset.trials} quasirandom trials per optimizer (Optuna's QMC sampler, "
            f"scrambled Sobol, seed {SEARCH_SEED}) over the search space its YAML declares, {searched} steps "
            "each; the best validation accuracy wins"
        )
    own = [a for a in arms if a not in tuned]
    lines: Lines = [
        "### Protocol",
        "",
        f"Tuning ruleset {how}. Then every optimizer runs the measured seeds at what it chose. "
        + (f"Self-tuning, at zero tuning budget: {', '.join(own)}. " if own else "")
        + f"Time to target: the first evaluation whose validation accuracy reaches {target:.4f} ({whence}); "
        "a run that never does is censored at its last evaluation (Kaplan-Meier median, log-rank test).",
    ]
    if ruleset.name == "budget":
        lines += ["", "Search spaces (each optimizer's `search:`):", ""]
        for arm in tuned:
            space = search_space(arm, plan.config_dir)
            lines.append(f"- {arm}: " + (", ".join(f"`{k}`: {v}" for k, v in space.items()) or "none declared"))
    return lines


def optimizers_verdict(runs: list[Run], plan: Plan) -> str:
    candidate = plan.candidate
    final = [r for r in runs if r.path.parent.name.startswith("final_")]
    tuning = [r for r in runs if not r.path.parent.name.startswith("final_")]
    last_steps = [train_row(r, -1).get("step", 0) for r in final if r.status == "completed"]
    searched = max((train_row(r, -1).get("step", 0) for r in tuning), default=plan.setting.search_steps)
    probe = searched if last_steps and min(last_steps) >= searched else min(last_steps, default=0)
    installed = [a for a in SELF_TUNING if any(r.settings.get("optimizer") == a for r in final)]
    tuned = [*OPTIMIZERS, *([candidate] if candidate else [])]
    arms = [*OPTIMIZERS, *installed, *([candidate] if candidate else [])]
    groups = {opt: completed(final, optimizer=opt) for opt in arms}
    target, whence = plan.target, plan.target_source
    if target is None:  # (a variant's section: its own runs set it)
        target = default_target(runs)
        whence = "AlgoPerf's: the median best validation accuracy of the best tuned baseline"
    target = 1.0 if target is None else target
    loss, auc, acc, times, rows = {}, {}, {}, {}, []
    for opt in arms:
        group = groups[opt]
        loss[opt] = [v for v in (row_at(r, "train", probe, "loss") for r in group) if v is not None]
        auc[opt] = [v for v in (train_loss_auc(r) for r in group) if v is not None]
        acc[opt] = values(group, "test/acc")
        times[opt] = [t for t in (reach(r, target) for r in final if r.settings.get("optimizer") == opt) if t]
        rows.append(
            [
                opt,
                chosen_text(group[0] if group else None),
                str(trials_of(tuning, opt)) if opt in tuned else "0 (self-tuning)",
                fmt(loss[opt], 4),
                fmt(auc[opt], 4),
                f"{sum(t.reached for t in times[opt])}/{len(times[opt])}",
                steps_text(median_time(times[opt])),
                seconds_text(median_time([t.in_seconds() for t in times[opt]])),
                fmt(acc[opt]),
            ]
        )
    header = ["optimizer", "measured at", "tuning runs", f"train loss @ {probe}", "train loss AUC", "reached target"]
    out: Lines = [
        *protocol_lines(plan, arms, tuned, searched, target, whence),
        "",
        "### Measurements",
        "",
        f"Train loss at step {probe} and its mean over the run (area under the train-loss curve / steps), mean "
        "[95% CI]; runs reaching the target and the median steps to it [95% CI] (runs that never reach it "
        "censored; 'never': the median is not reached) and seconds (an arm's seeds train as one batched model "
        "and share one clock: seconds compare arms, not seeds); test accuracy.",
        "",
        table([*header, "median steps to target", "median seconds", "test/acc"], rows),
        "",
    ]
    picture = sensitivity_plot(tuning, final, tuned, plan, searched)
    if picture:
        out += [f"![learning-rate sensitivity]({picture})", ""]
    out += ["### Verdict", ""]
    family = Family()
    for opt in ADAPTIVE:
        at_probe = family.compare(
            loss.get(opt, []), loss.get("sgd", []), higher=False, label=f"{opt}: train loss @ {probe} < sgd's"
        )
        overall = family.compare(
            auc.get(opt, []), auc.get("sgd", []), higher=False, label=f"{opt}: train-loss AUC < sgd's"
        )
        sooner = family.add(TimeComparison(times[opt], times["sgd"], label=f"{opt}: reaches the target before sgd"))
        out.append(
            lambda opt=opt, at_probe=at_probe, overall=overall, sooner=sooner: (
                f"- {opt} converges faster than sgd: lower train "
                f"loss at step {probe} ({fmt(loss.get(opt, []), 4)} vs {fmt(loss.get('sgd', []), 4)}; "
                f"{at_probe.effect()}): {mark(at_probe.holds)}; lower train loss over the run (AUC "
                f"{fmt(auc.get(opt, []), 4)} vs {fmt(auc.get('sgd', []), 4)}; {overall.effect()}): "
                f"{mark(overall.holds)}; reaches the target sooner ({sooner.effect()}): {mark(sooner.holds)}."
            )
        )
    if candidate:
        out += candidate_lines(family, candidate, loss, OPTIMIZERS, f"train loss at step {probe}", higher=False)
        out += candidate_lines(family, candidate, acc, OPTIMIZERS, "test/acc", points=True)
        for base in OPTIMIZERS:
            test = family.add(
                TimeComparison(times[candidate], times[base], f"candidate {candidate} reaches the target before {base}")
            )
            out.append(
                lambda base=base, test=test: (
                    f"- candidate {candidate} reaches the target before {base}: {test.effect()}: {test.outcome()}."
                )
            )
    return render(family, out)


def sensitivity_plot(tuning: list[Run], final: list[Run], arms: list[str], plan: Plan, searched: int) -> str | None:
    """DeepOBS's learning-rate sensitivity: each optimizer's best validation accuracy within `searched`
    steps against the rate of its tuning runs (seed SEARCH_SEED; a budget's trials as points, their other
    hyperparameters varying too), and at the rate it chose, its measured seeds at the same step: their
    mean and, as a bar, their range. Drawn in plan.folder; returns its link from report.md, or None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from backprop_lab.lab.report import _legend_below, _plain_ticks, _style

    if plan.folder is None or not tuning:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, arm in enumerate(arms):
        tried = sorted(
            (float(r.settings.get("optimizer.lr", "nan")), r.metrics["val/acc"])
            for r in completed(tuning, optimizer=arm)
            if isinstance(r.metrics.get("val/acc"), float)
        )
        if not tried:
            continue
        style = _style(i, len(tried))
        rates, accs = zip(*tried, strict=True)
        ax.plot(rates, accs, label=arm, **(style if plan.ruleset.name == "lr" else {**style, "linestyle": "none"}))
        seeds = [v for v in (best_until(r, searched) for r in completed(final, optimizer=arm)) if v is not None]
        rate = next((float(r.settings["optimizer.lr"]) for r in final if r.settings.get("optimizer") == arm
                     and "optimizer.lr" in r.settings), None)  # fmt: skip
        if seeds and rate is not None:
            mean = statistics.fmean(seeds)
            ax.errorbar([rate], [mean], yerr=[[mean - min(seeds)], [max(seeds) - mean]], color=style["color"],
                        marker="D", markersize=7, capsize=4, linestyle="none")  # fmt: skip
    ax.set_xscale("log")
    _plain_ticks(ax, log=False, log_x=True)
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"best validation accuracy within {searched} steps")
    ax.set_title(
        f"learning-rate sensitivity: the {plan.ruleset.label} tuning runs (seed {SEARCH_SEED})\n"
        "diamond: the measured seeds at the chosen rate (their mean; bar: their range)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    path = Path(plan.folder) / "lr_sensitivity.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return plan.link + path.name


def best_until(run: Run, step: int) -> float | None:
    """The best validation accuracy of a run up to `step` (the horizon of the tuning runs)."""
    found = [r["acc"] for r in metrics_rows(run.path) if r.get("split") == "val" and r.get("step", 0) <= step
             and isinstance(r.get("acc"), (int, float))]  # fmt: skip
    return max(found) if found else None


def median_steps(runs: list[Run], plan: Plan) -> dict[str, float]:
    """Each arm's Kaplan-Meier median steps to the target (inf: fewer than half its runs reach it): the
    times a performance profile compares."""
    final = [r for r in runs if r.path.parent.name.startswith("final_")]
    target = plan.target if plan.target is not None else default_target(runs)
    arms = dict.fromkeys(r.settings.get("optimizer", "") for r in final)
    found = {}
    for arm in arms:
        times = [
            t
            for t in (
                reach(r, target if target is not None else 1.0) for r in final if r.settings.get("optimizer") == arm
            )
            if t
        ]
        median = median_time(times)
        found[arm] = median[0] if median else math.inf
    return found
