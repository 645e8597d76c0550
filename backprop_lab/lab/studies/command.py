"""`backprop-lab study NAME`: the command line of the studies."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from backprop_lab.lab.studies.registry import STUDIES
from backprop_lab.lab.studies.runner import candidate_problem, run_study, setting_problem, show_summary
from backprop_lab.lab.studies.study import SEEDS, SETTINGS


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="backprop-lab study", description="Run a study's sweeps, then its report.")
    parser.add_argument("name", help=f"one of: {', '.join(STUDIES)}")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run (e.g. trainer.device=cuda)")
    parser.add_argument("--out", type=Path, help="folder (default: studies/NAME/DATE_TIME)")
    parser.add_argument("--smoke", action="store_true", help="a miniature of the same sweeps (a few steps each)")
    parser.add_argument(
        "--seeds", type=int, help=f"seeds per setting, at least 2 (default {SEEDS}; --smoke: 2)", metavar="N"
    )
    parser.add_argument(
        "--setting",
        default="mnist1d",
        choices=SETTINGS,
        help="where the claim is measured: MNIST-1D (default), or a real image set per study (docs/studies.md)",
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
    if not problem and not args.report_only:
        problem = setting_problem(args.name, args.setting, args.overrides, args.config_dir)
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
            args.setting,
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
    show_summary(report)
    return 0
