"""The tuning rulesets (--tuning) of the optimizers study: the search each arm gets before its seeds
are measured, the same for every arm, and what it chose. Self-tuning optimizers get none.

- oneshot: each optimizer at its YAML's defaults, or a recipe's where one applies (Crowded Valley's
  "one-shot" budget).
- lr: the learning rate from LR_GRID at SEARCH_SEED; the best validation accuracy wins, a tie the
  larger rate (DeepOBS's protocol: a log grid at one seed, then the seeds at the best).
- budget:N: N quasirandom trials (Optuna's QMC sampler, scrambled Sobol, seed SEARCH_SEED) over
  the search space the arm's YAML declares (`search:`); the best validation accuracy wins (AlgoPerf's
  external tuning ruleset, with its quasirandom search). Every arm gets the same points of the unit
  cube, each mapped onto its own space (common random numbers).
"""

from __future__ import annotations

from pathlib import Path

from backprop_lab.lab.compare import Run, canonical, find_runs
from backprop_lab.lab.studies.readers import completed
from backprop_lab.lab.studies.study import Plan, Ruleset, RunSweep

LR_GRID = ["0.0003", "0.001", "0.003", "0.01", "0.03", "0.1", "0.3"]
SEARCH_SEED = 100  # the tuning runs' seed: none of the measured ones (0, 1, ...)
RULESETS = ("oneshot", "lr", "budget:N")


def parse_rulesets(text: str) -> list[Ruleset] | str:
    """--tuning lr or --tuning oneshot,budget:8 -> the rulesets; a string: why the text is not valid."""
    found: list[Ruleset] = []
    for item in text.split(","):
        name, _, count = item.strip().partition(":")
        if name in ("oneshot", "lr") and not count:
            found.append(Ruleset(name))
        elif name == "budget" and count.isdigit() and int(count) >= 1:
            found.append(Ruleset("budget", int(count)))
        else:
            return f"--tuning={text}: '{item}' is not a ruleset; choose from oneshot, lr, budget:N (N >= 1 trials)"
    if len({r.label for r in found}) < len(found):
        return f"--tuning={text}: a ruleset is named twice"
    return found


def search_space(option: str, config_dir: Path | None) -> dict[str, str]:
    """The `search:` of an optimizer option's YAML: key -> Hydra sweep grammar ({} if it declares none)."""
    from omegaconf import OmegaConf

    from backprop_lab.run.job_check import compose_train

    node = compose_train([f"optimizer={option}"], config_dir).optimizer.get("search")
    values = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    assert isinstance(values, dict)
    return {str(k): str(v) for k, v in values.items()}


def tune(run_sweep: RunSweep, plan: Plan, arms: list[str], spaces: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """Run the ruleset's tuning sweeps for `arms` (those the ruleset tunes); what each chose, as overrides
    (optimizer.lr=..., ...; none: its defaults). The report counts each arm's runs from the folders."""
    if plan.ruleset.name == "oneshot" or not arms:
        return {arm: [] for arm in arms}
    steps = [] if plan.smoke else [f"trainer.max_steps={plan.setting.search_steps}"]  # (--smoke's own otherwise)
    if plan.ruleset.name == "lr":
        grid = LR_GRID[2:4] if plan.smoke else LR_GRID
        folder = run_sweep(
            "lr_search",
            [f"optimizer={','.join(arms)}", f"optimizer.lr={','.join(grid)}", f"seed={SEARCH_SEED}", *steps],
            note=f"the lr ruleset: the grid at seed {SEARCH_SEED} (not one measured below), "
            f"{plan.setting.search_steps} steps; the best validation accuracy wins, a tie the larger rate",
        )
        runs = find_runs([folder])
        return {arm: _best_rate(completed(runs, optimizer=arm)) for arm in arms}
    trials = plan.ruleset.trials
    chosen = {}
    for arm in arms:
        space = [f"optimizer.{key}={value}" for key, value in spaces[arm].items()]
        folder = run_sweep(
            f"tune_{arm}",
            [
                "hydra/sweeper=optuna",
                "~hydra/sweeper/params",  # (the sweeper's own preset space: the arm's declared one instead)
                "hydra.sweeper.sampler.name=qmc",
                f"hydra.sweeper.sampler.seed={SEARCH_SEED}",
                f"hydra.sweeper.n_trials={trials}",
                f"hydra.sweeper.n_jobs={trials}",  # (one batch: the trials train as members of one model)
                "hydra.sweeper.direction=maximize",
                "trainer.monitor=val/acc",
                f"optimizer={arm}",
                *space,
                f"seed={SEARCH_SEED}",
                *steps,
            ],
            note=f"budget:{trials}: {trials} quasirandom trials over {arm}'s declared space",
        )
        chosen[arm] = _best_trial(completed(find_runs([folder]), optimizer=arm), list(spaces[arm]))
    return chosen


def _best_rate(runs: list[Run]) -> list[str]:
    """The rate of the best validation accuracy; a tie: the larger rate."""
    tried = [(r.metrics.get("val/acc", -1.0), r.settings.get("optimizer.lr", "")) for r in runs]
    if not tried:
        return []  # (every trial failed: the defaults, and the report says so)
    return [f"optimizer.lr={best_rate(tried)}"]


def best_rate(tried: list[tuple[float, str]]) -> str:
    """The rate of the best (validation accuracy, rate) pair; a tie goes to the larger rate, compared as
    numbers ("1e-3" < "0.01")."""
    return max(tried, key=lambda t: (t[0], float(t[1] or 0)))[1]


def _best_trial(runs: list[Run], keys: list[str]) -> list[str]:
    """The hyperparameters of the trial with the best validation accuracy (a tie: the earlier trial)."""
    scored = [r for r in runs if isinstance(r.metrics.get("val/acc"), float)]
    if not scored:
        return []
    best = max(scored, key=lambda r: (r.metrics["val/acc"], -int(r.path.name) if r.path.name.isdigit() else 0))
    return [f"optimizer.{k}={best.settings[f'optimizer.{k}']}" for k in keys]


def trials_of(runs: list[Run], arm: str) -> int:
    """How many tuning runs arm had, counted from their folders (lr_search/, tune_ARM/)."""
    return sum(
        1
        for r in runs
        if r.path.parent.name in ("lr_search", f"tune_{arm}") and r.settings.get("optimizer") == canonical(arm)
    )
