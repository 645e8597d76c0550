"""The statistics behind the studies' verdicts: Welch's test and the Welch interval of a difference of
means, Holm-Bonferroni over a study's family of tests, an interval for positive quantities (on the
log scale, so it never goes below zero) and the area under a curve. Tested against scipy."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ALPHA = 0.05  # a claim holds when its Holm-adjusted p is below this


def mark(holds: bool) -> str:
    return "**holds**" if holds else "**does not hold**"


VERDICTS = ("**holds**", "**does not hold**", "**better**", "**worse**", "no difference detected")  # (mark, outcome)
UNJUDGED = "— (miniature)"


def unjudged(text: str) -> str:
    """A miniature's report: every verdict word replaced, since too few seeds and steps are no evidence."""
    for word in VERDICTS:
        text = text.replace(word, UNJUDGED)
    return text


def finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def welch(a: list[float], b: list[float], alternative: str = "two-sided", confidence: float = 0.95) -> dict[str, float]:
    """mean(a) - mean(b), its Welch confidence interval (Welch-Satterthwaite degrees of freedom) and
    Welch's p-value for `alternative` ('two-sided', 'greater': a > b, 'less': a < b)."""
    from scipy import stats

    a, b = finite(a), finite(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:  # identical values on both sides: no spread, the difference is exact
        one_sided = 0.0 if (diff > 0 if alternative == "greater" else diff < 0) else 1.0
        p = (0.0 if diff else 1.0) if alternative == "two-sided" else one_sided
        return {"diff": diff, "low": diff, "high": diff, "p": p}
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    se = math.sqrt(va + vb)
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    t = diff / se  # Welch's t: its p from the t distribution, as scipy's ttest_ind(equal_var=False) computes it
    if alternative == "greater":
        p = float(stats.t.sf(t, df))
    elif alternative == "less":
        p = float(stats.t.cdf(t, df))
    else:
        p = float(2 * stats.t.sf(abs(t), df))
    return {"diff": diff, "low": diff - half, "high": diff + half, "p": p}


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given: the k-th smallest of m is multiplied by
    (m - k + 1), made monotone, capped at 1. A test holds at level alpha when its adjusted p < alpha."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def positive_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float] | None:
    """Geometric mean of positive values and its t-interval on the log scale, back-transformed: a
    count of steps or seconds never gets a bound below zero. None for fewer than 2 values."""
    from scipy import stats

    logs = [math.log(v) for v in finite(values) if v > 0]
    if len(logs) < 2:
        return None
    mean, sd = statistics.fmean(logs), statistics.stdev(logs)
    if sd == 0:
        return math.exp(mean), math.exp(mean), math.exp(mean)
    low, high = stats.t.interval(confidence, len(logs) - 1, loc=mean, scale=sd / math.sqrt(len(logs)))
    return math.exp(mean), math.exp(float(low)), math.exp(float(high))


def area_under(steps: list[float], values: list[float]) -> float | None:
    """The trapezoid area under values(steps), divided by the steps it spans: the curve's mean level
    (for a training loss: lower is faster convergence over the whole run, not at one step)."""
    points = [(s, v) for s, v in zip(steps, values, strict=True) if math.isfinite(v)]
    if len(points) < 2 or points[-1][0] == points[0][0]:
        return None
    area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in zip(points, points[1:], strict=False))
    return area / (points[-1][0] - points[0][0])


@dataclass
class Comparison:
    """One test of a study's family: is `a` better than `b` (one-sided Welch), with the difference of
    means and its 95% Welch interval; its Holm-adjusted p is set when the family is complete."""

    a: list[float]
    b: list[float]
    higher: bool = True  # higher is better
    points: bool = False  # accuracies: the difference in percentage points too
    two_sided: bool = False  # a candidate's lines: better, worse or no difference
    label: str = ""  # the claim, in a few words, for the study's summary table
    result: dict[str, float] | None = None
    p_holm: float | None = None

    def __post_init__(self) -> None:
        self.a, self.b = finite(self.a), finite(self.b)
        if len(self.a) >= 2 and len(self.b) >= 2:
            alternative = "two-sided" if self.two_sided else "greater" if self.higher else "less"
            self.result = welch(self.a, self.b, alternative)

    @property
    def holds(self) -> bool:
        """a is better than b on the Holm-adjusted p (for a two-sided test: different, in a's favour)."""
        if self.result is None or self.p_holm is None or self.p_holm >= ALPHA:
            return False
        return (self.result["diff"] > 0) == self.higher

    def outcome(self) -> str:
        """holds / does not hold; for a two-sided test: better, worse, or no difference detected."""
        if not self.two_sided:
            return mark(self.holds)
        if self.result is None or self.p_holm is None or self.p_holm >= ALPHA:
            return "no difference detected"
        return "**better**" if (self.result["diff"] > 0) == self.higher else "**worse**"

    def difference(self) -> str:
        """The difference of means with its 95% CI, in percentage points for accuracies."""
        if self.result is None:
            return "n too small for a test"
        r = self.result
        if self.points:
            return f"{100 * r['diff']:+.1f} pp [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]"
        return f"{r['diff']:+.4g} [{r['low']:+.4g}, {r['high']:+.4g}]"

    def effect(self) -> str:
        if self.result is None:
            return "n too small for a test"
        r = self.result
        text = f"difference {r['diff']:+.4g} [{r['low']:+.4g}, {r['high']:+.4g}]"
        if self.points:
            text += f" = {100 * r['diff']:+.1f} pp [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]"
        kind = "two-sided" if self.two_sided else "one-sided"
        return f"{text}, {kind} Welch p = {r['p']:.3g}, Holm p = {self.p_holm:.3g}"


@dataclass
class Family:
    """The tests of one study: Holm-Bonferroni over all of them, so a claim holds only when its
    adjusted p is below ALPHA. Lines that state a test's outcome are rendered after `adjust`."""

    tests: list[Comparison] = field(default_factory=list)
    rows: list[Comparison | tuple[str, Callable[[], bool], str]] = field(default_factory=list)  # summary order

    def compare(
        self,
        a: list[float],
        b: list[float],
        higher: bool = True,
        points: bool = False,
        two_sided: bool = False,
        label: str = "",
    ) -> Comparison:
        return self.add(Comparison(list(a), list(b), higher=higher, points=points, two_sided=two_sided, label=label))

    def add(self, test: Comparison) -> Comparison:
        """A test made elsewhere (survival.TimeComparison) joins the family."""
        self.tests.append(test)
        self.rows.append(test)
        return test

    def claim(self, label: str, holds: Callable[[], bool], measured: str) -> None:
        """A claim decided without a test of its own (a threshold on a measurement), for the summary;
        `holds` is asked after the family is adjusted, so it may read the tests' outcomes."""
        self.rows.append((label, holds, measured))

    def summary(self) -> str:
        """One row per claim: what was measured (the difference with its CI), the Holm p, the outcome."""
        lines = ["| claim | difference [95% CI] | Holm p | verdict |", "|---|---|---|---|"]
        for row in self.rows:
            if isinstance(row, Comparison):
                p = "-" if row.p_holm is None else f"{row.p_holm:.3g}"
                lines.append(f"| {row.label} | {row.difference()} | {p} | {row.outcome()} |")
            else:
                label, holds, measured = row
                lines.append(f"| {label} | {measured} | - | {mark(holds())} |")
        return "\n".join(lines)

    def adjust(self) -> None:
        tested = [t for t in self.tests if t.result is not None]
        for test, p in zip(tested, holm([t.result["p"] for t in tested]), strict=True):  # type: ignore[index]
            test.p_holm = p

    def note(self) -> str:
        tested = sum(t.result is not None for t in self.tests)
        return (
            f"_{tested} tests in this study form one family: each line gives the raw p (Welch's; the log-rank "
            f"test's for times to a target) and the Holm-Bonferroni adjusted p, and a claim holds only when the "
            f"adjusted p < {ALPHA}. Differences are mean(first) - mean(second) with their Welch 95% confidence "
            "interval; times to a target are Kaplan-Meier medians, runs that never reach it censored._"
        )
