"""Time to a target when some runs never reach it: those runs are censored at their last evaluation,
not dropped (dropping them would make a method that often fails look fast). The median time is the
Kaplan-Meier median with its 95% interval, and "a reaches the target sooner than b" is a log-rank
test; both are scipy's (stats.ecdf, stats.logrank). Tested against hand computations."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from backprop_lab.lab.statistics import ALPHA, Comparison


@dataclass(frozen=True)
class Reach:
    """One run: the step (and the seconds into training) at which it first reached the target, or,
    when it never did, the last step at which it was evaluated (censored there)."""

    step: float
    reached: bool
    seconds: float = math.nan

    def in_seconds(self) -> Reach:
        """The same event on the clock: seconds in place of steps."""
        return Reach(self.seconds, self.reached, self.seconds)


def _censored(times: list[Reach]) -> Any:
    """scipy's CensoredData of the runs: reached ones observed, the others right-censored."""
    from scipy import stats

    return stats.CensoredData(
        uncensored=[t.step for t in times if t.reached], right=[t.step for t in times if not t.reached]
    )


def median_time(times: list[Reach]) -> tuple[float, float, float] | None:
    """The Kaplan-Meier median of the steps to the target and its 95% interval: the first step at
    which the estimated fraction not yet there (and the log-log Greenwood bounds of it) falls to one
    half. inf where it never does: more than half the runs may never get there. None without runs."""
    import numpy as np
    from scipy import stats

    if not times:
        return None
    if not any(t.reached for t in times):
        return math.inf, math.inf, math.inf
    curve = stats.ecdf(_censored(times)).sf
    with warnings.catch_warnings():  # (undefined where the estimate is 0 or 1: NaN there, read as not crossing)
        warnings.simplefilter("ignore", RuntimeWarning)
        bounds = curve.confidence_interval(0.95, method="log-log")

    def first_half(probabilities: np.ndarray) -> float:
        below = np.flatnonzero(np.nan_to_num(probabilities, nan=1.0) <= 0.5)
        return float(curve.quantiles[below[0]]) if below.size else math.inf

    return first_half(curve.probabilities), first_half(bounds.low.probabilities), first_half(bounds.high.probabilities)


def steps_text(found: tuple[float, float, float] | None) -> str:
    """A median [95% CI] of steps as the report writes it ("never" for inf)."""
    if found is None:
        return "-"

    def num(v: float) -> str:
        return "never" if math.isinf(v) else f"{v:.0f}"

    return f"{num(found[0])} [{num(found[1])}, {num(found[2])}]"


def seconds_text(found: tuple[float, float, float] | None) -> str:
    """A Kaplan-Meier median of seconds, as the report writes it ("never" for inf; NaN: not recorded)."""
    if found is None or math.isnan(found[0]):
        return "-"
    return "never" if math.isinf(found[0]) else f"{found[0]:.1f}"


class TimeComparison(Comparison):
    """One test of a study's family: does `a` reach the target sooner than `b`? The one-sided log-rank
    p on the steps to the target (censored runs included), Holm-adjusted with the family. Its
    difference is the two Kaplan-Meier medians."""

    def __init__(self, a: list[Reach], b: list[Reach], label: str = ""):
        self.reach_a, self.reach_b = a, b
        super().__init__([], [], higher=False, label=label)
        self.medians = median_time(a), median_time(b)
        if len(a) >= 2 and len(b) >= 2 and any(t.reached for t in [*a, *b]):
            from scipy import stats

            test = stats.logrank(_censored(a), _censored(b), alternative="greater")  # (a's curve falls first)
            sooner = float(test.statistic) > 0
            self.result = {"diff": -1.0 if sooner else 1.0, "low": math.nan, "high": math.nan, "p": float(test.pvalue)}

    @property
    def holds(self) -> bool:
        return self.result is not None and self.p_holm is not None and self.p_holm < ALPHA and self.result["diff"] < 0

    def outcome(self) -> str:
        from backprop_lab.lab.statistics import mark

        return mark(self.holds)

    def _untested(self) -> str:
        if len(self.reach_a) >= 2 and len(self.reach_b) >= 2:
            return "no run of either reached the target: no test"
        return "n too small for a test"

    def difference(self) -> str:
        if self.result is None:
            return self._untested()
        return f"median steps {steps_text(self.medians[0])} vs {steps_text(self.medians[1])}"

    def effect(self) -> str:
        if self.result is None:
            return self._untested()
        reached = [f"{sum(t.reached for t in side)}/{len(side)}" for side in (self.reach_a, self.reach_b)]
        return (
            f"{self.difference()}, reached {reached[0]} vs {reached[1]}; one-sided log-rank p = "
            f"{self.result['p']:.3g}, Holm p = {self.p_holm:.3g}"
        )
