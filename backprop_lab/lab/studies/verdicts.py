"""Rendering a verdict: pooled values, the candidate's lines, the summary of a study's family of tests."""

from __future__ import annotations

from typing import Any

from backprop_lab.lab.compare import pooled
from backprop_lab.lab.statistics import Comparison, Family


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
