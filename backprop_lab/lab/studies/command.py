"""`backprop-lab study NAME`: the command line of the studies."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from backprop_lab.lab.studies.registry import STUDIES
from backprop_lab.lab.studies.runner import candidate_problem, setting_problem, show_summary
from backprop_lab.lab.studies.sections import Request, run_study
from backprop_lab.lab.studies.study import SEEDS, SETTINGS, Ruleset


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
        help="where the claim is measured: MNIST-1D (default), scikit-learn's digits, or a real image set per study "
        "(docs/studies.md)",
    )
    parser.add_argument(
        "--settings",
        metavar="A,B,...",
        help=f"several workloads ({', '.join(SETTINGS)}), a section each; the optimizers study: a performance profile",
    )
    parser.add_argument(
        "--tuning",
        metavar="RULESET[,...]",
        help="the optimizers study's tuning ruleset(s): oneshot, lr (default) or budget:N (docs/studies.md)",
    )
    parser.add_argument(
        "--target", type=float, metavar="ACC", help="the validation accuracy of time-to-target (default: AlgoPerf's)"
    )
    parser.add_argument(
        "--self-tuning",
        action="store_true",
        help="the optimizers study: add schedule-free AdamW and Prodigy at zero tuning budget "
        "(pip install 'backprop-lab[selftuning]')",
    )
    parser.add_argument(
        "--variants",
        action="store_true",
        help="with --candidate: re-measure it on held-out variants (width x2, depth +1, another activation, data set)",
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
    settings = tuple(args.settings.split(",")) if args.settings else (args.setting,)
    found = rulesets_of(args.name, args.tuning) if args.tuning else []
    rulesets = found if isinstance(found, list) else []
    problem = found if isinstance(found, str) else options_problem(args, settings)
    if not problem and args.candidate:
        problem = candidate_problem(args.name, args.candidate, args.config_dir, rulesets)
    for setting in settings if not problem and not args.report_only else ():
        problem = problem or setting_problem(args.name, setting, args.overrides, args.config_dir)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    out = args.out or Path("studies") / args.name / time.strftime("%Y-%m-%d_%H-%M-%S")
    request = Request(
        args.name, out, args.overrides, args.smoke, args.report_only, args.launcher, args.candidate,
        args.config_dir, args.seeds, settings, tuple(rulesets), args.target, args.variants, args.self_tuning,
    )  # fmt: skip
    try:
        report = run_study(request)
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


def rulesets_of(name: str, text: str) -> list[Ruleset] | str:
    """--tuning's rulesets, or why the study cannot take them (one line)."""
    from backprop_lab.lab.studies.tuning import parse_rulesets

    found = parse_rulesets(text)
    takes = STUDIES[name].rulesets
    if isinstance(found, str):
        return found
    for ruleset in found:
        if ruleset.name not in (r.partition(":")[0] for r in takes):
            return (
                f"--tuning={text}: study {name} runs each arm at its preset's settings ({', '.join(takes)}); "
                "only the optimizers study tunes"
            )
        if ruleset.name == "budget":
            import importlib.util

            if importlib.util.find_spec("optuna") is None:
                return (
                    f"--tuning={ruleset.label} draws its trials with Optuna, which is not installed: "
                    "pip install 'backprop-lab[search]'"
                )
    return found


def options_problem(args: argparse.Namespace, settings: tuple[str, ...]) -> str | None:
    """Why --settings, --target or --variants cannot be, as one line; None when they can."""
    for setting in settings:
        if setting not in SETTINGS:
            return f"--settings: '{setting}' is not a setting; choose from {', '.join(SETTINGS)}"
        if setting == "digits" and args.name == "pretraining":
            return (
                "--settings: digits is too small for the pretraining study's label budgets (1000 of 5 classes); "
                "choose mnist1d or real"
            )
    if len(set(settings)) < len(settings):
        return f"--settings={args.settings}: a setting is named twice"
    if args.target is not None and not 0 < args.target <= 1:
        return f"--target={args.target} is not valid: a validation accuracy in (0, 1]"
    if args.self_tuning and args.name != "optimizers":
        return f"--self-tuning: study {args.name} compares no optimizers; the optimizers study takes it"
    if args.self_tuning:
        from backprop_lab.groups import missing_package
        from backprop_lab.lab.studies.optimizers import SELF_TUNING

        missing = next((m for m in (missing_package("optimizer", o) for o in SELF_TUNING) if m), None)
        if missing:
            return f"--self-tuning: its optimizers are not installed: the option {missing}"
    if args.variants and not args.candidate:
        return "--variants re-measures a candidate on held-out variants: give --candidate GROUP=OPTION too"
    return None
