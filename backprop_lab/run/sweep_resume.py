"""`backprop-lab resume SWEEP_DIR`: finish an interrupted sweep in its own folder.

The sweep is launched again from what Hydra recorded in SWEEP_DIR/multirun.yaml (its overrides, its
launcher, the user's --config-dir), into the same folder, so every job gets the same number N/. Each
job then looks at its folder before it trains: a completed or diverged job is kept as it is (and a
failed one, unless --retry-failed), an interrupted or killed one resumes from its checkpoint, and one
that never started (or left no checkpoint) starts afresh. The decision is made where the job runs,
which is any launcher's process (joblib's workers, a SLURM node): this process tells them through the
environment variable RESUME_ENV, which they inherit.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from backprop_lab.errors import RefusedError

RESUME_ENV = "BACKPROP_LAB_RESUME_SWEEP"  # "keep-failed" or "retry-failed" while a sweep resumes
UNFINISHED = ("interrupted", "running")  # running: killed before it could record anything


def is_sweep(path: Path) -> bool:
    return (Path(path) / "multirun.yaml").is_file()


def resuming() -> bool:
    return os.environ.get(RESUME_ENV) in ("keep-failed", "retry-failed")


def sweep_argv(sweep_dir: Path) -> list[str]:
    """`backprop-lab train` arguments that launch the recorded sweep again, into `sweep_dir`."""
    from omegaconf import OmegaConf

    try:
        recorded: Any = OmegaConf.load(sweep_dir / "multirun.yaml")
        task, hydra = list(recorded.hydra.overrides.task), list(recorded.hydra.overrides.hydra)
        sources = list(recorded.hydra.runtime.config_sources)
        sweeper = str(recorded.hydra.sweeper.get("_target_", ""))
    except Exception as err:
        reason = " ".join(str(err).split())  # (a YAML error spans lines: one line here)
        raise RefusedError(f"SWEEP_DIR={sweep_dir} is not valid: its multirun.yaml cannot be read ({reason})") from None
    if "BasicSweeper" not in sweeper:
        raise RefusedError(
            f"SWEEP_DIR={sweep_dir} is not valid: its sweeper ({sweeper.rpartition('.')[2]}) chooses its jobs as it "
            "goes; resume its runs one by one (backprop-lab resume RUN_DIR)"
        )
    own = [str(s.path) for s in sources if s.provider == "command-line" and s.schema == "file"]
    kept = [o for o in hydra if not o.startswith(("hydra.sweep.dir=", "hydra.mode=", "hydra.run.dir="))]
    return [*(["--config-dir", own[0]] if own else []), "-m", *kept, *task, f"hydra.sweep.dir={sweep_dir}"]


def verify(sweep_dir: Path, argv: list[str]) -> str | None:
    """Why the recorded sweep cannot be resumed as it stands, in one line (None: it can), read only,
    before anything is launched or written: a job's folder whose settings differ from what
    multirun.yaml would now give it (an edited multirun.yaml: the job's runs were made with the other
    value), a damaged summary.json (resuming would retrain over it), or a checkpoint that does not load."""
    from omegaconf import OmegaConf

    from backprop_lab.errors import ConfigError
    from backprop_lab.run.job_check import job_overrides

    task = [a for a in argv if "=" in a and not a.startswith(("hydra.", "hydra/", "-"))]
    jobs = job_overrides(task, multirun=True) or []
    expected = {str(k): [o.input_line for o in job] for k, job in enumerate(jobs)}
    for job_dir in sorted(job_dirs(sweep_dir), key=lambda p: int(p.name)):
        name = f"SWEEP_DIR={sweep_dir}: job {job_dir.name}"
        try:
            recorded = [str(o) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
        except Exception:
            recorded = None  # (a job killed before Hydra wrote it: it starts again)
        wanted = expected.get(job_dir.name)
        if recorded is not None and wanted is not None and recorded != wanted:
            return f"{name} ran {_difference(recorded, wanted)}; restore multirun.yaml, or start a new sweep"
        path = job_dir / "summary.json"
        if path.exists() and read_summary(job_dir) is None:
            return (
                f"{name}: its summary.json is damaged (not a run's summary), and resuming would train it again "
                "over its results: repair or remove it"
            )
        if action(job_dir) == "resume":
            from backprop_lab.run.checkpoint import load_checkpoint

            try:
                load_checkpoint(job_dir)
            except ConfigError as err:
                return f"{name}: {err.allowed}"
    return None


def _difference(recorded: list[str], wanted: list[str]) -> str:
    """The first setting in which a job's recorded overrides and multirun.yaml's differ, both values."""

    def split(items: list[str]) -> dict[str, str]:
        pairs = (o.lstrip("+~").partition("=") for o in items)
        return {key: value for key, _, value in pairs}

    was, now = split(recorded), split(wanted)
    key = next(k for k in [*was, *now] if was.get(k) != now.get(k))
    return f"with {key}={was.get(key, '(unset)')}, and multirun.yaml now gives it {key}={now.get(key, '(unset)')}"


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def action(run_dir: Path) -> str:
    """What a resumed sweep does with this job's folder: keep, resume or start."""
    summary = read_summary(run_dir)
    status = summary.get("status") if summary else None
    if status in ("completed", "diverged", "failed"):
        return "start" if os.environ.get(RESUME_ENV) == "retry-failed" and status != "completed" else "keep"
    if status in UNFINISHED and (Path(run_dir) / "checkpoints" / "last.pt").is_file():
        return "resume"
    return "start"


def finish_job(job: Any) -> dict[str, Any]:
    """Run one job of a resumed sweep: its summary, kept, resumed or trained from the start."""
    from backprop_lab.run.training import resume, run_members

    todo = action(job.run_dir)
    if todo == "keep":
        summary = read_summary(job.run_dir)
        assert summary is not None  # (action keeps only a readable summary)
        return summary
    if todo == "resume":
        return resume(job.run_dir)
    clear(job.run_dir)
    return run_members([job])[0]


def clear(run_dir: Path) -> None:
    """What a job that starts again must not find: the metrics, summary, weights and checkpoint of an
    earlier attempt (Hydra has just rewritten its .hydra/)."""
    for name in ("metrics.jsonl", "summary.json"):
        (Path(run_dir) / name).unlink(missing_ok=True)
    for name in ("weights", "checkpoints"):
        shutil.rmtree(Path(run_dir) / name, ignore_errors=True)


def plan(sweep_dir: Path) -> dict[str, list[str]]:
    """{action: job folders} for the jobs that have a folder; jobs without one will start."""
    found: dict[str, list[str]] = {"keep": [], "resume": [], "start": []}
    for job_dir in sorted(job_dirs(sweep_dir), key=lambda p: int(p.name)):
        found[action(job_dir)].append(job_dir.name)
    return found


def job_dirs(sweep_dir: Path) -> list[Path]:
    return [p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()]


def outcome(sweep_dir: Path, before: dict[str, list[str]]) -> str:
    """One line: what the resume kept, resumed and started, and how the sweep stands now."""
    statuses: dict[str, int] = {}
    for job_dir in job_dirs(sweep_dir):
        summary = read_summary(job_dir)
        status = summary.get("status", "unknown") if summary else "unfinished"
        statuses[status] = statuses.get(status, 0) + 1
    jobs = sum(statuses.values())
    started = jobs - len(before["keep"]) - len(before["resume"])
    now = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    return (
        f"sweep {sweep_dir}: kept {len(before['keep'])}, resumed {len(before['resume'])}, started {started}; now {now}"
    )
