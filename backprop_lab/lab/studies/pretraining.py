"""Study "pretraining": pretraining and transfer help when labels are few."""

from __future__ import annotations

import statistics

from backprop_lab.lab.compare import Run
from backprop_lab.lab.statistics import Comparison, Family, mark
from backprop_lab.lab.studies.readers import completed, values
from backprop_lab.lab.studies.study import Plan, RunSweep
from backprop_lab.lab.studies.verdicts import Lines, fmt, render, table

BUDGETS = ["100", "300", "1000"]
SMOKE_BUDGETS = ["20", "40", "80"]
STRATEGIES = [
    ("scratch", {"pretrain": "none"}),
    ("frozen", {"pretrain": "supervised", "pretrain.finetune": "freeze"}),
    ("full fine-tune", {"pretrain": "supervised", "pretrain.finetune": "full"}),
    ("autoencoder", {"pretrain": "autoencoder", "pretrain.finetune": "full"}),
]


def pretraining_sweeps(run_sweep: RunSweep, plan: Plan) -> None:
    smoke, seeds = plan.smoke, plan.seeds
    budgets = f"data.n_train={','.join(SMOKE_BUDGETS if smoke else BUDGETS)}"
    short = ["pretrain.steps=8"] if smoke else []
    run_sweep("scratch", ["pretrain=none", budgets, f"seed={seeds}"])
    run_sweep("supervised", ["pretrain=supervised", "pretrain.finetune=freeze,full", budgets, f"seed={seeds}", *short])
    run_sweep("autoencoder", ["pretrain=autoencoder", "pretrain.finetune=full", budgets, f"seed={seeds}", *short])


def pretraining_verdict(runs: list[Run], plan: Plan) -> str:
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
