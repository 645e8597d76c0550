"""Pretraining strategies: which stages a run has, and how the fine-tune stage starts.

none         one stage, "train", on the target task.
supervised   "pretrain" on data.source_classes, new head, "finetune" on the target classes.
autoencoder  "pretrain" reconstructs the inputs (no labels), then "finetune" with a classifier head.
checkpoint   the body's weights from an earlier run, then "finetune".

Every stage goes through engine.fit with its own optimizer and schedule.
"""
from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .data import Arrays, Split, all_classes, make_split
from .engine import StageResult, fit
from .errors import ConfigError
from .models import Classifier, Reconstructor, build_model
from .optimizers import build_optimizer, build_scheduler
from .regularizers import Regularization

PRETRAIN_STRATEGIES = ("none", "supervised", "autoencoder", "checkpoint")


def resolve_weights_file(path: str) -> Path:
    """A run folder means its weights/best.pt; anything else must be a weights file."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "weights" / "best.pt"
    if not p.is_file():
        raise ConfigError("pretrain.path", path, "no weights there: give a run folder with weights/best.pt, or a .pt file")
    return p


def load_weights(path: str) -> dict[str, torch.Tensor]:
    """Load a state dict without executing code: a file that carries code is refused."""
    file = resolve_weights_file(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError("pretrain.path", path, "refused: the file holds more than tensors (possibly code); "
                          "only plain weight files are loaded (torch.load weights_only=True)") from None
    except Exception as err:
        raise ConfigError("pretrain.path", path, f"could not be read as a weights file ({type(err).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError("pretrain.path", path, "is not a state dict of tensors")
    return state


def load_body(model: Classifier, state: dict[str, torch.Tensor], path: str) -> None:
    """Copy every block weight from `state` into `model`; the head stays new."""
    own = model.state_dict()
    body = {k: v for k, v in state.items() if k.startswith("blocks.")}
    for key, mine in own.items():
        if not key.startswith("blocks."):
            continue
        if key not in body:
            raise ConfigError("pretrain.path", path, f"its weights do not fit this model: no {key} (was it trained with another model.*?)")
        if body[key].shape != mine.shape:
            raise ConfigError("pretrain.path", path, f"its weights do not fit this model: {key} is "
                              f"{list(body[key].shape)} there, {list(mine.shape)} here")
    extra = sorted(set(body) - set(own))
    if extra:
        raise ConfigError("pretrain.path", path, f"its weights do not fit this model: it has {extra[0]}, this model has not")
    model.load_state_dict({**own, **body})


def finetune_hook(model: Classifier, mode: str, unfreeze_every: int) -> Callable[[int], None] | None:
    """Freeze the body as `mode` says; for `gradual`, the hook unfreezes one block (top first) every
    `unfreeze_every` steps."""
    n = len(model.blocks)
    if mode == "full":
        model.set_frozen(set())
        return None
    model.set_frozen(set(range(n)))
    if mode == "freeze":
        return None

    def unfreeze(step: int) -> None:  # right for any step, so a resumed run can call it at its first
        frozen = set(range(n - min(n, step // unfreeze_every)))
        if frozen != model.frozen:
            model.set_frozen(frozen)
    return unfreeze


def steps_for(trainer: Any, n_train: int, steps: int | None = None) -> int:
    """Steps of a stage: `steps` if given, else trainer.max_epochs (when set) or trainer.max_steps."""
    if steps is not None:
        return steps
    if trainer.max_epochs is not None:
        return trainer.max_epochs * max(1, n_train // min(trainer.batch_size, n_train))
    return trainer.max_steps


@dataclass
class Plan:
    """The tasks of one run, built before any training so that every bad setting shows up first."""
    target: Split
    source: Split | None        # supervised: labelled source task; autoencoder: its inputs
    model: Classifier


def plan(cfg: Any, arrays: Arrays, device: torch.device) -> Plan:
    classes = all_classes(arrays)
    for key in ("source_classes", "target_classes"):
        chosen = cfg.data[key]
        if chosen is not None and not set(chosen) <= set(classes):
            raise ConfigError(f"data.{key}", list(chosen), f"the data set's classes are {classes}")
    target_classes = list(cfg.data.target_classes or classes)
    target = make_split(arrays, target_classes, cfg.data, device, cfg.data.n_train, "data.n_train")
    source = None
    name = cfg.pretrain.name
    if name == "supervised":
        source = make_split(arrays, list(cfg.data.source_classes), cfg.data, device, None, "data.source_classes")
    elif name == "autoencoder":  # no labels used, so the label budget does not limit it
        source = make_split(arrays, list(cfg.data.source_classes or target_classes), cfg.data, device, None,
                            "data.source_classes")
    first_classes = source.num_classes if name == "supervised" else target.num_classes
    model = build_model(cfg, target.input_shape, first_classes).to(device)
    if name == "checkpoint":
        load_body(model, load_weights(cfg.pretrain.path), cfg.pretrain.path)
    return Plan(target, source, model)


def fit_stage(cfg: Any, module: torch.nn.Module, split: Split, stage: str, steps: int, log: Any,
              progress: Any, **kwargs: Any) -> StageResult:
    """One stage through engine.fit, with a fresh optimizer, schedule and regularization for `module`."""
    return fit_members(cfg, module, split, stage, steps, [cfg.seed], [log], progress, **kwargs)[0]


def fit_members(cfg: Any, module: torch.nn.Module, split: Split, stage: str, steps: int, seeds: list[int],
                logs: list[Any], progress: Any, **kwargs: Any) -> list[StageResult]:
    """fit_stage for K members at once (`module` is a members.Members when K > 1)."""
    optimizer = build_optimizer(module, cfg.optimizer, cfg.regularizer.decay_bias_and_norm)
    scheduler = build_scheduler(optimizer, cfg.scheduler, steps, cfg.optimizer.lr)
    return fit(module, split, stage=stage, optimizer=optimizer, scheduler=scheduler,
               regularization=Regularization(module, cfg.regularizer), trainer=cfg.trainer,
               max_steps=steps, seeds=seeds, logs=logs, progress=progress, act_name=cfg.act.name, **kwargs)


def run_stages(cfg: Any, p: Plan, log: Any, progress: Any,
               on_stage_end: Callable[[StageResult, dict[str, torch.Tensor]], None],
               checkpoint: Any = None, resume: dict[str, Any] | None = None, world: Any = None) -> list[StageResult]:
    """Train every stage of the plan in order; stop after a stage that did not complete.
    `on_stage_end` gets each stage's result and the model's (best) weights after it. With `resume`
    (a checkpoint), the stages before the checkpoint's are skipped: they finished before it.
    `world` (distributed.World) is this process's place under torchrun."""
    name, model, results = cfg.pretrain.name, p.model, []
    shared = {"checkpoint": checkpoint, **({"world": world} if world is not None else {})}
    if name in ("supervised", "autoencoder") and (resume is None or resume["stage"] == "pretrain"):
        assert p.source is not None
        steps = steps_for(cfg.trainer, len(p.source.x_train), cfg.pretrain.steps)
        if name == "supervised":
            result = fit_stage(cfg, model, p.source, "pretrain", steps, log, progress, resume=resume, **shared)
        else:
            recon = Reconstructor(model, math.prod(p.source.input_shape)).to(p.source.x_train.device)
            result = fit_stage(cfg, recon, p.source, "pretrain", steps, log, progress, resume=resume,
                               reconstruct=True, noise=cfg.pretrain.noise, **shared)
        resume = None
        results.append(result)
        on_stage_end(result, model.state_dict())
        if result.status != "completed":
            return results
    stage = "train"
    hook = None
    if name != "none":
        stage = "finetune"
        model.new_head(p.target.num_classes)
        hook = finetune_hook(model, cfg.pretrain.finetune, cfg.pretrain.unfreeze_every)
    steps = steps_for(cfg.trainer, len(p.target.x_train))
    result = fit_stage(cfg, model, p.target, stage, steps, log, progress, on_step=hook, resume=resume, **shared)
    results.append(result)
    on_stage_end(result, model.state_dict())
    return results
