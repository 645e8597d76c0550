"""Study "activations": saturating activations starve early layers of gradient; ReLU-family ones fix it."""

from __future__ import annotations

import math
import statistics

from backprop_lab.lab.compare import Run
from backprop_lab.lab.statistics import Family, mark
from backprop_lab.lab.studies.readers import completed, init_gradient_ratio, values
from backprop_lab.lab.studies.study import Plan, RunSweep
from backprop_lab.lab.studies.verdicts import Lines, candidate_lines, fmt, render, table

# ------------------------------------------------------------------ the four studies
ACTS = ["sigmoid", "tanh", "relu", "leaky_relu", "gelu", "selu"]
RELU_FAMILY = ["relu", "leaky_relu", "gelu", "selu"]


def activations_sweeps(run_sweep: RunSweep, plan: Plan) -> None:
    candidate, seeds = plan.candidate, plan.seeds
    acts = [*ACTS, *([candidate] if candidate else [])]  # model.init=null: each activation's own init
    run_sweep("grid", [f"act={','.join(acts)}", "model.init=null,torch", f"seed={seeds}"])


def activations_verdict(runs: list[Run], plan: Plan) -> str:
    candidate = plan.candidate
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
