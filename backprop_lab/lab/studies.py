"""`backprop-lab study NAME`: the sweeps behind one claim, then a report whose verdict is computed
from the measurements (means, Student-t CIs, Welch tests with the difference's CI, Holm-Bonferroni
over the study's tests: backprop_lab.lab.statistics), so a claim that does not hold says so.

Each sweep is an ordinary Hydra multirun of `backprop-lab train -m hydra/launcher=vectorized experiment=study_NAME ...`;
the report lists the exact commands, so every grid can be rerun by hand.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backprop_lab.lab.compare import Run, canonical, find_runs, metrics_rows, pooled
from backprop_lab.lab.statistics import Comparison, Family, area_under, mark, positive_interval, unjudged

SEEDS = 5  # seeds per setting (--seeds); --smoke: 2


# ------------------------------------------------------------------ reading the measurements
def completed(runs: list[Run], **settings: str) -> list[Run]:
    wanted = {k: canonical(v) for k, v in settings.items()}
    return [r for r in runs if r.status == "completed" and all(r.settings.get(k) == v for k, v in wanted.items())]


def values(runs: list[Run], metric: str) -> list[float]:
    return [r.metrics[metric] for r in runs if isinstance(r.metrics.get(metric), (int, float))]


def train_row(run: Run, which: int, stage: str | None = None) -> dict[str, Any]:
    """The first (0) or last (-1) train row of the run's final stage in metrics.jsonl."""
    rows = metrics_rows(run.path)
    stage = stage or (rows[-1]["stage"] if rows else None)
    train = [r for r in rows if r.get("stage") == stage and r.get("split") == "train"]
    return train[which] if train else {}


def row_at(run: Run, split: str, step: int, key: str) -> float | None:
    for r in metrics_rows(run.path):
        if r.get("split") == split and r.get("step") == step and r.get(key) is not None:
            return r[key]
    return None


def init_gradient_ratio(run: Run) -> float | None:
    """grad_norm of the first layer / grad_norm of the last layer at step 1 (the net at init)."""
    r = train_row(run, 0)
    norms = sorted((int(k.split("/")[1]), v) for k, v in r.items() if k.startswith("grad_norm/"))
    if not norms or not norms[-1][1]:
        return None
    return norms[0][1] / norms[-1][1]


def fmt(vals: list[float], digits: int = 3) -> str:
    s = pooled(list(vals))
    if s.mean is None:
        return "-"
    if s.ci_low is None:
        return f"{s.mean:.{digits}f} (n=1)"
    return f"{s.mean:.{digits}f} [{s.ci_low:.{digits}f}, {s.ci_high:.{digits}f}]"


Lines = list[Any]  # a verdict's lines: strings, or functions that render a test's line once the family is adjusted


def candidate_lines(
    family: Family,
    candidate: str,
    measured: dict[str, list[float]],
    baselines: list[str],
    what: str,
    higher: bool = True,
    points: bool = False,
) -> Lines:
    """One line per baseline: the candidate's difference on `what` with its 95% CI, the two-sided Welch
    p and its Holm-adjusted p, and whether it is better, worse, or not distinguishable."""
    lines: Lines = []
    for base in baselines:
        test = family.compare(measured.get(candidate, []), measured.get(base, []), higher=higher, points=points,
                              two_sided=True, label=f"candidate {candidate} vs {base}, {what}")  # fmt: skip

        def line(base: str = base, test: Comparison = test) -> str:
            if test.result is None:
                return f"- candidate {candidate} vs {base} ({what}): n too small for a test."
            return f"- candidate {candidate} vs {base} ({what}): {test.effect()}: {test.outcome()}."

        lines.append(line)
    return lines


def render(family: Family, lines: Lines) -> str:
    """The verdict's text: Holm-Bonferroni over the family first, then a summary table of the claims,
    then every line (the measurements, and each claim in full)."""
    family.adjust()
    rendered = [line() if callable(line) else line for line in lines]
    return "\n".join(["### Summary", "", family.summary(), "", *rendered, "", family.note()])


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# ------------------------------------------------------------------ the four studies
ACTS = ["sigmoid", "tanh", "relu", "leaky_relu", "gelu", "selu"]
RELU_FAMILY = ["relu", "leaky_relu", "gelu", "selu"]


def activations_sweeps(
    run_sweep: Callable[..., Path], smoke: bool, candidate: str | None, seeds: str, setting: Setting
) -> None:
    acts = [*ACTS, *([candidate] if candidate else [])]  # model.init=null: each activation's own init
    run_sweep("grid", [f"act={','.join(acts)}", "model.init=null,torch", f"seed={seeds}"])


def activations_verdict(runs: list[Run], candidate: str | None = None) -> str:
    rows: list[list[str]] = []
    ratio: dict[str, list[float]] = {}
    acc: dict[str, list[float]] = {}
    for act in [*ACTS, *([candidate] if candidate else [])]:
        for init in ("null", "torch"):
            group = completed(runs, act=act, **{"model.init": init})
            ratios = [v for v in (init_gradient_ratio(r) for r in group) if v]
            if init == "null":
                ratio[act], acc[act] = ratios, values(group, "test/acc")
            shown = f"{math.exp(statistics.fmean(math.log(v) for v in ratios)):.2e}" if ratios else "-"
            rows.append([act, "matched" if init == "null" else "torch default", shown, fmt(values(group, "test/acc"))])
    out: Lines = [
        "### Measurements",
        "",
        "First-layer / last-layer gradient norm at step 1 (geometric mean over seeds), "
        "and test accuracy (mean [95% CI]).",
        "",
        table(["act", "init", "grad ratio layer 0 / output at init", "test/acc"], rows),
        "",
        "### Verdict",
        "",
    ]
    geo = {a: math.exp(statistics.fmean(math.log(v) for v in ratio[a])) for a in ratio if ratio[a]}
    starves = "sigmoid" in geo and "relu" in geo and geo["sigmoid"] * 10 <= geo["relu"]
    family = Family()
    family.claim(
        "sigmoid's first/last gradient ratio at init ≥ 10× below relu's",
        lambda: starves,
        f"{geo.get('sigmoid', float('nan')):.2e} vs {geo.get('relu', float('nan')):.2e}",
    )
    out.append(
        f"- Saturating activations starve early layers of gradient (sigmoid's first/last gradient ratio at "
        f"least 10x below relu's: {geo.get('sigmoid', float('nan')):.2e} vs {geo.get('relu', float('nan')):.2e}): "
        f"{mark(starves)}."
    )
    for act in RELU_FAMILY:
        test = family.compare(acc.get(act, []), acc.get("sigmoid", []), points=True, label=f"{act} > sigmoid, test/acc")
        out.append(
            lambda act=act, test=test: (
                f"- {act} trains where sigmoid does not (test/acc {fmt(acc.get(act, []))} > "
                f"sigmoid {fmt(acc.get('sigmoid', []))}; {test.effect()}): {mark(test.holds)}."
            )
        )
    for act in ("tanh", "relu"):
        matched = values(completed(runs, act=act, **{"model.init": "null"}), "test/acc")
        default = values(completed(runs, act=act, **{"model.init": "torch"}), "test/acc")
        test = family.compare(matched, default, points=True, label=f"{act}: matched init > torch's, test/acc")
        out.append(
            lambda act=act, test=test, matched=matched, default=default: (
                f"- Matched init beats torch's default "
                f"init for {act} ({fmt(matched)} vs {fmt(default)}; {test.effect()}): {mark(test.holds)}."
            )
        )
    if candidate:
        out += candidate_lines(family, candidate, acc, ACTS, "test/acc, each with its matched init", points=True)
    return render(family, out)


# Each regularizer in its own sweep, so its strength applies to it alone.
REGULARIZERS = {
    "none": [],
    "l1": ["regularizer.l1=0.0001"],
    "l2": ["regularizer.l2=0.001"],
    "dropout": ["regularizer.dropout=0.3"],
    "batchnorm": [],
    "[l2,dropout]": ["regularizer.l2=0.001", "regularizer.dropout=0.3"],
}


def regularization_sweeps(
    run_sweep: Callable[..., Path], smoke: bool, candidate: str | None, seeds: str, setting: Setting
) -> None:
    for reg, strengths in _regularizers(candidate).items():
        label = reg.strip("[]").replace(",", "+")
        run_sweep(label, [f"regularizer={reg}", *strengths, f"seed={seeds}"])


def _regularizers(candidate: str | None) -> dict[str, list[str]]:
    """The study's regularizers, and the candidate at the coefficients of its own YAML."""
    return {**REGULARIZERS, **({candidate: []} if candidate else {})}


def _final_gap(run: Run) -> float | None:
    rows = [r for r in metrics_rows(run.path) if r.get("split") == "val" and "gap/acc" in r]
    return rows[-1]["gap/acc"] if rows else None


def regularization_verdict(runs: list[Run], candidate: str | None = None) -> str:
    gaps, accs, rows = {}, {}, []
    for reg in _regularizers(candidate):
        group = [r for r in runs if r.status == "completed" and _reg_choice(r) == reg]
        gaps[reg] = [g for g in (_final_gap(r) for r in group) if g is not None]
        accs[reg] = values(group, "test/acc")
        rows.append(
            [
                reg,
                fmt([v for v in (train_row(r, -1).get("acc") for r in group) if v is not None]),
                fmt(gaps[reg]),
                fmt(accs[reg]),
            ]
        )
    out: Lines = [
        "### Measurements",
        "",
        "At the last step: train accuracy (last window), train - validation accuracy gap; "
        "test accuracy of the best-validation weights (mean [95% CI]).",
        "",
        table(["regularizer", "train acc", "gap", "test/acc"], rows),
        "",
        "### Verdict",
        "",
    ]
    family = Family()
    for reg in list(REGULARIZERS)[1:]:
        narrower = family.compare(gaps[reg], gaps["none"], higher=False, points=True, label=f"{reg}: gap < none's")
        higher = family.compare(accs[reg], accs["none"], points=True, label=f"{reg}: test/acc > none's")
        out.append(
            lambda reg=reg, narrower=narrower, higher=higher: (
                f"- {reg} reduces overfitting (gap {fmt(gaps[reg])} < "
                f"none {fmt(gaps['none'])}; {narrower.effect()}): {mark(narrower.holds)}; raises test accuracy "
                f"({fmt(accs[reg])} vs {fmt(accs['none'])}; {higher.effect()}): {mark(higher.holds)}."
            )
        )
    if candidate:
        out += candidate_lines(family, candidate, accs, list(REGULARIZERS), "test/acc", points=True)
        out += candidate_lines(
            family, candidate, gaps, list(REGULARIZERS), "train - val accuracy gap", higher=False, points=True
        )
    return render(family, out)


def _reg_choice(run: Run) -> str:
    return run.settings.get("regularizer", "none")


OPTIMIZERS = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"]
LR_GRID = ["0.0003", "0.001", "0.003", "0.01", "0.03", "0.1", "0.3"]
ADAPTIVE = ["adam", "rmsprop", "adagrad"]


def optimizers_sweeps(
    run_sweep: Callable[..., Path], smoke: bool, candidate: str | None, seeds: str, setting: Setting
) -> None:
    grid = LR_GRID[2:4] if smoke else LR_GRID
    optimizers = [*OPTIMIZERS, *([candidate] if candidate else [])]  # the candidate's lr: the same search
    search = run_sweep(
        "lr_search",
        [
            f"optimizer={','.join(optimizers)}",
            f"optimizer.lr={','.join(grid)}",
            "seed=100",
            *([] if smoke else [f"trainer.max_steps={setting.search_steps}"]),  # (--smoke's own steps otherwise)
        ],
        note=f"learning-rate search: one seed (100, not used below), {setting.search_steps} steps, best val/acc "
        "wins, a tie the larger rate",
    )
    runs = find_runs([search])
    for opt in optimizers:
        tried = [
            (r.metrics.get("val/acc", -1.0), r.settings.get("optimizer.lr", "")) for r in completed(runs, optimizer=opt)
        ]
        lr = best_rate(tried) if tried else "0.001"
        run_sweep(f"final_{opt}", [f"optimizer={opt}", f"optimizer.lr={lr}", f"seed={seeds}"])


def best_rate(tried: list[tuple[float, str]]) -> str:
    """The rate of the best (validation accuracy, rate) pair; a tie goes to the larger rate, compared as
    numbers ("1e-3" < "0.01")."""
    return max(tried, key=lambda t: (t[0], float(t[1] or 0)))[1]


TARGET_FRACTION = 0.95  # time-to-result target: this fraction of the best baseline's validation accuracy


def time_to_target(run: Run, target: float) -> tuple[float, float] | None:
    """(steps, seconds) at the first evaluation whose validation accuracy reaches `target`; None if none did."""
    for r in metrics_rows(run.path):
        if r.get("split") == "val" and isinstance(r.get("acc"), (int, float)) and r["acc"] >= target:
            return float(r["step"]), float(r.get("elapsed_s") or 0.0)
    return None


def train_loss_auc(run: Run) -> float | None:
    """The mean training loss over the whole run: the area under its logged train-loss curve / steps."""
    rows = [r for r in metrics_rows(run.path) if r.get("split") == "train" and isinstance(r.get("loss"), (int, float))]
    return area_under([r["step"] for r in rows], [r["loss"] for r in rows])


def positive(vals: list[float]) -> str:
    """Geometric mean [95% CI on the log scale] of positive values: bounds never below zero."""

    def num(v: float) -> str:
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"

    found = positive_interval(vals)
    if found is None:
        return f"{num(vals[0])} (n=1)" if len(vals) == 1 else "-"
    return f"{num(found[0])} [{num(found[1])}, {num(found[2])}]"


def optimizers_verdict(runs: list[Run], candidate: str | None = None) -> str:
    final = [r for r in runs if "lr_search" not in str(r.path)]
    last_steps = [train_row(r, -1).get("step", 0) for r in final if r.status == "completed"]
    searched = max((train_row(r, -1).get("step", 0) for r in runs if "lr_search" in str(r.path)), default=1000)
    probe = searched if last_steps and min(last_steps) >= searched else min(last_steps, default=0)
    names = [*OPTIMIZERS, *([candidate] if candidate else [])]
    groups = {opt: completed(final, optimizer=opt) for opt in names}
    best_val = {opt: statistics.fmean(values(g, "val/acc")) for opt, g in groups.items() if values(g, "val/acc")}
    baseline = max((o for o in OPTIMIZERS if o in best_val), key=lambda o: best_val[o], default=None)
    target = TARGET_FRACTION * best_val[baseline] if baseline else 1.0
    loss, auc, acc, rows = {}, {}, {}, []
    for opt in names:
        group = groups[opt]
        lr = group[0].settings.get("optimizer.lr", "-") if group else "-"
        loss[opt] = [v for v in (row_at(r, "train", probe, "loss") for r in group) if v is not None]
        auc[opt] = [v for v in (train_loss_auc(r) for r in group) if v is not None]
        acc[opt] = values(group, "test/acc")
        reached = [t for t in (time_to_target(r, target) for r in group) if t is not None]
        rows.append(
            [
                opt,
                lr,
                fmt(loss[opt], 4),
                fmt(auc[opt], 4),
                f"{len(reached)}/{len(group)}",
                positive([t[0] for t in reached]),
                positive([t[1] for t in reached]),
                fmt(acc[opt]),
            ]
        )
    seeds = sorted({r.seed for r in final if r.seed is not None})
    out: Lines = [
        "### Protocol",
        "",
        f"Each optimizer's learning rate was picked from the log grid {', '.join(LR_GRID)} by the best validation "
        f"accuracy of a {searched}-step run with seed 100 (a tie: the larger rate). The comparison then runs seeds "
        f"{', '.join(map(str, seeds))} at that rate. Time to result: the first evaluation reaching "
        f"{TARGET_FRACTION:.0%} of the best baseline's "
        f"mean best validation accuracy ({baseline}: {best_val.get(baseline or '', float('nan')):.4f}, "
        f"target {target:.4f}), as AlgoPerf sets its targets.",
        "",
        "### Measurements",
        "",
        f"Train loss at step {probe} and its mean over the run (area under the train-loss curve / steps), mean "
        "[95% CI]; runs reaching the target, and their steps and seconds to it (geometric mean [95% CI on the log "
        "scale]); test accuracy.",
        "",
        table(
            [
                "optimizer",
                "lr",
                f"train loss @ {probe}",
                "train loss AUC",
                "reached",
                "steps to target",
                "seconds to target",
                "test/acc",
            ],
            rows,
        ),  # fmt: skip
        "",
        "### Verdict",
        "",
    ]
    family = Family()
    for opt in ADAPTIVE:
        at_probe = family.compare(
            loss.get(opt, []), loss.get("sgd", []), higher=False, label=f"{opt}: train loss @ {probe} < sgd's"
        )
        overall = family.compare(
            auc.get(opt, []), auc.get("sgd", []), higher=False, label=f"{opt}: train-loss AUC < sgd's"
        )
        out.append(
            lambda opt=opt, at_probe=at_probe, overall=overall: (
                f"- {opt} converges faster than sgd: lower train "
                f"loss at step {probe} ({fmt(loss.get(opt, []), 4)} vs {fmt(loss.get('sgd', []), 4)}; "
                f"{at_probe.effect()}): {mark(at_probe.holds)}; lower train loss over the run (AUC "
                f"{fmt(auc.get(opt, []), 4)} vs {fmt(auc.get('sgd', []), 4)}; {overall.effect()}): "
                f"{mark(overall.holds)}."
            )
        )
    if candidate:
        out += candidate_lines(family, candidate, loss, OPTIMIZERS, f"train loss at step {probe}", higher=False)
        out += candidate_lines(family, candidate, acc, OPTIMIZERS, "test/acc", points=True)
    return render(family, out)


BUDGETS = ["100", "300", "1000"]
SMOKE_BUDGETS = ["20", "40", "80"]
STRATEGIES = [
    ("scratch", {"pretrain": "none"}),
    ("frozen", {"pretrain": "supervised", "pretrain.finetune": "freeze"}),
    ("full fine-tune", {"pretrain": "supervised", "pretrain.finetune": "full"}),
    ("autoencoder", {"pretrain": "autoencoder", "pretrain.finetune": "full"}),
]


def pretraining_sweeps(
    run_sweep: Callable[..., Path], smoke: bool, candidate: str | None, seeds: str, setting: Setting
) -> None:
    budgets = f"data.n_train={','.join(SMOKE_BUDGETS if smoke else BUDGETS)}"
    short = ["pretrain.steps=8"] if smoke else []
    run_sweep("scratch", ["pretrain=none", budgets, f"seed={seeds}"])
    run_sweep("supervised", ["pretrain=supervised", "pretrain.finetune=freeze,full", budgets, f"seed={seeds}", *short])
    run_sweep("autoencoder", ["pretrain=autoencoder", "pretrain.finetune=full", budgets, f"seed={seeds}", *short])


def pretraining_verdict(runs: list[Run], candidate: str | None = None) -> str:
    acc: dict[tuple[str, str], list[float]] = {}
    budgets = sorted({r.settings["data.n_train"] for r in runs if "data.n_train" in r.settings}, key=int)
    for name, settings in STRATEGIES:
        for n in budgets:
            group = [
                r
                for r in completed(runs, **{"data.n_train": n, **settings})
                if name != "scratch" or r.settings.get("pretrain") == "none"
            ]
            acc[name, n] = values(group, "test/acc")
    rows = [[name] + [fmt(acc[name, n]) for n in budgets] for name, _ in STRATEGIES]
    source = next(
        (r.settings["pretrain.data"] for r in runs if r.settings.get("pretrain.data", "null") != "null"), None
    )
    target = next((r.settings["data"] for r in runs if r.settings.get("data")), None)
    task = (
        (
            f"Test accuracy on {target or 'the run data'} (mean [95% CI]) by label budget; pretraining used {source} "
            "(all its labels) or, for the autoencoder, its inputs only."
        )
        if source
        else (
            "Test accuracy on classes 5-9 (mean [95% CI]) by label budget; pretraining used "
            "classes 0-4 (all their labels) or, for the autoencoder, their inputs only."
        )
    )
    out: Lines = [
        "### Measurements",
        "",
        task,
        "",
        table(["strategy"] + [f"{n} labels" for n in budgets], rows),
        "",
        "### Verdict",
        "",
    ]
    family = Family()
    tested: dict[str, list[tuple[str, Comparison]]] = {}
    for name, _ in STRATEGIES[1:]:
        tests = tested[name] = [
            (n, family.compare(acc[name, n], acc["scratch", n], points=True, label=f"{name} > scratch, {n} labels"))
            for n in budgets
        ]
        out.append(
            lambda name=name, tests=tests: (
                f"- {name} beats scratch: "
                + "; ".join(f"{n} labels {mark(t.holds)} ({t.effect()})" for n, t in tests)
                + "."
            )
        )
    gains = {
        n: (statistics.fmean(acc["full fine-tune", n]) - statistics.fmean(acc["scratch", n]))
        for n in budgets
        if acc["full fine-tune", n] and acc["scratch", n]
    }
    if budgets and len(gains) == len(budgets):
        largest_first = gains[budgets[0]] >= max(gains.values())
        fewest = tested["full fine-tune"][0][1]  # a gain that is there at all: its test holds
        family.claim(
            "full fine-tune's gain largest at the fewest labels",
            lambda: largest_first and fewest.holds,
            ", ".join(f"{n}: {100 * g:+.1f} pp" for n, g in gains.items()),
        )
        out.append(
            lambda: (
                f"- The gain of full fine-tuning is largest when labels are fewest "
                f"({', '.join(f'{n}: {g:+.3f}' for n, g in gains.items())}; and a gain at {budgets[0]} labels, "
                f"Holm p = {'-' if fewest.p_holm is None else f'{fewest.p_holm:.3g}'}): "
                f"{mark(largest_first and fewest.holds)}."
            )
        )
    return render(family, out)


@dataclass(frozen=True)
class Setting:
    """Where a study measures its claim: a preset (configs/experiment/) and overrides for every sweep
    (pretrain.* ones only for the sweeps that pretrain)."""

    experiment: str
    description: str
    overrides: tuple[str, ...] = ()
    search_steps: int = 1000  # the optimizers study: steps of each learning-rate search run


@dataclass
class Study:
    claim: str
    sweeps: Callable[..., None]  # (run_sweep, smoke, candidate, seeds, setting)
    verdict: Callable[[list[Run], str | None], str]
    group: str | None  # the config group of a --candidate (None: the study takes none)
    real: Setting  # --setting real: the claim on a real image set


SETTINGS = ("mnist1d", "real")  # --setting


def setting_of(name: str, setting: str) -> Setting:
    """Study `name`'s setting: mnist1d (its own preset on MNIST-1D) or real (STUDIES[name].real)."""
    if setting == "real":
        return STUDIES[name].real
    return Setting(f"study_{name}", "MNIST-1D (generated locally by the mnist1d package)")


STUDIES: dict[str, Study] = {
    "activations": Study(
        "Saturating activations starve early layers of gradient; ReLU-family activations fix it.",
        activations_sweeps,
        activations_verdict,
        "act",
        Setting(
            "study_activations_real",
            "MNIST, a 5 x 100 MLP trained with plain SGD (the deep nets of Glorot & Bengio 2010, narrowed)",
        ),
    ),
    "regularization": Study(
        "Regularizers (L1, L2, dropout, batch norm, combined) reduce overfitting.",
        regularization_sweeps,
        regularization_verdict,
        "regularizer",
        Setting(
            "study_regularization_real",
            "Fashion-MNIST with 1000 labels, a 2 x 256 MLP that overfits them (the few-label regime of "
            "Srivastava et al. 2014)",
        ),
    ),
    "optimizers": Study(
        "Adaptive optimizers (Adam, RMSprop, Adagrad) converge faster than SGD.",
        optimizers_sweeps,
        optimizers_verdict,
        "optimizer",
        Setting(
            "study_optimizers_real",
            "MNIST, the two-hidden-layer ReLU MLP of Kingma & Ba 2015 at batch 128 (narrowed to 256 units)",
            search_steps=500,
        ),
    ),
    "pretraining": Study(
        "Pretraining and transfer help when labels are few.",
        pretraining_sweeps,
        pretraining_verdict,
        None,
        Setting(
            "study_pretraining_real",
            "pretrain on Fashion-MNIST (all its labels), fine-tune on MNIST with 100, 300 or 1000 labels",
            ("pretrain.data=fashion_mnist",),
        ),
    ),
}

# --smoke: the same sweeps in miniature, for tests (a few steps on a small MNIST-1D)
SMOKE = ["trainer.max_steps=8", "trainer.eval_every=4", "trainer.log_every=4", "data.num_samples=1000"]


def count_jobs(train_args: list[str]) -> int | None:
    """How many jobs `backprop-lab train -m TRAIN_ARGS` launches (Hydra's own expansion of the sweep)."""
    from backprop_lab.run.job_check import job_overrides

    overrides = [a for a in train_args if not a.startswith("-") and "=" in a]
    jobs = job_overrides(overrides, multirun=True)
    return len(jobs) if jobs is not None else None


class SweepProgress:
    """While a study's sweep runs in this process (its output going to a log): jobs done of the total,
    elapsed and an estimate, read from the jobs' summary.json every second, on a thread of its own. A
    bar on a terminal; elsewhere a line each time the count moves."""

    def __init__(self, label: str, folder: Path, total: int | None):
        import threading

        from rich.console import Console

        self.label, self.folder, self.total = label, folder, total
        self.console = Console(file=sys.stdout, highlight=False)  # (sys.stdout before the sweep's redirect)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def done(self) -> int:
        import json

        count = 0
        for path in self.folder.glob("*/summary.json"):
            try:
                count += json.loads(path.read_text()).get("status") != "running"
            except (OSError, ValueError):
                continue
        return count

    def line(self, done: int) -> str:
        elapsed = time.time() - self.started
        total = self.total or "?"
        left = (
            f", ~{elapsed / done * (self.total - done):.0f} s left" if done and self.total and done < self.total else ""
        )
        return f"{self.label}: {done}/{total} jobs done, {elapsed:.0f} s{left}"

    def _watch(self) -> None:
        shown = -1
        while not self.stop.wait(1.0):
            done = self.done()
            if self.bar is not None:
                self.bar.update(self.task, completed=done)
            elif done != shown:
                shown = done
                self.console.print(self.line(done), markup=False)

    def __enter__(self) -> SweepProgress:
        from rich.markup import escape
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.started = time.time()
        self.bar: Progress | None = None
        if self.console.is_terminal and self.total:  # a bar: jobs done of the total, elapsed, estimate
            columns = (TextColumn(escape(self.label)), BarColumn(), MofNCompleteColumn(), TextColumn("jobs"))
            self.bar = Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=self.console)
            self.task = self.bar.add_task(self.label, total=self.total)
            self.bar.start()
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done())
            self.bar.stop()
        else:
            self.console.print(self.line(self.done()).replace("jobs done", "jobs ended"), markup=False)


def show_summary(report: Path) -> None:
    """The end of a study on the terminal: its banner if a miniature, the claims' table, the report's path."""
    from rich.table import Table
    from rich.text import Text

    from backprop_lab.console import console

    text = report.read_text()
    banner = [line.strip("> *") for line in text.splitlines() if line.startswith("> **miniature")]
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("| claim |")), len(lines))
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    claims = [line.strip("|").split(" | ") for line in lines[first + 2 : end]]  # (past the header and its rule)
    if claims:
        table = Table(title="claims (Holm-adjusted p)", show_lines=False)
        for column in ("claim", "difference [95% CI]", "Holm p", "verdict"):
            table.add_column(column, justify="right" if column == "Holm p" else "left", overflow="fold")
        for claim in claims:
            table.add_row(*(Text(cell.strip().replace("**", "")) for cell in claim))
        console.print(table)
    for line in banner:
        console.print(line, markup=False)
    console.print(f"report: {report}", markup=False)


def _sweep_in_process(train_args: list[str], log_path: Path) -> int:
    """`backprop-lab train TRAIN_ARGS` in this process (no interpreter and torch start per sweep), its
    output into `log_path`; returns its exit status."""
    import contextlib
    import logging.config

    from backprop_lab.run.app import launch

    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            code = launch(train_args)
        except SystemExit as exit:  # Hydra's own errors end in sys.exit
            code = exit.code if isinstance(exit.code, int) else 1
        finally:  # Hydra's log handlers write to this file: close them with it
            logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    return code


def candidate_problem(study: str, candidate: str, config_dir: Path | None) -> str | None:
    """Why `--candidate GROUP=OPTION` cannot join this study, as one line; None when it can."""
    from backprop_lab.run.job_check import check_composition, compose_train

    group, _, option = candidate.partition("=")
    wanted = STUDIES[study].group
    if wanted is None:
        return f"--candidate: study {study} takes no candidate (activations, optimizers and regularization do)"
    if group != wanted or not option or "," in option:
        return f"--candidate={candidate} is not valid: study {study} takes one option of '{wanted}', e.g. {wanted}=mine"
    problem = check_composition(config_dir, [candidate])
    if problem:
        return f"--candidate={candidate}: {problem}"
    if study == "optimizers" and "lr" not in compose_train([candidate], config_dir).optimizer:
        return f"--candidate={candidate}: its YAML has no lr, which the optimizers study tunes (add lr: 0.001)"
    return None


def setting_problem(name: str, setting: str, extra: list[str], config_dir: Path | None) -> str | None:
    """Why the study's runs cannot start, as one line, before any sweep: an override its config refuses
    (Hydra's message, or the value checks every run makes), or data files (and pretraining data) that
    cannot be read, naming data.root. Nothing is downloaded unless data.download=true. None: they can."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from backprop_lab.data.datasets import load_arrays
    from backprop_lab.errors import RefusedError
    from backprop_lab.run.job_check import check_composition, compose_train
    from backprop_lab.run.training import registered_names
    from backprop_lab.run.validate import validate

    where = setting_of(name, setting)
    single = [
        o
        for o, p in zip(extra, OverridesParser.create().parse_overrides(extra), strict=True)
        if not p.is_sweep_override()
    ]  # fmt: skip  (a sweep of the user's own is the sweeps' to expand)
    overrides = [f"experiment={where.experiment}", *(["pretrain=supervised"] if name == "pretraining" else [])]
    overrides += [*where.overrides, *single]
    try:
        cfg = compose_train(overrides, config_dir)
    except Exception:  # Hydra's or OmegaConf's refusal of an override: check_composition makes it one line
        return check_composition(config_dir, overrides) or f"the overrides {extra} do not compose"
    values = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(values, dict)
    try:
        if not any(isinstance(node, dict) and node.get("_target_") for node in values.values()):
            validate(values, registered_names)  # (options of the user's own: each run checks them)
        if cfg.data.name == "mnist1d" and not cfg.pretrain.get("data"):
            return None  # (MNIST-1D is generated locally)
        load_arrays(cfg.data)
        if cfg.pretrain.get("data"):
            from backprop_lab.run.pretrain import pretrain_data

            load_arrays(pretrain_data(cfg))
    except RefusedError as err:
        return str(err) if setting == "mnist1d" else f"--setting {setting}: {err}"
    return None


def run_study(
    name: str,
    out: Path,
    extra: list[str],
    smoke: bool,
    report_only: bool = False,
    launcher: str = "vectorized",
    candidate: str | None = None,
    config_dir: Path | None = None,
    seeds: int | None = None,
    setting: str = "mnist1d",
) -> Path:
    """Run the study's sweeps into `out` (unless `report_only`), then write its report there.
    The vectorized launcher trains each setting's seeds as one batched model. `candidate`
    (GROUP=OPTION, shipped or from `config_dir`) joins the study under its protocol. `seeds`: per
    setting (default SEEDS, 2 with `smoke`). `setting`: mnist1d or real (setting_of)."""
    import json

    from backprop_lab.lab.report import write_report

    study = STUDIES[name]
    out.mkdir(parents=True, exist_ok=True)
    commands: list[str] = []
    commands_file = out / "commands.md"
    started = time.time()
    setup = out / "study.json"  # what --report-only needs to recompute the same verdict
    where = setting_of(name, setting)
    small = None if report_only else miniature(where, smoke, seeds or (2 if smoke else SEEDS), extra, config_dir)
    if report_only and setup.is_file():
        saved = json.loads(setup.read_text())
        candidate = candidate or saved.get("candidate")
        setting = saved.get("setting", setting)
        where = setting_of(name, setting)
        small, extra = saved.get("miniature"), saved.get("overrides", extra)
    elif not report_only:
        chosen = {
            "study": name,
            "setting": setting,
            "candidate": candidate,
            "config_dir": str(config_dir or ""),
            "overrides": extra,
            "miniature": small,  # (None: the study's own protocol ran)
        }
        setup.write_text(json.dumps(chosen))
    if small:
        print(f"[{name}] {small}", flush=True)
    option = candidate.partition("=")[2] if candidate else None
    own = ["--config-dir", str(config_dir.resolve())] if config_dir is not None else []

    def run_sweep(label: str, overrides: list[str], note: str | None = None) -> Path:
        folder = out / label
        staged = not any(o == "pretrain=none" for o in overrides)  # pretrain.* overrides only where there is a stage
        own_data = setting != "mnist1d" or any(o.startswith("data=") for o in extra)
        smoke_args = [a for a in SMOKE if not (own_data and a.startswith("data.num_samples"))] if smoke else []
        args = [
            "train",
            "-m",
            *own,
            f"hydra/launcher={launcher}",
            f"experiment={where.experiment}",
            *overrides,
            *smoke_args,
            *[e for e in [*where.overrides, *extra] if staged or not e.startswith("pretrain.")],
        ]
        shown = "backprop-lab " + " ".join(f"'{a}'" if "[" in a else a for a in args)
        commands.append(f"- `{shown}`" + (f" ({note})" if note else ""))
        commands_file.write_text("\n".join(commands) + "\n")
        print(f"[{name}] {label}: {shown}", flush=True)
        with SweepProgress(f"[{name}] {label}", folder, count_jobs(args[2:])):
            code = _sweep_in_process([*args[1:], f"hydra.sweep.dir={folder}"], out / f"{label}.log")
        if code == 130:  # Ctrl-C / SIGTERM: the runs checkpointed and stopped; so does the study
            raise KeyboardInterrupt
        if code != 0:
            print(f"[{name}] {label}: some runs did not complete (see {out / (label + '.log')})", flush=True)
        return folder

    if report_only:
        commands = commands_file.read_text().splitlines() if commands_file.is_file() else []
    else:
        count = seeds or (2 if smoke else SEEDS)
        study.sweeps(run_sweep, smoke, option, ",".join(str(seed) for seed in range(count)), where)
    runs = find_runs([out])
    wall = "" if report_only else f"\n\nWall time of the sweeps: {time.time() - started:.0f} s."
    entered = f"**Candidate:** `{candidate}`, under the study's own protocol.\n\n" if candidate else ""
    measured = f"**Setting:** {setting_line(setting, where, extra, runs)}\n\n"
    judged = study.verdict(runs, option)
    banner = f"> **{small}**\n\n" if small else ""
    verdict = (
        f"{banner}**Claim:** {study.claim}\n\n{measured}{entered}{unjudged(judged) if small else judged}"
        + "\n\n### Sweeps (Hydra multiruns)\n\n"
        + "\n".join(commands)
        + wall
        + "\n\n"
        + reproduce(name, out, runs)
    )
    return write_report([out], out, ["test/acc"], title=f"Study: {name}", verdict=verdict)


def miniature(where: Setting, smoke: bool, seeds: int, extra: list[str], config_dir: Path | None) -> str | None:
    """The banner of a study run with fewer seeds or steps than its protocol; None for the protocol."""
    from backprop_lab.run.job_check import compose_train

    protocol = compose_train([f"experiment={where.experiment}"], config_dir).trainer.max_steps
    given = [o.split("=", 1)[1] for o in [*(SMOKE if smoke else []), *extra] if o.startswith("trainer.max_steps=")]
    steps = int(given[-1]) if given and given[-1].isdigit() else protocol
    if not smoke and seeds >= SEEDS and (protocol is None or steps >= protocol):
        return None
    return (
        f"miniature: {seeds} seeds x {steps} steps (the protocol: {SEEDS} seeds x {protocol} steps); "
        "it tests the pipeline and is no evidence for or against the claim"
    )


def setting_line(setting: str, where: Setting, extra: list[str], runs: list[Run]) -> str:
    """What the runs were measured on: the preset's description, or, where the user's overrides replace
    its data or model, what the runs themselves record instead."""
    ran = next((r.settings for r in runs if r.settings.get("data")), {})
    own = " ".join(extra)
    if not any(o.lstrip("+").startswith(("data=", "data.path=", "model=")) for o in extra):  # (data.root: where)
        return f"{setting}: {where.description} (`experiment={where.experiment}`" + (f" `{own}`)." if own else ").")
    measured = ", ".join(f"{k}={ran[k]}" for k in ("data", "model") if k in ran)
    return (
        f"your own: {measured or 'as your overrides say'}, from `{own}` on the protocol of "
        f"`experiment={where.experiment}` (its {setting} data and model replaced)."
    )


def reproduce(name: str, out: Path, runs: list[Run]) -> str:
    """What the numbers were measured with (from the runs' own summary.json) and how to get them again."""
    import json

    summaries = []
    for run in runs:
        try:
            summaries.append(json.loads((run.path / "summary.json").read_text()))
        except (OSError, ValueError):
            continue
    versions: dict[str, str] = next((s["versions"] for s in summaries if s.get("versions")), {})
    devices = sorted({str(s.get("device")) for s in summaries if s.get("device")})
    seeds = sorted({r.seed for r in runs if r.seed is not None})
    shown = ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("backprop-lab", "torch", "python", "hydra-core"))
    return "\n".join(
        [
            "### Reproduce",
            "",
            f"- Measured with {shown or 'unknown versions'}, on {', '.join(devices) or 'an unknown device'}; "
            f"{len(runs)} runs, seeds {', '.join(map(str, seeds))}.",
            "- The sweeps above, in that order, rerun every number; the report is computed from the run folders:",
            f"  `backprop-lab study {name} --report-only --out {out}` recomputes this verdict from them.",
        ]
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="backprop-lab study", description="Run a study's sweeps, then its report.")
    parser.add_argument("name", help=f"one of: {', '.join(STUDIES)}")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run (e.g. trainer.device=cuda)")
    parser.add_argument("--out", type=Path, help="folder (default: studies/NAME/DATE_TIME)")
    parser.add_argument("--smoke", action="store_true", help="a miniature of the same sweeps (a few steps each)")
    parser.add_argument(
        "--seeds", type=int, help=f"seeds per setting, at least 2 (default {SEEDS}; --smoke: 2)", metavar="N"
    )
    parser.add_argument(
        "--setting",
        default="mnist1d",
        choices=SETTINGS,
        help="where the claim is measured: MNIST-1D (default), or a real image set per study (docs/studies.md)",
    )
    parser.add_argument("--report-only", action="store_true", help="recompute the report of an existing --out folder")
    parser.add_argument(
        "--candidate",
        metavar="GROUP=OPTION",
        help="an option to put against the study's baselines: act=, optimizer= or regularizer= (yours: --config-dir)",
    )
    parser.add_argument("--config-dir", type=Path, help="a folder of your own options (as for train --config-dir)")
    parser.add_argument(
        "--launcher",
        default="vectorized",
        choices=["vectorized", "basic", "joblib"],
        help="how each sweep runs: seeds as one batched model (default), one by one, or in parallel",
    )
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options
    if args.name not in STUDIES:
        print(f"error: study '{args.name}' does not exist; choose one of: {', '.join(STUDIES)}", file=sys.stderr)
        return 2
    if args.report_only and (args.out is None or not args.out.is_dir()):
        print("error: --report-only needs --out, an existing study folder", file=sys.stderr)
        return 2
    folders = [o for o in args.overrides if o.lstrip("+~").startswith(("hydra.run.dir=", "hydra.sweep."))]
    if folders:
        print(
            f"error: {folders[0]} is not valid for a study: its sweeps go under --out "
            f"(backprop-lab study {args.name} --out DIR)",
            file=sys.stderr,
        )
        return 2
    if args.seeds is not None and args.seeds < 2:
        print(f"error: --seeds={args.seeds} is not valid: a confidence interval needs at least 2", file=sys.stderr)
        return 2
    if args.config_dir is not None and not args.config_dir.is_dir():
        print(f"error: --config-dir={args.config_dir} is not a folder", file=sys.stderr)
        return 2
    problem = candidate_problem(args.name, args.candidate, args.config_dir) if args.candidate else None
    if not problem and not args.report_only:
        problem = setting_problem(args.name, args.setting, args.overrides, args.config_dir)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    out = args.out or Path("studies") / args.name / time.strftime("%Y-%m-%d_%H-%M-%S")
    try:
        report = run_study(
            args.name,
            out,
            args.overrides,
            args.smoke,
            args.report_only,
            args.launcher,
            args.candidate,
            args.config_dir,
            args.seeds,
            args.setting,
        )
    except FileNotFoundError:
        print(f"error: the study's sweeps made no runs; their logs are in {out}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"interrupted: the sweeps so far are in {out} (backprop-lab resume RUN_DIR continues a run)",
            file=sys.stderr,
        )
        return 130
    show_summary(report)
    return 0
