"""The Python API: `train` runs one run in this process exactly as `backprop-lab train` does, and
`load_runs` reads run folders into a pandas DataFrame (the reader `compare` uses).

    from backprop_lab import train, load_runs
    summary = train("optimizer=sgd", "trainer=smoke", run_dir="runs/sgd")
    df = load_runs("runs")

torch is imported only when a run starts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backprop_lab.errors import RefusedError

if TYPE_CHECKING:
    import pandas


def train(*overrides: str, config_dir: str | Path | None = None, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one run with these overrides (as on the command line: "optimizer=sgd", "seed=3") and return
    its summary.json as a dict, with `run_dir`. `config_dir` adds a folder of the user's own options
    (--config-dir); `run_dir` is the run folder (default: outputs/DATE/TIME, as the CLI).
    Bad input raises RefusedError with the one-line message the CLI prints; a run that diverged or
    failed returns its summary (status diverged / failed) as the CLI would exit 1."""
    from backprop_lab.plugin_configs import register
    from backprop_lab.run import app
    from backprop_lab.run.job_check import precheck

    if any(o.startswith("-") for o in overrides):  # -m, --config-dir, ...: not overrides
        raise RefusedError("train() takes overrides only (one run); for a sweep call it in a loop, or use the CLI's -m")
    args = [*(["--config-dir", str(Path(config_dir).resolve())] if config_dir is not None else []), *overrides]
    problem = precheck(args)
    if problem:
        raise RefusedError(problem)
    if run_dir is not None:
        args.append(f"hydra.run.dir={Path(run_dir).resolve()}")
    register()
    saved_argv = sys.argv
    sys.argv = ["backprop-lab", *args]
    app.outcomes().reset()
    try:
        app.train_app()
    except SystemExit as exit:  # Hydra reports its own errors and exits; none should be left here
        raise RefusedError(f"Hydra stopped with exit status {exit.code} (see the messages above)") from None
    finally:
        sys.argv = saved_argv
    summary = app.outcomes().last_summary
    if summary is None:
        raise RefusedError("the run did not start (see the messages above)")
    if summary.get("refused"):
        raise RefusedError(str(summary["error"]), run_dir=summary["run_dir"])
    return summary


def load_runs(*paths: str | Path) -> pandas.DataFrame:
    """One row per run folder at or below the paths: run_dir, status, seed, error, the choices and
    overrides (a column per key, e.g. `optimizer`, `optimizer.lr`), `overrides` as written, and every
    metric of summary.json named as there (`test/acc`, `val/loss`, ...)."""
    import pandas as pd

    from backprop_lab.lab.compare import find_runs

    runs = find_runs([Path(p) for p in (paths or (".",))])
    rows = []
    for run in runs:
        settings = {k: v for k, v in run.settings.items() if k != "seed"}
        rows.append(
            {
                "run_dir": str(run.path),
                "status": run.status,
                "seed": run.seed,
                **settings,
                "overrides": " ".join(run.overrides),
                **run.metrics,
                "error": run.error,
            }
        )
    return pd.DataFrame(rows)
