"""A study's measurements and its report: one section per workload (--settings) and tuning ruleset
(--tuning), and one per held-out variant (--variants); each section's verdict from its own runs, then
what spans them: the rulesets side by side, the performance profile over the workloads, and where a
candidate's verdict holds across the variants."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from backprop_lab.lab.compare import Run, find_runs
from backprop_lab.lab.statistics import UNJUDGED, unjudged
from backprop_lab.lab.studies.registry import STUDIES, setting_of
from backprop_lab.lab.studies.study import SEEDS, Plan, Ruleset
from backprop_lab.lab.studies.verdicts import fmt, table


@dataclass(frozen=True)
class Request:
    """What `backprop-lab study` was asked: the study, its folder, and the command's options."""

    name: str
    out: Path
    extra: list[str] = field(default_factory=list)
    smoke: bool = False
    report_only: bool = False
    launcher: str = "vectorized"
    candidate: str | None = None
    config_dir: Path | None = None
    seeds: int | None = None
    settings: tuple[str, ...] = ("mnist1d",)
    rulesets: tuple[Ruleset, ...] = ()  # (): the study's default
    target: float | None = None
    variants: bool = False
    self_tuning: bool = False


@dataclass
class Section:
    """One measurement: a plan, the overrides of its variant (if one), and its title in the report."""

    plan: Plan
    title: str
    variant: str | None = None
    overrides: list[str] = field(default_factory=list)


def sections(req: Request, rulesets: tuple[Ruleset, ...], seeds: str) -> list[Section]:
    """The workloads x rulesets, each in a folder of its own when there are several; then, with
    --variants, the first workload and ruleset once per held-out variant (under variants/)."""
    found = []
    for setting in req.settings:
        for ruleset in rulesets:
            parts = [*([setting] if len(req.settings) > 1 else []), *([_name(ruleset)] if len(rulesets) > 1 else [])]
            plan = _plan(req, setting, ruleset, seeds, parts)
            title = [
                *([f"workload {setting}"] if len(req.settings) > 1 or req.variants else []),
                *([f"tuning {ruleset.label}"] if len(rulesets) > 1 else []),
            ]
            found.append(Section(plan, ", ".join(title)))
    if req.variants:
        for variant, overrides in variants_of(req.name, req.settings[0], req.config_dir).items():
            plan = _plan(req, req.settings[0], rulesets[0], seeds, ["variants", variant.replace(" ", "_")])
            found.append(Section(plan, f"variant {variant}", variant, overrides))
    return found


def _name(ruleset: Ruleset) -> str:
    return ruleset.label.replace(":", "_")


def _plan(req: Request, setting: str, ruleset: Ruleset, seeds: str, parts: list[str]) -> Plan:
    folder = req.out.joinpath(*parts)
    link = "".join(f"{p}/" for p in parts)
    option = req.candidate.partition("=")[2] if req.candidate else None
    where = setting_of(req.name, setting)
    return Plan(
        where, ruleset, seeds, req.smoke, option, req.target, config_dir=req.config_dir, folder=folder, link=link,
        self_tuning=req.self_tuning,
    )  # fmt: skip


def variants_of(name: str, setting: str, config_dir: Path | None) -> dict[str, list[str]]:
    """The held-out variants of a workload (AlgoPerf's randomized workloads): the model twice as wide,
    one layer deeper, another activation (the activations study: another optimizer), another data set."""
    from backprop_lab.run.job_check import compose_train

    where = setting_of(name, setting)
    cfg = compose_train([f"experiment={where.experiment}", *where.overrides], config_dir)
    found: dict[str, list[str]] = {}
    if isinstance(cfg.model.get("width"), int):
        found["width x2"] = [f"model.width={2 * cfg.model.width}"]
    if isinstance(cfg.model.get("depth"), int):
        found["depth +1"] = [f"model.depth={cfg.model.depth + 1}"]
    if STUDIES[name].group == "act":
        found["another optimizer"] = ["optimizer=momentum" if cfg.optimizer.name != "momentum" else "optimizer=sgd"]
    else:
        found["another activation"] = ["act=tanh" if cfg.act.name != "tanh" else "act=relu"]
    found["another data set"] = ["data=digits" if cfg.data.name != "digits" else "data=mnist1d"]
    return found


def _most_tuned(group: list[Section]) -> Section:
    """The section whose arms got the most tuning (budget:N > lr > oneshot): it sets the workload's target."""
    from backprop_lab.lab.studies.tuning import LR_GRID

    return max(group, key=lambda s: {"oneshot": 0, "lr": len(LR_GRID)}.get(s.plan.ruleset.name, s.plan.ruleset.trials))


def _runs(section: Section, out: Path) -> list[Run]:
    """The section's runs: those under its folder, less other sections' nested under it."""
    assert section.plan.folder is not None
    mine = section.plan.folder.relative_to(out).parts
    runs = find_runs([section.plan.folder])
    if mine:
        return runs
    return [r for r in runs if "variants" not in r.path.resolve().relative_to(out.resolve()).parts]


def verdicts(req: Request, found: list[Section], runs_of: dict[int, list[Run]]) -> dict[int, str]:
    """Each section's verdict; the sections of one workload share its time-to-target target."""
    study = STUDIES[req.name]
    texts = {}
    for setting in req.settings:
        group = [s for s in found if s.variant is None and s.plan.setting == setting_of(req.name, setting)]
        target, source = req.target, "declared (--target)"
        if target is None and study.target is not None and group:
            most = _most_tuned(group)
            target = study.target(runs_of[id(most)])
            label = most.plan.ruleset.label
            source = f"AlgoPerf's: the median best validation accuracy of the best tuned baseline, {label}"
        for s in group:
            s.plan = replace(s.plan, target=target, target_source=source)
    for s in found:
        texts[id(s)] = study.verdict(runs_of[id(s)], s.plan)
    return texts


def rulesets_table(req: Request, found: list[Section], runs_of: dict[int, list[Run]]) -> list[str]:
    """Crowded Valley's question: does the winner depend on the budget? Each arm's test accuracy under
    each ruleset, per workload, and the best arm of each."""
    group = STUDIES[req.name].group or ""
    lines = ["## The rulesets side by side", ""]
    for setting in req.settings:
        mine = [s for s in found if s.variant is None and s.plan.setting == setting_of(req.name, setting)]
        measured = {id(s): _final_accuracies(runs_of[id(s)], group) for s in mine}
        arms = ordered(req.name, [a for s in mine for a in measured[id(s)]])
        rows = [[arm, *(fmt(measured[id(s)].get(arm, [])) for s in mine)] for arm in arms]
        best = []
        for s in mine:
            means = {a: statistics.fmean(v) for a, v in measured[id(s)].items() if v}
            best.append(max(means, key=lambda a: means[a]) if means else "-")
        rows.append(["**best**", *best])
        lines += [f"Test accuracy, mean [95% CI], workload {setting}:", ""]
        lines += [table([group or "arm", *(s.plan.ruleset.label for s in mine)], rows), ""]
    return lines


def ordered(name: str, arms: list[str]) -> list[str]:
    """The arms once each, in the study's order (Study.arms), the others after in the order given."""
    known = STUDIES[name].arms
    unique = list(dict.fromkeys(arms))
    return sorted(unique, key=lambda a: (known.index(a) if a in known else len(known), unique.index(a)))


def _final_accuracies(runs: list[Run], group: str) -> dict[str, list[float]]:
    measured: dict[str, list[float]] = {}
    for r in runs:
        tuning = r.path.parent.name in ("lr_search",) or r.path.parent.name.startswith("tune_")
        if r.status == "completed" and not tuning and isinstance(r.metrics.get("test/acc"), float):
            measured.setdefault(r.settings.get(group, "-"), []).append(r.metrics["test/acc"])
    return measured


def variants_table(req: Request, found: list[Section], texts: dict[int, str], small: bool) -> list[str]:
    """Where the candidate's verdict holds: each of its claims (the rows of the summary that name it)
    on the workload and on each held-out variant."""
    columns = [s for s in found if s.variant is None][:1] + [s for s in found if s.variant is not None]
    outcomes = [_candidate_claims(texts[id(s)]) for s in columns]
    claims = list(dict.fromkeys(c for found_claims in outcomes for c in found_claims))
    rows = []
    for claim in claims:
        cells = [o.get(claim, "-") for o in outcomes]
        same = sum(c == cells[0] for c in cells[1:])
        rows.append([claim, *cells, UNJUDGED if small else f"{same} of {len(cells) - 1}"])
    header = ["claim", "workload", *(f"{s.variant}" for s in columns[1:]), "variants agreeing"]
    overrides = "; ".join(f"{s.variant}: `{' '.join(s.overrides)}`" for s in columns[1:])
    return [
        "## Held-out variants",
        "",
        f"The candidate's claims re-measured under the same protocol on declared perturbations ({overrides}).",
        "",
        table(header, rows),
        "",
    ]


def _candidate_claims(text: str) -> dict[str, str]:
    summary = text.split("### Summary", 1)[-1].split("###", 1)[0]
    cells = [line.strip("|").split(" | ") for line in summary.splitlines() if line.startswith("| candidate ")]
    return {c[0].strip(): c[-1].strip() for c in cells}


def profile_lines(req: Request, found: list[Section], runs_of: dict[int, list[Run]]) -> list[str]:
    """AlgoPerf's performance profile over the workloads (per ruleset): which arms reach each workload's
    target within tau times the fastest arm's median steps."""
    from backprop_lab.lab.profiles import TAU_MAX, profile, profile_plot
    from backprop_lab.lab.studies.optimizers import median_steps

    lines = ["## Performance profile over the workloads", ""]
    rulesets = list(dict.fromkeys(s.plan.ruleset for s in found if s.variant is None))
    for ruleset in rulesets:
        times: dict[str, dict[str, float]] = {}
        for s in found:
            if s.variant is None and s.plan.ruleset == ruleset:
                workload = next(w for w in req.settings if setting_of(req.name, w) == s.plan.setting)
                for arm, steps in median_steps(runs_of[id(s)], s.plan).items():
                    times.setdefault(arm, {})[workload] = steps
        folder = req.out / _name(ruleset) if len(rulesets) > 1 else req.out
        folder.mkdir(parents=True, exist_ok=True)
        times = {arm: times[arm] for arm in ordered(req.name, list(times))}
        picture = profile_plot(times, folder, f"performance profile, tuning {ruleset.label}")
        taus = [1.0, 2.0, TAU_MAX]
        rho = profile(times, taus)
        rows = [[arm, *(f"{v:.2f}" for v in rho[arm])] for arm in times]
        lines += [
            f"Tuning {ruleset.label}: the fraction of the {len(req.settings)} workloads ({', '.join(req.settings)}) "
            "each optimizer reaches the workload's target within tau times the fastest optimizer's median steps "
            "(never reaching it: not solved).",
            "",
            table(["optimizer", *(f"tau = {t:g}" for t in taus)], rows),
            "",
            f"![performance profile]({picture.relative_to(req.out)})",
            "",
        ]
    return lines


def assemble(req: Request, found: list[Section], small: str | None, commands: list[str], wall: str) -> str:
    """The report's text above its results table: claim, settings, each section's verdict, what spans them."""
    from backprop_lab.lab.studies.runner import reproduce, setting_line

    study = STUDIES[req.name]
    runs_of = {id(s): _runs(s, req.out) for s in found}
    texts = verdicts(req, found, runs_of)
    every = find_runs([req.out])
    lines = [f"> **{small}**", ""] if small else []
    lines += [f"**Claim:** {study.claim}", ""]
    for setting in req.settings:
        where = setting_of(req.name, setting)
        lines += [f"**Setting:** {setting_line(setting, where, req.extra, every)}", ""]
    if req.candidate:
        lines += [f"**Candidate:** `{req.candidate}`, under the study's own protocol.", ""]
    if study.rulesets != ("oneshot",):
        labels = dict.fromkeys(s.plan.ruleset.label for s in found)
        lines += [f"**Tuning:** {', '.join(labels)} (the rulesets: docs/studies.md).", ""]
    for s in found:
        if s.title:
            lines += [f"## {s.title.capitalize()}", ""]
        lines += [texts[id(s)], ""]
    if len({s.plan.ruleset for s in found}) > 1:
        lines += rulesets_table(req, found, runs_of)
    if len(req.settings) > 1 and study.target is not None:
        lines += profile_lines(req, found, runs_of)
    if req.variants:
        lines += variants_table(req, found, texts, bool(small))
    text = "\n".join(lines)
    text = unjudged(text) if small else text
    return (
        text
        + "\n\n### Sweeps (Hydra multiruns)\n\n"
        + "\n".join(commands)
        + wall
        + "\n\n"
        + reproduce(req.name, req.out, every)
    )


def saved_request(req: Request) -> Request:
    """--report-only: the request as study.json recorded it (what ran), the command's --out kept."""
    from backprop_lab.lab.studies.tuning import parse_rulesets

    path = req.out / "study.json"
    if not path.is_file():
        return req
    saved = json.loads(path.read_text())
    rulesets = parse_rulesets(",".join(saved.get("rulesets") or [])) if saved.get("rulesets") else ()
    return replace(
        req,
        candidate=req.candidate or saved.get("candidate"),
        extra=saved.get("overrides", req.extra),
        settings=tuple(saved.get("settings") or [saved.get("setting", "mnist1d")]),
        rulesets=tuple(rulesets) if isinstance(rulesets, list) else (),
        target=saved.get("target"),
        variants=bool(saved.get("variants")),
        self_tuning=bool(saved.get("self_tuning")),
        seeds=saved.get("seeds", req.seeds),
        config_dir=Path(saved["config_dir"]) if saved.get("config_dir") else req.config_dir,
    )


def run_study(req: Request) -> Path:
    """Run the study's sections into req.out (unless report_only), then write its report there."""
    from backprop_lab.lab.report import write_report
    from backprop_lab.lab.studies.runner import miniature, sweep_runner
    from backprop_lab.lab.studies.tuning import parse_rulesets

    study = STUDIES[req.name]
    req.out.mkdir(parents=True, exist_ok=True)
    if req.report_only:
        req = saved_request(req)
    if not req.rulesets:
        default = parse_rulesets(study.rulesets[0])
        assert isinstance(default, list)
        req = replace(req, rulesets=tuple(default))
    count = req.seeds or (2 if req.smoke else SEEDS)
    seeds = ",".join(str(seed) for seed in range(count))
    found = sections(req, req.rulesets, seeds)
    setup = req.out / "study.json"  # what --report-only needs to recompute the same verdicts
    saved = json.loads(setup.read_text()) if req.report_only and setup.is_file() else {}
    small = saved.get("miniature")
    commands_file = req.out / "commands.md"
    commands = commands_file.read_text().splitlines() if req.report_only and commands_file.is_file() else []
    wall = f"\n\nWall time of the sweeps: {saved['wall_s']:.0f} s." if "wall_s" in saved else ""
    if not req.report_only:
        first = setting_of(req.name, req.settings[0])
        small = miniature(first, req.smoke, count, req.extra, req.config_dir)
        chosen = {
            "study": req.name,
            "setting": req.settings[0],
            "settings": list(req.settings),
            "rulesets": [r.label for r in req.rulesets],
            "candidate": req.candidate,
            "config_dir": str(req.config_dir or ""),
            "overrides": req.extra,
            "target": req.target,
            "variants": req.variants,
            "self_tuning": req.self_tuning,
            "seeds": count,
            "miniature": small,  # (None: the study's own protocol ran)
        }
        setup.write_text(json.dumps(chosen))
        if small:
            print(f"[{req.name}] {small}", flush=True)
        started = time.time()
        for s in found:
            assert s.plan.folder is not None
            s.plan.folder.mkdir(parents=True, exist_ok=True)
            run_sweep = sweep_runner(req, s.plan, [*s.overrides, *req.extra], commands, commands_file)
            study.sweeps(run_sweep, s.plan)
        chosen["wall_s"] = time.time() - started
        setup.write_text(json.dumps(chosen))
        wall = f"\n\nWall time of the sweeps: {chosen['wall_s']:.0f} s."
    verdict = assemble(req, found, small, commands, wall)
    return write_report([req.out], req.out, ["test/acc"], title=f"Study: {req.name}", verdict=verdict)
