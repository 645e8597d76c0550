"""Study "optimizers": adaptive optimizers (Adam, RMSprop, Adagrad) converge faster than SGD."""

from __future__ import annotations

import statistics

from backprop_lab.lab.compare import Run, find_runs, metrics_rows
from backprop_lab.lab.statistics import Family, area_under, mark, positive_interval
from backprop_lab.lab.studies.readers import completed, row_at, train_row, values
from backprop_lab.lab.studies.study import RunSweep, Setting
from backprop_lab.lab.studies.verdicts import Lines, candidate_lines, fmt, render, table

OPTIMIZERS = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"]
LR_GRID = ["0.0003", "0.001", "0.003", "0.01", "0.03", "0.1", "0.3"]
ADAPTIVE = ["adam", "rmsprop", "adagrad"]


def optimizers_sweeps(run_sweep: RunSweep, smoke: bool, candidate: str | None, seeds: str, setting: Setting) -> None:
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
