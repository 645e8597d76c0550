"""One run: composed config -> validated settings -> data, model, stages -> the run folder.

`run` never raises for a bad setting, a diverged loss or a crash: it records the outcome in
summary.json (status completed / diverged / failed / interrupted) and returns the summary.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from backprop_lab.console import console, err_console, show_choices, show_members, show_results
from backprop_lab.errors import ConfigError, RefusedError
from backprop_lab.run.runlog import RunLog, versions

if TYPE_CHECKING:  # (torch is imported only inside a run)
    from backprop_lab.engine.distributed import World

log = logging.getLogger(__name__)


def registered_names() -> dict[str, tuple[str, ...]]:
    from backprop_lab.components.activations import ACTIVATIONS
    from backprop_lab.components.models import MODELS
    from backprop_lab.components.optimizers import OPTIMIZERS, SCHEDULERS
    from backprop_lab.data.datasets import DATASETS
    from backprop_lab.run.pretrain import PRETRAIN_STRATEGIES

    return {
        "act": tuple(ACTIVATIONS),
        "optimizer": tuple(OPTIMIZERS),
        "scheduler": SCHEDULERS,
        "model": tuple(MODELS),
        "data": tuple(DATASETS),
        "pretrain": PRETRAIN_STRATEGIES,
    }


def resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= count:
            raise ConfigError(
                "trainer.device", name, f"this machine has {count} CUDA device(s): use trainer.device=auto or cpu"
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device", name, "MPS is not available here: use trainer.device=auto or cpu")
    return torch.device(name)


def threads_per_job() -> int | None:
    """Under hydra/launcher=joblib, the cores shared out among the parallel jobs (at least 1 each), so
    jobs x threads fit the machine; under submitit, the job's cpus_per_task; None elsewhere (torch's
    default)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    launcher, name = HydraConfig.get().launcher, launcher_name()
    if name == "submitit":
        return launcher.get("cpus_per_task") or None
    if name != "joblib":
        return None
    cores = os.cpu_count() or 1
    n_jobs = int(launcher.get("n_jobs") or -1)
    parallel = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib: -1 is all cores, -2 all but one
    return max(1, cores // parallel)


def launcher_name() -> str:
    """The Hydra launcher running this job ('basic', 'joblib', ...; 'basic' outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return "basic"
    target = str(HydraConfig.get().launcher.get("_target_", ""))
    for name in ("joblib", "vectorized", "submitit"):
        if name in target.lower():
            return name
    return "basic"


def check_data_parallel(cfg: DictConfig, world: World, count: int) -> None:
    """What torchrun's data parallelism needs, as one-line errors."""
    if count > 1 or launcher_name() in ("joblib", "vectorized"):
        raise ConfigError(
            "hydra/launcher",
            "vectorized" if count > 1 else launcher_name(),
            "runs jobs in parallel in one process or in workers; under torchrun, "
            "sweep with the basic launcher (the default)",
        )
    if cfg.trainer.batch_size % world.size:
        raise ConfigError(
            "trainer.batch_size",
            cfg.trainer.batch_size,
            f"is the global batch, split over {world.size} processes: use a multiple of {world.size}",
        )


def check_one_process_per_job() -> None:
    """submitit starts tasks_per_node x nodes copies of a job, which would all write one run folder."""
    from hydra.core.hydra_config import HydraConfig

    if launcher_name() != "submitit":
        return
    launcher = HydraConfig.get().launcher
    tasks = int(launcher.get("tasks_per_node") or 1) * int(launcher.get("nodes") or 1)
    if tasks > 1:
        raise ConfigError(
            "hydra.launcher.tasks_per_node",
            launcher.get("tasks_per_node"),
            "each job is one process (tasks_per_node=1, nodes=1); for data parallel on SLURM run "
            "torchrun inside an sbatch script (docs/scaling.md)",
        )


def _setup_torch(trainer: Any, device: Any) -> None:
    import torch

    threads = trainer.threads if trainer.threads is not None else threads_per_job()
    if threads is not None:
        torch.set_num_threads(threads)
    if trainer.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _stage_summary(result: Any) -> dict[str, Any]:
    metrics = {f"val/{k}": v for k, v in result.best.items()}
    metrics.update({f"test/{k}": v for k, v in result.test.items()})
    metrics.update({f"train/{k}": v for k, v in result.last_train.items()})
    if "train/acc" in metrics and "val/acc" in metrics:
        metrics["gap/acc"] = metrics["train/acc"] - metrics["val/acc"]
    metrics.update(result.target)
    return {
        "stage": result.stage,
        "status": result.status,
        "steps": result.steps,
        "epochs": round(result.epochs, 3),
        "seconds": round(result.seconds, 3),
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "metrics": metrics,
        **({"reused_from": result.reused_from} if result.reused_from else {}),
    }


@dataclass
class Job:
    """One run as Hydra launched it: its config (without the hydra node), folder, choices and overrides."""

    cfg: DictConfig
    run_dir: Path
    choices: dict[str, str]
    overrides: list[str]
    sweep_dir: str | None = None  # the sweep's folder, for a job of a sweep (MLflow's experiment)
    trial: dict[str, Any] | None = None  # the Optuna trial this job is (search.trial_of_job)
    recipe: str | None = None  # the published recipe train.yaml applied (configs/recipe/), if any


def run(cfg: DictConfig, run_dir: Path, choices: dict[str, str], overrides: list[str]) -> dict[str, Any]:
    """Train one configuration into `run_dir`; returns what summary.json says."""
    return run_members([Job(cfg, run_dir, choices, overrides)])[0]


def resume(run_dir: Path) -> dict[str, Any]:
    """Continue an interrupted or killed run in its own folder from its last checkpoint."""
    from backprop_lab.run.folder_lock import hold, release

    run_dir = Path(run_dir)
    taken = hold(run_dir)  # before anything is read or rewritten: another process may be training it
    try:
        return _resume(run_dir)
    finally:
        if taken:
            release(run_dir)


def resumable(run_dir: Path) -> tuple[dict[str, Any], DictConfig]:
    """A run folder's summary and config if it can be resumed, read only (nothing is locked or written
    before this says yes); else the ConfigError that says why."""
    from backprop_lab.run.checkpoint import checkpoint_path

    try:
        previous = json.loads((run_dir / "summary.json").read_text())
        if not isinstance(previous, dict):
            raise ValueError("its summary.json is not a run's summary")
        if previous.get("status") in ("completed", "diverged", "pruned"):
            raise ConfigError(
                "RUN_DIR", str(run_dir), f"has already finished ({previous['status']}); nothing to resume"
            )
        cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        if not isinstance(cfg, DictConfig):
            raise ValueError("its .hydra/config.yaml is not a mapping")
    except ConfigError:
        raise
    except (OSError, ValueError) as err:
        raise ConfigError(
            "RUN_DIR",
            str(run_dir),
            f"is not a readable run folder ({type(err).__name__}: it needs summary.json and .hydra/config.yaml)",
        ) from None
    if not checkpoint_path(run_dir).is_file():
        from backprop_lab.run.checkpoint import load_checkpoint

        load_checkpoint(run_dir)  # (its one line: no checkpoint, and why there may be none)
    return previous, cfg


def _resume(run_dir: Path) -> dict[str, Any]:
    from backprop_lab.run.checkpoint import load_checkpoint
    from backprop_lab.run.runlog import read_metrics, rewrite_metrics

    previous, cfg = resumable(run_dir)
    state = load_checkpoint(run_dir)
    console.print(f"resumed from step {state['step']} (stage {state['stage']}) in {run_dir}", markup=False)
    done = [s for s in previous.get("stages", []) if s["stage"] != state["stage"]]
    finished = {s["stage"] for s in done}
    # The rows the interrupted process wrote after its checkpoint will be written again, identically.
    rewrite_metrics(
        run_dir / "metrics.jsonl",
        [
            row
            for row in read_metrics(run_dir / "metrics.jsonl")
            if row.get("stage") in finished
            or (
                row.get("stage") == state["stage"]
                and row.get("split") != "test"
                and (row.get("step") or 0) <= state["step"]
            )
        ],
    )
    job = Job(cfg, run_dir, previous.get("choices", {}), previous.get("overrides", []), recipe=previous.get("recipe"))
    resumed = [
        *previous.get("resumed", []),
        {
            "stage": state["stage"],
            "step": state["step"],
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    ]
    return run_members([job], resume_from=(state, {**previous, "stages": done, "resumed": resumed}))[0]


def _first_summary(job: Job, k: int, jobs: list[Job], resume_from: Any, differing: dict[str, Any]) -> dict[str, Any]:
    """A job's summary.json before it trains (status running); a resumed run keeps its start and history.
    `differing`: the values in which the group's members differ (members.differing_values)."""
    count = len(jobs)
    summary: dict[str, Any] = {
        "status": "running",
        "error": None,
        "metrics": {},
        "choices": job.choices,
        "seed": job.cfg.get("seed"),
        "overrides": job.overrides,
        "run_dir": str(job.run_dir),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if job.recipe:
        summary["recipe"] = job.recipe
    if count > 1:
        summary["vectorized"] = {"member": k, "members": count, "seeds": [j.cfg.get("seed") for j in jobs]}
        if differing:
            summary["vectorized"]["differing"] = differing
    if resume_from is not None:  # (a member of a vectorized group resumes alone)
        summary.update(
            {key: resume_from[1][key] for key in ("started_at", "resumed", "vectorized") if key in resume_from[1]}
        )
    return summary


def check_settings(cfg: DictConfig, choices: dict[str, str]) -> dict[str, Any]:
    """What a run checks of its config before any data loads, as ConfigErrors: the values (validate.py)
    and that every `_target_` imports. Returns the config as plain values."""
    from backprop_lab import targets
    from backprop_lab.run.validate import validate

    targets.complete(cfg, choices)
    values = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(values, dict)  # the composed config is a mapping
    validate(values, registered_names)
    from backprop_lab.groups import missing_package

    missing = missing_package("optimizer", str(cfg.optimizer.get("name")))
    if missing:
        raise ConfigError("optimizer", cfg.optimizer.name, missing)
    if "lr" not in cfg.optimizer:  # (schedules, the members' rates and the logs read it)
        option = choices.get("optimizer") or cfg.optimizer.get("name") or cfg.optimizer.get("_target_")
        raise ConfigError("optimizer", option, "its YAML has no lr: add its learning rate (lr: 0.001)")
    for group in targets.TARGET_GROUPS:  # a target that does not import is refused before any data loads
        if targets.is_target(cfg[group]):
            targets.resolve(group, cfg[group])
    return {str(k): v for k, v in values.items()}


def _prepare(
    jobs: list[Job], runlogs: list[RunLog], summaries: list[dict[str, Any]], previous: dict[str, Any] | None
) -> tuple[Any, Any, Any, list[Any]]:
    """Validate every job, then set up: device, torchrun's world, the trackers (a resumed run's
    `previous` summary names its MLflow run), torch, the data and each member's plan (built under its
    own seed, as its own run would be). Returns (device, world, arrays, plans)."""
    for job in jobs:
        check_settings(job.cfg, job.choices)
    import torch

    from backprop_lab.data.datasets import load_arrays
    from backprop_lab.engine import distributed
    from backprop_lab.run import gc_pause
    from backprop_lab.run.pretrain import plan

    cfg = jobs[0].cfg
    device = resolve_device(cfg.trainer.device)
    if distributed.from_environment().active:  # before joining the group: every rank refuses alike
        check_data_parallel(cfg, distributed.from_environment(), len(jobs))
    check_one_process_per_job()
    world, device = distributed.start(device)
    if world.main:
        from backprop_lab.run.trackers import attach

        for job, runlog, summary in zip(jobs, runlogs, summaries, strict=True):
            summary.update(attach(runlog, job, previous))
    _setup_torch(cfg.trainer, device)
    arrays = load_arrays(cfg.data)  # (mnist1d reseeds NumPy's global RNG: seed torch after it)
    plans = []
    for job in jobs:
        torch.manual_seed(job.cfg.seed)
        plans.append(plan(job.cfg, arrays, device))
        plans[-1].rng = torch.get_rng_state()  # where its own run goes on from (_stage_each)
    gc_pause.resume()  # (start-up is over)
    return device, world, arrays, plans


def _progress_label(jobs: list[Job]) -> str:
    """Which run the progress line shows: a sweep's job by its folder; a batched group's first member
    (the line shows its metrics) by the overrides in which the members differ."""
    from backprop_lab.console import differing_overrides

    where = f"job {jobs[0].run_dir.name}" if jobs[0].sweep_dir is not None else ""
    if len(jobs) == 1:
        return where
    differ = differing_overrides([job.overrides for job in jobs])
    first = " ".join(f"{key}={values[0]}" for key, values in differ.items())
    return f"{where}{', ' if where else ''}member 1 of {len(jobs)}" + (f": {first}" if first else "")


def _train(
    jobs: list[Job], plans: list[Any], runlogs: list[RunLog], world: Any, resume_from: Any, on_stage_end: Any
) -> list[list[Any]]:
    """Every stage of one run, or the one stage of a vectorized group; each job's stage results."""
    from backprop_lab.console import StageProgress
    from backprop_lab.run.checkpoint import Checkpointer

    cfg, p = jobs[0].cfg, plans[0]
    progress = StageProgress(cfg.trainer.progress, _progress_label(jobs))
    if len(jobs) == 1:
        from backprop_lab.run.pretrain import run_stages

        checkpointer = Checkpointer(jobs[0].run_dir, cfg.trainer.checkpoint_every) if world.main else None
        resume = resume_from[0] if resume_from else None
        stage_end = lambda r, state: on_stage_end(0, r, state)  # noqa: E731
        results = run_stages(cfg, p, runlogs[0], progress, stage_end, checkpointer, resume, world)
        if checkpointer is not None:
            checkpointer.remove()  # finished (completed or diverged): weights/ holds what is worth keeping
        return [results]
    return _train_group(jobs, plans, runlogs, progress, on_stage_end)


def _train_group(
    jobs: list[Job], plans: list[Any], runlogs: list[RunLog], progress: Any, on_stage_end: Any
) -> list[list[Any]]:
    """A vectorized group: each job's pretraining stage alone (if it has one), then the last stage of
    those whose earlier stages completed as one batched model. Each job's stage results."""
    from backprop_lab.run.checkpoint import Checkpointer

    cfg = jobs[0].cfg
    # each member's checkpoint is an ordinary run's: `backprop-lab resume` continues it alone
    checkpointers = [Checkpointer(job.run_dir, cfg.trainer.checkpoint_every) for job in jobs]
    per_job: list[list[Any]] = [[] for _ in jobs]
    if cfg.pretrain.name != "none":
        per_job = _stage_each(jobs, plans, runlogs, progress, on_stage_end, checkpointers)
    ready = [k for k, done in enumerate(per_job) if all(r.status == "completed" for r in done)]
    if len(ready) == 1:  # (the others' pretraining diverged)
        from backprop_lab.run.pretrain import fit_stage, steps_for

        k = ready[0]
        steps = steps_for(cfg.trainer, len(plans[k].target.x_train))
        result = fit_stage(
            jobs[k].cfg, plans[k].model, plans[k].target, "finetune", steps, runlogs[k], progress,
            checkpoint=checkpointers[k],
        )  # fmt: skip
        on_stage_end(k, result, plans[k].model.state_dict())
        per_job[k].append(result)
    elif ready:
        pick = lambda items: [items[k] for k in ready]  # noqa: E731
        together = _train_together(pick(jobs), pick(plans), pick(runlogs), progress, pick(checkpointers))
        for k, (result, weights) in zip(ready, together, strict=True):
            on_stage_end(k, result, weights)
            per_job[k].append(result)
    for checkpointer in checkpointers:
        checkpointer.remove()
    return per_job


def _stage_each(
    jobs: list[Job], plans: list[Any], runlogs: list[RunLog], progress: Any, on_stage_end: Any, checkpointers: list[Any]
) -> list[list[Any]]:
    """Each job's pretraining stage, one job after another, each from where its own run would start it
    (torch's random state after its plan), then its new head and frozen blocks: what run_stages does
    before the fine-tune, which the jobs then train together. Each job's stage results so far."""
    import torch

    from backprop_lab.run.pretrain import pretraining_stage, ready_to_finetune

    results: list[list[Any]] = []
    for k, (job, q) in enumerate(zip(jobs, plans, strict=True)):
        torch.set_rng_state(q.rng)
        done = []
        if job.cfg.pretrain.name in ("supervised", "autoencoder"):
            done.append(pretraining_stage(job.cfg, q, runlogs[k], progress, None, {"checkpoint": checkpointers[k]}))
            on_stage_end(k, done[0], q.model.state_dict())
        if all(r.status == "completed" for r in done):
            ready_to_finetune(job.cfg, q)
        results.append(done)
    return results


def _train_together(
    jobs: list[Job], plans: list[Any], runlogs: list[RunLog], progress: Any, checkpointers: list[Any]
) -> list[tuple[Any, dict[str, Any]]]:
    """The jobs' (last) stage as one batched model: each member's result and (best) weights."""
    from backprop_lab.run.pretrain import fit_members, steps_for
    from backprop_lab.vectorized.members import Members

    cfg, target = jobs[0].cfg, plans[0].target
    model = Members([q.model for q in plans])
    per_member = fit_members(
        cfg,
        model,
        target,
        "train" if cfg.pretrain.name == "none" else "finetune",
        steps_for(cfg.trainer, len(target.x_train)),
        [job.cfg.seed for job in jobs],
        runlogs,
        progress,
        member_cfgs=[job.cfg for job in jobs],  # (optimizers, schedules, l1, l2, dropout may differ: BATCHED_KEYS)
        checkpoint=checkpointers,
    )
    return [(result, model.member_state(k)) for k, result in enumerate(per_member)]  # (fit left the best in)


def run_members(
    jobs: list[Job], resume_from: tuple[dict[str, Any], dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Train jobs whose configs differ only in the seed and members.BATCHED_KEYS as one batched model
    (members.Members), each into its own run folder; one job is an ordinary run, which `resume_from`
    (a checkpoint and the summary it belongs to) continues. Returns each job's summary. Each folder is
    locked while it trains (folder_lock): a folder another process holds is refused, untouched."""
    from backprop_lab.run.folder_lock import FolderInUse, hold, release

    taken: list[Path] = []
    try:
        for job in jobs:
            if hold(job.run_dir):
                taken.append(job.run_dir)
    except FolderInUse as err:
        for run_dir in taken:
            release(run_dir)
        err_console.print(f"error: {err}", markup=False)
        return [{"status": "failed", "error": str(err), "refused": True, "run_dir": str(j.run_dir)} for j in jobs]
    try:
        return _run_members(jobs, resume_from)
    finally:
        for run_dir in taken:
            release(run_dir)


def _run_members(
    jobs: list[Job], resume_from: tuple[dict[str, Any], dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    started = time.time()
    cfg, count = jobs[0].cfg, len(jobs)
    runlogs = [RunLog(job.run_dir) for job in jobs]
    differing: dict[str, Any] = {}
    if count > 1:  # (once for the group: each member's config read, K of them)
        from backprop_lab.vectorized.members import differing_values

        differing = differing_values([job.cfg for job in jobs])
    summaries = [_first_summary(job, k, jobs, resume_from, differing) for k, job in enumerate(jobs)]
    for runlog, summary in zip(runlogs, summaries, strict=True):
        runlog.summary(**summary)
    stages: list[list[dict[str, Any]]] = [[] for _ in jobs]
    if resume_from is not None:
        stages[0] = list(resume_from[1]["stages"])

    def update(**values: Any) -> None:
        for summary in summaries:
            summary.update(values)

    def on_stage_end(k: int, result: Any, state: dict[str, Any]) -> None:
        import torch

        stages[k].append(_stage_summary(result))
        summaries[k]["stages"] = stages[k]
        runlogs[k].summary(**summaries[k])  # a stage's results are on disk before the next stage starts
        if cfg.trainer.save_weights:
            if result.stage == "pretrain":
                torch.save(state, runlogs[k].weights_path("pretrain.pt"))
            else:
                torch.save(state, runlogs[k].weights_path("best.pt"))
                torch.save(result.last_state, runlogs[k].weights_path("last.pt"))

    try:
        previous = resume_from[1] if resume_from is not None else None
        device, world, arrays, plans = _prepare(jobs, runlogs, summaries, previous)
        import torch

        from backprop_lab.components.regularizers import active_regularizers

        p = plans[0]
        if count > 1 and device.type == "cpu":  # (a batched model's large products: members.gemm_backend)
            from backprop_lab.vectorized.members import gemm_backend

            update(member_gemm=gemm_backend())
        update(
            regularizers_active=active_regularizers(cfg.regularizer),
            device=str(device),
            inputs=arrays.normalization,
            sizes=p.target.sizes(),
            num_params=sum(t.numel() for t in p.model.parameters()),
            monitor=cfg.trainer.monitor,
            versions=versions(),
            torch_threads=torch.get_num_threads(),
            world_size=world.size,
            **({"batch_per_process": cfg.trainer.batch_size // world.size} if world.active else {}),
        )
        for job, summary in zip(jobs, summaries, strict=True):  # (members may differ in l1 / l2)
            summary["regularizers_active"] = active_regularizers(job.cfg.regularizer)
        seeds = [job.cfg.seed for job in jobs]
        show_choices(
            {**jobs[0].choices, **({"recipe": jobs[0].recipe} if jobs[0].recipe else {})},
            {
                "seed": seeds[0] if count == 1 else f"{seeds} (vectorized)",
                **({"lr": [job.cfg.optimizer.get("lr") for job in jobs]} if count > 1 else {}),
                "device": device,
                "data sizes": p.target.sizes(),
                "parameters": summaries[0]["num_params"],
                "run folder": jobs[0].run_dir if count == 1 else jobs[0].run_dir.parent,
            },
        )
        results = _train(jobs, plans, runlogs, world, resume_from, on_stage_end)
        for k, summary in enumerate(summaries):
            _conclude(summary, stages[k][-1], results[k], count, plans[k].target.num_classes)
    except RefusedError as err:
        update(status="failed", error=str(err), refused=True)  # bad input, as opposed to a crash
        err_console.print(f"error: {err}", markup=False)
    except KeyboardInterrupt as err:
        from backprop_lab.engine.interrupts import Interrupted

        update(status="interrupted", error="interrupted by the user")
        if isinstance(err, Interrupted):  # (the folder `resume` continues: the sweep's, or the run's)
            update(error=f"interrupted by the user at step {err.step} of {err.max_steps} (stage {err.stage})")
            err.resume_dir = jobs[0].sweep_dir or str(jobs[0].run_dir)
        raise
    except Exception as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fault = write_fault(err, jobs[0].run_dir)
        if fault:  # (the disk: no traceback to write, and train.log may not take one)
            update(status="failed", error=fault)
            err_console.print(f"error: {fault}", markup=False)
        else:
            log.error("run failed:\n%s", traceback.format_exc())
            update(status="failed", error=f"{type(err).__name__}: {err}")
            err_console.print(
                f"error: {type(err).__name__}: {err} (traceback in {jobs[0].run_dir}/train.log; "
                "HYDRA_FULL_ERROR=1 shows it here)",
                markup=False,
            )
    finally:
        finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for k, (job, summary, runlog) in enumerate(zip(jobs, summaries, runlogs, strict=True)):
            summary.update(stages=stages[k], wall_time_s=round(time.time() - started, 3), finished_at=finished)
            params = {**job.choices, "seed": job.cfg.get("seed"), "lr": job.cfg.optimizer.get("lr")}
            try:
                runlog.summary(**summary)
                runlog.close(summary, params)
            except OSError as err:  # (a full disk, a folder made read-only: the summary cannot be written)
                if summary.get("status") != "failed":
                    summary.update(status="failed", error=write_fault(err, job.run_dir))
                    err_console.print(f"error: {summary['error']}", markup=False)
    if count == 1 and stages[0]:
        show_results(summaries[0]["status"], stages[0], str(jobs[0].run_dir))
        from backprop_lab.run.published import note

        if line := note(cfg, summaries[0]):
            console.print(line, markup=False)
    elif count > 1 and any(stages):
        show_members(summaries)
    return summaries


WRITE_FAULTS = {  # the errors of a folder that cannot be written, as the run's one line names them
    errno.ENOSPC: "no space left",
    errno.EDQUOT: "over its disk quota",
    errno.EROFS: "a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EIO: "an I/O error",
}


def write_fault(err: BaseException, run_dir: Path) -> str | None:
    """The one line for a run that could not write its folder (a full disk, a lost permission, an I/O
    error), with what to do; None for any other error."""
    if not isinstance(err, OSError) or err.errno not in WRITE_FAULTS:
        return None
    where = f" ({err.filename})" if err.filename else ""
    return (
        f"the run could not write to {run_dir}: {WRITE_FAULTS[err.errno]}{where}; its last checkpoint is intact: "
        f"free space or restore the permission, then backprop-lab resume {run_dir}"
    )


def _conclude(summary: dict[str, Any], final: dict[str, Any], results: list[Any], count: int, classes: int) -> None:
    """A trained job's status and metrics from its last stage; a diverged one says what to try, and a
    completed one whose losses blew up while staying finite is warned about (instability.py)."""
    statuses = {r.status for r in results}
    summary.update(
        status="completed" if statuses == {"completed"} else "pruned" if "pruned" in statuses else "diverged",
        metrics=final["metrics"],
        best_step=final["best_step"],
        steps=final["steps"],
    )
    if summary["status"] == "pruned":  # (the Optuna sweeper's pruner stopped it: search.TrialReporter)
        summary["error"] = f"pruned by the search's pruner at step {final['steps']} of stage {final['stage']}"
    where = f" ({summary['run_dir']})" if count > 1 else ""
    if summary["status"] == "diverged":
        summary["error"] = f"non-finite loss in stage {final['stage']} at step {final['steps']}"
        err_console.print(f"diverged: {summary['error']}; lower optimizer.lr or set trainer.grad_clip{where}")
    if summary["status"] == "completed":
        from backprop_lab.run.instability import loss_warnings

        path = Path(summary["run_dir"]) / "metrics.jsonl"
        summary["warnings"] = loss_warnings(final["metrics"], classes, path, final["stage"])
        for line in summary["warnings"]:
            err_console.print(f"warning: {line}{where}", markup=False)
