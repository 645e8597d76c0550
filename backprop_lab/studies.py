"""`backprop-lab study NAME`: the sweeps behind one claim, then a report whose verdict is computed
from the measurements (means, Student-t CIs, Welch tests), so a claim that does not hold says so.

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

from .compare import Run, canonical, find_runs, metrics_rows, pooled

SEEDS = 3  # seeds per setting (--seeds); --smoke: 2


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


def better(a: list[float], b: list[float], higher: bool = True) -> tuple[bool, float | None]:
    """Is `a` better than `b` (Welch's t-test, one-sided, p < 0.05)? Returns (holds, p)."""
    a = [v for v in a if v is not None and math.isfinite(v)]
    b = [v for v in b if v is not None and math.isfinite(v)]
    if len(a) < 2 or len(b) < 2:
        return False, None
    if statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0:
        return (
            (statistics.fmean(a) > statistics.fmean(b)) == higher and statistics.fmean(a) != statistics.fmean(b)
        ), 0.0
    from scipy import stats

    test = stats.ttest_ind(a, b, equal_var=False, alternative="greater" if higher else "less")
    return bool(test.pvalue < 0.05), float(test.pvalue)


def difference(a: list[float], b: list[float], confidence: float = 0.95) -> tuple[float, float, float, float] | None:
    """mean(a) - mean(b), its Welch confidence interval and the two-sided Welch p-value; None when
    either side has fewer than 2 values."""
    a = [v for v in a if v is not None and math.isfinite(v)]
    b = [v for v in b if v is not None and math.isfinite(v)]
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    diff = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return diff, diff, diff, 0.0 if diff else 1.0
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(va + vb)
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return diff, diff - half, diff + half, p


def candidate_lines(
    candidate: str, measured: dict[str, list[float]], baselines: list[str], what: str, higher: bool = True
) -> list[str]:
    """One verdict line per baseline: the candidate's difference on `what` with its 95% CI and the
    two-sided Welch p-value, and whether it is better, worse, or not distinguishable at p < 0.05."""
    lines = []
    for base in baselines:
        d = difference(measured.get(candidate, []), measured.get(base, []))
        if d is None:
            lines.append(f"- candidate {candidate} vs {base} ({what}): n too small for a test.")
            continue
        diff, low, high, p = d
        better_side = "**better**" if (diff > 0) == higher else "**worse**"
        outcome = "no difference detected" if p >= 0.05 else better_side
        lines.append(
            f"- candidate {candidate} vs {base} ({what}): difference {diff:+.4f} [{low:+.4f}, {high:+.4f}], "
            f"two-sided Welch p = {p:.3g}: {outcome}."
        )
    return lines


def mark(holds: bool) -> str:
    return "**holds**" if holds else "**does not hold**"


def p_text(p: float | None) -> str:
    return "n too small for a test" if p is None else f"p = {p:.3g}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# ------------------------------------------------------------------ the four studies
ACTS = ["sigmoid", "tanh", "relu", "leaky_relu", "gelu", "selu"]
RELU_FAMILY = ["relu", "leaky_relu", "gelu", "selu"]


def activations_sweeps(run_sweep: Callable[..., Path], smoke: bool, candidate: str | None, seeds: str) -> None:
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
    out = [
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
    out.append(
        f"- Saturating activations starve early layers of gradient (sigmoid's first/last gradient ratio at "
        f"least 10x below relu's: {geo.get('sigmoid', float('nan')):.2e} vs {geo.get('relu', float('nan')):.2e}): "
        f"{mark(starves)}."
    )
    for act in RELU_FAMILY:
        holds, p = better(acc.get(act, []), acc.get("sigmoid", []))
        out.append(
            f"- {act} trains where sigmoid does not (test/acc {fmt(acc.get(act, []))} > sigmoid "
            f"{fmt(acc.get('sigmoid', []))}, one-sided Welch {p_text(p)}): {mark(holds)}."
        )
    for act in ("tanh", "relu"):
        matched = values(completed(runs, act=act, **{"model.init": "null"}), "test/acc")
        default = values(completed(runs, act=act, **{"model.init": "torch"}), "test/acc")
        holds, p = better(matched, default)
        out.append(
            f"- Matched init beats torch's default init for {act} ({fmt(matched)} vs {fmt(default)}, {p_text(p)}): "
            f"{mark(holds)}."
        )
    if candidate:
        out += candidate_lines(candidate, acc, ACTS, "test/acc, each with its matched init")
    return "\n".join(out)


# Each regularizer in its own sweep, so its strength applies to it alone.
REGULARIZERS = {
    "none": [],
    "l1": ["regularizer.l1=0.0001"],
    "l2": ["regularizer.l2=0.001"],
    "dropout": ["regularizer.dropout=0.3"],
    "batchnorm": [],
    "[l2,dropout]": ["regularizer.l2=0.001", "regularizer.dropout=0.3"],
}


def regularization_sweeps(run_sweep: Callable[..., Path], smoke: bool, candidate: str | None, seeds: str) -> None:
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
    out = [
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
    for reg in list(REGULARIZERS)[1:]:
        narrower, p_gap = better(gaps[reg], gaps["none"], higher=False)
        higher, p_acc = better(accs[reg], accs["none"])
        out.append(
            f"- {reg} reduces overfitting (gap {fmt(gaps[reg])} < none {fmt(gaps['none'])}, {p_text(p_gap)}): "
            f"{mark(narrower)}; raises test accuracy ({p_text(p_acc)}): {mark(higher)}."
        )
    if candidate:
        out += candidate_lines(candidate, accs, list(REGULARIZERS), "test/acc")
        out += candidate_lines(candidate, gaps, list(REGULARIZERS), "train - val accuracy gap", higher=False)
    return "\n".join(out)


def _reg_choice(run: Run) -> str:
    return run.settings.get("regularizer", "none")


OPTIMIZERS = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"]
LR_GRID = ["0.0003", "0.001", "0.003", "0.01", "0.03", "0.1", "0.3"]
ADAPTIVE = ["adam", "rmsprop", "adagrad"]


def optimizers_sweeps(run_sweep: Callable[..., Path], smoke: bool, candidate: str | None, seeds: str) -> None:
    grid = LR_GRID[2:4] if smoke else LR_GRID
    optimizers = [*OPTIMIZERS, *([candidate] if candidate else [])]  # the candidate's lr: the same search
    search = run_sweep(
        "lr_search",
        [
            f"optimizer={','.join(optimizers)}",
            f"optimizer.lr={','.join(grid)}",
            "seed=100",
            "trainer.max_steps=1000" if not smoke else "trainer.max_steps=8",
        ],
        note="learning-rate search: one seed (100, not used below), 1000 steps, best val/acc wins",
    )
    runs = find_runs([search])
    for opt in optimizers:
        tried = [
            (r.metrics.get("val/acc", -1.0), r.settings.get("optimizer.lr")) for r in completed(runs, optimizer=opt)
        ]
        lr = max(tried)[1] if tried else "0.001"
        run_sweep(f"final_{opt}", [f"optimizer={opt}", f"optimizer.lr={lr}", f"seed={seeds}"])


def optimizers_verdict(runs: list[Run], candidate: str | None = None) -> str:
    final = [r for r in runs if "lr_search" not in str(r.path)]
    last_steps = [train_row(r, -1).get("step", 0) for r in final if r.status == "completed"]
    probe = 1000 if last_steps and min(last_steps) >= 1000 else min(last_steps, default=0)
    loss, steps, acc, rows = {}, {}, {}, []
    for opt in [*OPTIMIZERS, *([candidate] if candidate else [])]:
        group = completed(final, optimizer=opt)
        lr = group[0].settings.get("optimizer.lr", "-") if group else "-"
        loss[opt] = [v for v in (row_at(r, "train", probe, "loss") for r in group) if v is not None]
        steps[opt] = [r.metrics.get("target/step", math.inf) for r in group]
        acc[opt] = values(group, "test/acc")
        reached = [s for s in steps[opt] if math.isfinite(s)]
        rows.append(
            [
                opt,
                lr,
                fmt(loss[opt], 4),
                f"{len(reached)}/{len(group)}: " + (fmt(reached, 0) if reached else "-"),
                fmt(acc[opt]),
            ]
        )
    out = [
        "### Protocol",
        "",
        f"Each optimizer's learning rate was picked from the log grid {', '.join(LR_GRID)} by the best validation "
        "accuracy of a 1000-step run with seed 100. The comparison then runs seeds "
        f"{', '.join(str(seed) for seed in sorted({r.seed for r in final if r.seed is not None}))} at that rate.",
        "",
        "### Measurements",
        "",
        f"Train loss at step {probe} (mean [95% CI]), steps to reach the target validation accuracy "
        "(trainer.target_acc, runs that reached it), and test accuracy.",
        "",
        table(["optimizer", "lr", f"train loss @ {probe}", "steps to target", "test/acc"], rows),
        "",
        "### Verdict",
        "",
    ]
    for opt in ADAPTIVE:
        faster, p = better(loss.get(opt, []), loss.get("sgd", []), higher=False)
        out.append(
            f"- {opt} converges faster than sgd (lower train loss at step {probe}: {fmt(loss.get(opt, []), 4)} vs "
            f"{fmt(loss.get('sgd', []), 4)}, {p_text(p)}): {mark(faster)}."
        )
    if candidate:
        out += candidate_lines(candidate, loss, OPTIMIZERS, f"train loss at step {probe}", higher=False)
        out += candidate_lines(candidate, acc, OPTIMIZERS, "test/acc")
    return "\n".join(out)


BUDGETS = ["100", "300", "1000"]
SMOKE_BUDGETS = ["20", "40", "80"]
STRATEGIES = [
    ("scratch", {"pretrain": "none"}),
    ("frozen", {"pretrain": "supervised", "pretrain.finetune": "freeze"}),
    ("full fine-tune", {"pretrain": "supervised", "pretrain.finetune": "full"}),
    ("autoencoder", {"pretrain": "autoencoder", "pretrain.finetune": "full"}),
]


def pretraining_sweeps(run_sweep: Callable[..., Path], smoke: bool, candidate: str | None, seeds: str) -> None:
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
    source = next((r.settings["pretrain.data"] for r in runs if r.settings.get("pretrain.data")), None)
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
    out = [
        "### Measurements",
        "",
        task,
        "",
        table(["strategy"] + [f"{n} labels" for n in budgets], rows),
        "",
        "### Verdict",
        "",
    ]
    for name, _ in STRATEGIES[1:]:
        parts = []
        for n in budgets:
            holds, p = better(acc[name, n], acc["scratch", n])
            parts.append(f"{n} labels {mark(holds)} ({p_text(p)})")
        out.append(f"- {name} beats scratch: " + "; ".join(parts) + ".")
    gains = {
        n: (statistics.fmean(acc["full fine-tune", n]) - statistics.fmean(acc["scratch", n]))
        for n in budgets
        if acc["full fine-tune", n] and acc["scratch", n]
    }
    if budgets and len(gains) == len(budgets):
        largest_first = gains[budgets[0]] >= max(gains.values())
        out.append(
            f"- The gain of full fine-tuning is largest when labels are fewest "
            f"({', '.join(f'{n}: {g:+.3f}' for n, g in gains.items())}): {mark(largest_first)}."
        )
    return "\n".join(out)


@dataclass
class Study:
    claim: str
    sweeps: Callable[[Callable[..., Path], bool, str | None, str], None]  # (run_sweep, smoke, candidate, seeds)
    verdict: Callable[[list[Run], str | None], str]
    group: str | None  # the config group of a --candidate (None: the study takes none)


STUDIES: dict[str, Study] = {
    "activations": Study(
        "Saturating activations starve early layers of gradient; ReLU-family activations fix it.",
        activations_sweeps,
        activations_verdict,
        "act",
    ),
    "regularization": Study(
        "Regularizers (L1, L2, dropout, batch norm, combined) reduce overfitting.",
        regularization_sweeps,
        regularization_verdict,
        "regularizer",
    ),
    "optimizers": Study(
        "Adaptive optimizers (Adam, RMSprop, Adagrad) converge faster than SGD.",
        optimizers_sweeps,
        optimizers_verdict,
        "optimizer",
    ),
    "pretraining": Study(
        "Pretraining and transfer help when labels are few.", pretraining_sweeps, pretraining_verdict, None
    ),
}

# --smoke: the same sweeps in miniature, for tests (a few steps on a small MNIST-1D)
SMOKE = ["trainer.max_steps=8", "trainer.eval_every=4", "trainer.log_every=4", "data.num_samples=1000"]


def _sweep_in_process(train_args: list[str], log_path: Path) -> int:
    """`backprop-lab train TRAIN_ARGS` in this process (no interpreter and torch start per sweep), its
    output into `log_path`; returns its exit status."""
    import contextlib
    import logging.config

    from .cli import train_main

    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            code = train_main(train_args)
        except SystemExit as exit:  # Hydra's own errors end in sys.exit
            code = exit.code if isinstance(exit.code, int) else 1
        finally:  # Hydra's log handlers write to this file: close them with it
            logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    return code


def candidate_problem(study: str, candidate: str, config_dir: Path | None) -> str | None:
    """Why `--candidate GROUP=OPTION` cannot join this study, as one line; None when it can."""
    from .cli import check_composition, compose_train

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
) -> Path:
    """Run the study's sweeps into `out` (unless `report_only`), then write its report there.
    The vectorized launcher trains each setting's seeds as one batched model. `candidate`
    (GROUP=OPTION, shipped or from `config_dir`) joins the study under its protocol. `seeds`: per
    setting (default SEEDS, 2 with `smoke`)."""
    import json

    from .report import write_report

    study = STUDIES[name]
    out.mkdir(parents=True, exist_ok=True)
    commands: list[str] = []
    commands_file = out / "commands.md"
    started = time.time()
    setup = out / "study.json"  # what --report-only needs to recompute the same verdict
    if report_only and setup.is_file():
        saved = json.loads(setup.read_text())
        candidate = candidate or saved.get("candidate")
    elif not report_only:
        setup.write_text(json.dumps({"study": name, "candidate": candidate, "config_dir": str(config_dir or "")}))
    option = candidate.partition("=")[2] if candidate else None
    own = ["--config-dir", str(config_dir.resolve())] if config_dir is not None else []

    def run_sweep(label: str, overrides: list[str], note: str | None = None) -> Path:
        folder = out / label
        staged = not any(o == "pretrain=none" for o in overrides)  # pretrain.* overrides only where there is a stage
        own_data = any(o.startswith("data=") for o in extra)  # (the smoke's data.num_samples is MNIST-1D's)
        smoke_args = [a for a in SMOKE if not (own_data and a.startswith("data.num_samples"))] if smoke else []
        args = [
            "train",
            "-m",
            *own,
            f"hydra/launcher={launcher}",
            f"experiment=study_{name}",
            *overrides,
            *smoke_args,
            *[e for e in extra if staged or not e.startswith("pretrain.")],
        ]
        shown = "backprop-lab " + " ".join(f"'{a}'" if "[" in a else a for a in args)
        commands.append(f"- `{shown}`" + (f" ({note})" if note else ""))
        commands_file.write_text("\n".join(commands) + "\n")
        print(f"[{name}] {label}: {shown}", flush=True)
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
        study.sweeps(run_sweep, smoke, option, ",".join(str(seed) for seed in range(count)))
    runs = find_runs([out])
    wall = "" if report_only else f"\n\nWall time of the sweeps: {time.time() - started:.0f} s."
    entered = f"**Candidate:** `{candidate}`, under the study's own protocol.\n\n" if candidate else ""
    verdict = (
        f"**Claim:** {study.claim}\n\n{entered}{study.verdict(runs, option)}\n\n### Sweeps (Hydra multiruns)\n\n"
        + "\n".join(commands)
        + wall
    )
    return write_report([out], out, ["test/acc"], title=f"Study: {name}", verdict=verdict)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="backprop-lab study", description="Run a study's sweeps, then its report.")
    parser.add_argument("name", help=f"one of: {', '.join(STUDIES)}")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run (e.g. trainer.device=cuda)")
    parser.add_argument("--out", type=Path, help="folder (default: studies/NAME/DATE_TIME)")
    parser.add_argument("--smoke", action="store_true", help="a miniature of the same sweeps (a few steps each)")
    parser.add_argument(
        "--seeds", type=int, help=f"seeds per setting, at least 2 (default {SEEDS}; --smoke: 2)", metavar="N"
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
    print(f"wrote {report}")
    print(report.read_text().split("### Sweeps")[0])
    return 0
