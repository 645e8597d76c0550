"""One run: composed config -> validated settings -> data, model, stages -> the run folder.

`run` never raises for a bad setting, a diverged loss or a crash: it records the outcome in
summary.json (status completed / diverged / failed / interrupted) and returns the summary.
"""
from __future__ import annotations

import logging
import os
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .console import err_console, show_choices, show_results, StageProgress
from .errors import ConfigError
from .runlog import RunLog, versions

log = logging.getLogger(__name__)
GROUPS = ("data", "model", "act", "regularizer", "optimizer", "scheduler", "pretrain", "trainer", "logger")


def registered_names() -> dict[str, tuple[str, ...]]:
    from .activations import ACTIVATIONS
    from .data import DATASETS
    from .models import MODELS
    from .optimizers import OPTIMIZERS, SCHEDULERS
    from .pretrain import PRETRAIN_STRATEGIES
    return {"act": tuple(ACTIVATIONS), "optimizer": tuple(OPTIMIZERS), "scheduler": SCHEDULERS,
            "model": tuple(MODELS), "data": tuple(DATASETS), "pretrain": PRETRAIN_STRATEGIES,
            "logger": ("none", "tensorboard")}


def resolve_device(name: str) -> Any:
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= count:
            raise ConfigError("trainer.device", name, f"this machine has {count} CUDA device(s): use trainer.device=auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device", name, "MPS is not available here: use trainer.device=auto or cpu")
    return torch.device(name)


def _setup_torch(trainer: Any, device: Any) -> None:
    import torch
    if trainer.threads is not None:
        torch.set_num_threads(trainer.threads)
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
    return {"stage": result.stage, "status": result.status, "steps": result.steps, "epochs": round(result.epochs, 3),
            "seconds": round(result.seconds, 3), "best_step": result.best_step,
            "stopped_early": result.stopped_early, "metrics": metrics}


def run(cfg: DictConfig, run_dir: Path, choices: dict[str, str], overrides: list[str]) -> dict[str, Any]:
    """Train one configuration into `run_dir`; returns what summary.json says."""
    started = time.time()
    runlog = RunLog(run_dir)
    summary: dict[str, Any] = {
        "status": "running", "error": None, "metrics": {}, "choices": choices, "seed": cfg.get("seed"),
        "overrides": overrides, "run_dir": str(run_dir),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    runlog.summary(**summary)
    stages: list[dict[str, Any]] = []
    try:
        from .validate import validate
        validate(OmegaConf.to_container(cfg, resolve=True), registered_names())
        import torch

        from .data import load_arrays
        from .pretrain import plan, run_stages
        from .regularizers import active_regularizers
        if cfg.logger.name == "tensorboard":
            runlog.attach_tensorboard()
        device = resolve_device(cfg.trainer.device)
        _setup_torch(cfg.trainer, device)
        arrays = load_arrays(cfg.data)  # (mnist1d reseeds NumPy's global RNG: seed torch after it)
        torch.manual_seed(cfg.seed)
        p = plan(cfg, arrays, device)
        summary.update(regularizers_active=active_regularizers(cfg.regularizer), device=str(device),
                       sizes=p.target.sizes(), num_params=sum(t.numel() for t in p.model.parameters()),
                       monitor=cfg.trainer.monitor, versions=versions())
        show_choices(choices, {"seed": cfg.seed, "device": device, "data sizes": p.target.sizes(),
                                             "parameters": summary["num_params"], "run folder": run_dir})

        def on_stage_end(result: Any, model: Any) -> None:
            stages.append(_stage_summary(result))
            summary["stages"] = stages
            runlog.summary(**summary)  # a stage's results are on disk before the next stage starts
            if not cfg.trainer.save_weights:
                return
            if result.stage == "pretrain":
                torch.save(model.state_dict(), runlog.weights_path("pretrain.pt"))
            else:
                torch.save(model.state_dict(), runlog.weights_path("best.pt"))
                torch.save(result.last_state, runlog.weights_path("last.pt"))

        results = run_stages(cfg, p, runlog, StageProgress(cfg.trainer.progress), on_stage_end)
        final = stages[-1]
        summary.update(status="completed" if all(r.status == "completed" for r in results) else "diverged",
                       metrics=final["metrics"], best_step=final["best_step"], steps=final["steps"])
        if summary["status"] == "diverged":
            summary["error"] = f"non-finite loss in stage {final['stage']} at step {final['steps']}"
            err_console.print(f"diverged: {summary['error']}; lower optimizer.lr or set trainer.grad_clip")
    except ConfigError as err:
        summary.update(status="failed", error=str(err))
        err_console.print(f"error: {err}", markup=False)
    except KeyboardInterrupt:
        summary.update(status="interrupted", error="interrupted by the user")
        raise
    except Exception as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("run failed:\n%s", traceback.format_exc())
        summary.update(status="failed", error=f"{type(err).__name__}: {err}")
        err_console.print(f"error: {type(err).__name__}: {err} (traceback in {run_dir}/train.log; "
                          "HYDRA_FULL_ERROR=1 shows it here)", markup=False)
    finally:
        summary.update(stages=stages, wall_time_s=round(time.time() - started, 3),
                       finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        runlog.summary(**summary)
        runlog.hparams({**choices, "seed": cfg.get("seed"), "lr": cfg.optimizer.get("lr")}, summary["metrics"])
        runlog.close()
    if stages:
        show_results(summary["status"], stages, str(run_dir))
    return summary
