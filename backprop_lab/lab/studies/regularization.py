"""Study "regularization": regularizers (L1, L2, dropout, batch norm, combined) reduce overfitting."""

from __future__ import annotations

from backprop_lab.lab.compare import Run, metrics_rows
from backprop_lab.lab.statistics import Family, mark
from backprop_lab.lab.studies.readers import train_row, values
from backprop_lab.lab.studies.study import Plan, RunSweep
from backprop_lab.lab.studies.verdicts import Lines, candidate_lines, fmt, render, table

# Each regularizer in its own sweep, so its strength applies to it alone.
REGULARIZERS = {
    "none": [],
    "l1": ["regularizer.l1=0.0001"],
    "l2": ["regularizer.l2=0.001"],
    "dropout": ["regularizer.dropout=0.3"],
    "batchnorm": [],
    "[l2,dropout]": ["regularizer.l2=0.001", "regularizer.dropout=0.3"],
}


def regularization_sweeps(run_sweep: RunSweep, plan: Plan) -> None:
    candidate, seeds = plan.candidate, plan.seeds
    for reg, strengths in _regularizers(candidate).items():
        label = reg.strip("[]").replace(",", "+")
        run_sweep(label, [f"regularizer={reg}", *strengths, f"seed={seeds}"])


def _regularizers(candidate: str | None) -> dict[str, list[str]]:
    """The study's regularizers, and the candidate at the coefficients of its own YAML."""
    return {**REGULARIZERS, **({candidate: []} if candidate else {})}


def _final_gap(run: Run) -> float | None:
    rows = [r for r in metrics_rows(run.path) if r.get("split") == "val" and "gap/acc" in r]
    return rows[-1]["gap/acc"] if rows else None


def regularization_verdict(runs: list[Run], plan: Plan) -> str:
    candidate = plan.candidate
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
