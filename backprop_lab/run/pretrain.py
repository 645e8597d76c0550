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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backprop_lab.components.activations import activation_class
from backprop_lab.components.models import Classifier, Reconstructor, build_model, has_blocks
from backprop_lab.components.optimizers import build_optimizer, build_scheduler
from backprop_lab.components.regularizers import Regularization
from backprop_lab.data.augment import Augment
from backprop_lab.data.datasets import Arrays, Split, all_classes, make_split
from backprop_lab.engine.distributed import SINGLE, World
from backprop_lab.engine.loop import MemberRates, Reconstruction, StageResult, StageSettings, fit
from backprop_lab.errors import ConfigError

PRETRAIN_STRATEGIES = ("none", "supervised", "autoencoder", "checkpoint")


def resolve_weights_file(path: str) -> Path:
    """A run folder means its weights/best.pt; anything else must be a weights file."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "weights" / "best.pt"
    if not p.is_file():
        raise ConfigError(
            "pretrain.path", path, "no weights there: give a run folder with weights/best.pt, or a .pt file"
        )
    return p


def load_weights(path: str) -> dict[str, torch.Tensor]:
    """Load a state dict without executing code: a file that carries code is refused."""
    file = resolve_weights_file(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(
            "pretrain.path",
            path,
            "refused: the file holds more than tensors (possibly code); "
            "only plain weight files are loaded (torch.load weights_only=True)",
        ) from None
    except Exception as err:
        raise ConfigError(
            "pretrain.path", path, f"could not be read as a weights file ({type(err).__name__})"
        ) from None
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
            raise ConfigError(
                "pretrain.path",
                path,
                f"its weights do not fit this model: no {key} (was it trained with another model.*?)",
            )
        if body[key].shape != mine.shape:
            raise ConfigError(
                "pretrain.path",
                path,
                f"its weights do not fit this model: {key} is {list(body[key].shape)} there, {list(mine.shape)} here",
            )
    extra = sorted(set(body) - set(own))
    if extra:
        raise ConfigError(
            "pretrain.path", path, f"its weights do not fit this model: it has {extra[0]}, this model has not"
        )
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
    source: Split | None  # supervised: labelled source task; autoencoder: its inputs
    model: torch.nn.Module  # a Classifier, or a model of the user's own (which then trains in one stage)
    rng: torch.Tensor | None = None  # torch's random state right after the plan was built


def pretrain_data(cfg: Any) -> Any:
    """The config of pretrain.data (another data option): its shipped defaults, with data.root,
    data.download and the split settings of the run's data, and pretrain.data_path as its path."""
    from importlib import resources

    from omegaconf import DictConfig, OmegaConf

    node = OmegaConf.load(str(resources.files("backprop_lab.configs") / "data" / f"{cfg.pretrain.data}.yaml"))
    assert isinstance(node, DictConfig)  # a data option is a mapping
    for key in ("root", "download", "val_fraction", "split_seed"):
        if key in node and key in cfg.data:
            node[key] = cfg.data[key]
    if "path" in node:
        if cfg.pretrain.get("data_path") is None:
            raise ConfigError(
                "pretrain.data_path", None, f"pretrain.data={cfg.pretrain.data} needs the path of its files"
            )
        node.path = cfg.pretrain.data_path
    node.augment = list(cfg.data.augment or [])  # pretraining images are augmented alike
    node.source_classes, node.target_classes, node.n_train = None, None, None
    return node


def _source_task(cfg: Any, arrays: Arrays, target: Split, device: torch.device) -> Split | None:
    """The pretraining task: labelled source classes (supervised), inputs only (autoencoder), from
    this data set or, with pretrain.data, from another one whose inputs have the same shape."""
    name = cfg.pretrain.name
    if name not in ("supervised", "autoencoder"):
        return None
    data_cfg, source_arrays = cfg.data, arrays
    if cfg.pretrain.get("data") is not None:
        from backprop_lab.data.datasets import load_arrays

        data_cfg = pretrain_data(cfg)
        source_arrays = load_arrays(data_cfg)
        shape, own = list(source_arrays.x.shape[1:]), list(target.input_shape)
        if shape != own:
            raise ConfigError(
                "pretrain.data",
                cfg.pretrain.data,
                f"has inputs of shape {shape}, data={cfg.data.name} "
                f"has {own}: one model must take both (pretrain on a data set of the same shape)",
            )
    available = all_classes(source_arrays)
    chosen = cfg.data.source_classes
    if chosen is not None and not set(chosen) <= set(available):
        raise ConfigError("data.source_classes", list(chosen), f"the pretraining data's classes are {available}")
    if name == "autoencoder" and chosen is None and source_arrays is arrays:  # no labels used: any budget
        chosen = target.classes
    return make_split(source_arrays, list(chosen or available), data_cfg, device, None, "data.source_classes")


def plan(cfg: Any, arrays: Arrays, device: torch.device) -> Plan:
    classes = all_classes(arrays)
    chosen = cfg.data.target_classes
    if chosen is not None and not set(chosen) <= set(classes):
        raise ConfigError("data.target_classes", list(chosen), f"the data set's classes are {classes}")
    if (
        cfg.data.source_classes is not None
        and cfg.pretrain.get("data") is None
        and not set(cfg.data.source_classes) <= set(classes)
    ):
        raise ConfigError("data.source_classes", list(cfg.data.source_classes), f"the data set's classes are {classes}")
    if cfg.data.augment and not arrays.images:
        raise ConfigError(
            "data.augment",
            list(cfg.data.augment),
            f"crops and flips are for images (N, C, H, W); "
            f"data={cfg.data.name} has inputs of shape {list(arrays.x.shape)}",
        )
    target = make_split(arrays, list(chosen or classes), cfg.data, device, cfg.data.n_train, "data.n_train")
    source = _source_task(cfg, arrays, target, device)
    first_classes = target.num_classes
    if source is not None and cfg.pretrain.name == "supervised":  # the head first learns the source classes
        first_classes = source.num_classes
    model = build_model(cfg, target.input_shape, first_classes).to(device)
    if cfg.pretrain.name != "none" and not isinstance(model, Classifier):
        raise ConfigError(
            "pretrain",
            cfg.pretrain.name,
            f"model={cfg.model.name} made a {type(model).__name__}, which has no blocks and head to pretrain, swap "
            "and freeze: return a backprop_lab.models.Classifier(blocks, input_view, feature_dim, num_classes)",
        )
    if cfg.trainer.diagnostics and not has_blocks(model):
        from backprop_lab.console import err_console

        err_console.print(
            f"note: no per-layer diagnostics: model={cfg.model.name} made a {type(model).__name__} without "
            "`blocks` and a linear `head` (a backprop_lab.components.models.Classifier has both)",
            markup=False,
        )
    if cfg.pretrain.name == "checkpoint":
        assert isinstance(model, Classifier)  # (refused above otherwise)
        load_body(model, load_weights(cfg.pretrain.path), cfg.pretrain.path)
    return Plan(target, source, model)


def _network(module: torch.nn.Module) -> torch.nn.Module:
    """The classifier inside what a stage trains: itself, an autoencoder's, or the members' template."""
    from backprop_lab.vectorized.members import Members

    if isinstance(module, Members):
        return module.template[0]
    return module.classifier if isinstance(module, Reconstructor) else module


def fit_stage(
    cfg: Any, module: torch.nn.Module, split: Split, stage: str, steps: int, log: Any, progress: Any, **kwargs: Any
) -> StageResult:
    """One stage through engine.fit, with a fresh optimizer, schedule and regularization for `module`."""
    return fit_members(cfg, module, split, stage, steps, [cfg.seed], [log], progress, **kwargs)[0]


def fit_members(
    cfg: Any,
    module: torch.nn.Module,
    split: Split,
    stage: str,
    steps: int,
    seeds: list[int],
    logs: list[Any],
    progress: Any,
    member_cfgs: list[Any] | None = None,
    *,
    checkpoint: Any = None,
    resume: dict[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
    reconstruction: Reconstruction | None = None,
    world: World = SINGLE,
) -> list[StageResult]:
    """fit_stage for K members at once (`module` is a members.Members when K > 1). `member_cfgs`: the
    members' own configs, whose optimizer, schedule, l1 and l2 may differ (members.batched_keys). Each
    member then steps with an optimizer of its own (member_optimizers), or, where they share one
    elementwise optimizer and differ at most in the rate, the optimizer and its schedule are built at
    rate 1 and the engine scales each member's update by its rate (members.lr_batchable)."""
    from backprop_lab.vectorized.member_optimizers import MemberOptimizers, MemberSchedulers, needs_own_optimizers

    opt_cfg, member_lr, decay_all = cfg.optimizer, None, cfg.regularizer.decay_bias_and_norm
    cfgs = member_cfgs or [cfg]
    optimizers, schedulers = [c.optimizer for c in cfgs], [c.scheduler for c in cfgs]
    lrs = [float(o.lr) for o in optimizers]
    if len(optimizers) > 1 and needs_own_optimizers(optimizers, schedulers):
        optimizer: Any = MemberOptimizers(module, optimizers, schedulers, decay_all)  # type: ignore[arg-type]
        scheduler: Any = MemberSchedulers(optimizer, schedulers, steps)
    else:
        if len(set(lrs)) > 1:
            from omegaconf import OmegaConf

            opt_cfg = OmegaConf.merge(cfg.optimizer, {"lr": 1.0})
            member_lr = torch.tensor(lrs, dtype=torch.float32, device=split.x_train.device)
        optimizer = build_optimizer(module, opt_cfg, decay_all)
        scheduler = build_scheduler(optimizer, cfg.scheduler, steps)
    augment = Augment(cfg.data.augment, cfg.data.crop_padding) if cfg.data.get("augment") else None
    settings = StageSettings(
        stage=stage,
        optimizer=optimizer,
        scheduler=scheduler,
        regularization=Regularization(module, cfg.regularizer, [c.regularizer for c in cfgs] if member_cfgs else None),
        trainer=cfg.trainer,
        max_steps=steps,
        logs=logs,
        progress=progress,
        on_step=on_step,
        act_name=cfg.act.name if has_blocks(_network(module)) else None,
        act_class=activation_class(cfg.act),
        checkpoint=checkpoint,
        augment=augment,
        reconstruction=reconstruction,
        member_rates=MemberRates(member_lr) if member_lr is not None else None,
        world=world,
    )
    return fit(module, split, seeds, settings, resume)


def _pretrain(
    cfg: Any, p: Plan, model: Classifier, log: Any, progress: Any, resume: Any, shared: dict[str, Any]
) -> StageResult:
    """The pretraining stage: the source classes (supervised) or reconstructing the inputs (autoencoder)."""
    assert p.source is not None
    steps = steps_for(cfg.trainer, len(p.source.x_train), cfg.pretrain.steps)
    if cfg.pretrain.name == "supervised":
        return fit_stage(cfg, model, p.source, "pretrain", steps, log, progress, resume=resume, **shared)
    recon = Reconstructor(model, math.prod(p.source.input_shape)).to(p.source.x_train.device)
    return fit_stage(
        cfg,
        recon,
        p.source,
        "pretrain",
        steps,
        log,
        progress,
        resume=resume,
        reconstruction=Reconstruction(noise=cfg.pretrain.noise),
        **shared,
    )


def run_stages(
    cfg: Any,
    p: Plan,
    log: Any,
    progress: Any,
    on_stage_end: Callable[[StageResult, dict[str, torch.Tensor]], None],
    checkpoint: Any = None,
    resume: dict[str, Any] | None = None,
    world: Any = None,
) -> list[StageResult]:
    """Train every stage of the plan in order; stop after a stage that did not complete.
    `on_stage_end` gets each stage's result and the model's (best) weights after it. With `resume`
    (a checkpoint), the stages before the checkpoint's are skipped: they finished before it.
    `world` (distributed.World) is this process's place under torchrun."""
    name, model, results = cfg.pretrain.name, p.model, []
    if name == "none":  # one stage: any nn.Module
        steps = steps_for(cfg.trainer, len(p.target.x_train))
        result = fit_stage(
            cfg,
            model,
            p.target,
            "train",
            steps,
            log,
            progress,
            resume=resume,
            checkpoint=checkpoint,
            **({"world": world} if world is not None else {}),
        )
        on_stage_end(result, model.state_dict())
        return [result]
    assert isinstance(model, Classifier)  # plan() refuses stages for any other model
    shared = {"checkpoint": checkpoint, **({"world": world} if world is not None else {})}
    if name in ("supervised", "autoencoder") and (resume is None or resume["stage"] == "pretrain"):
        result = pretraining_stage(cfg, p, log, progress, resume, shared, world)
        resume = None
        results.append(result)
        on_stage_end(result, model.state_dict())
        if result.status != "completed":
            return results
    hook = ready_to_finetune(cfg, p)
    steps = steps_for(cfg.trainer, len(p.target.x_train))
    result = fit_stage(cfg, model, p.target, "finetune", steps, log, progress, on_step=hook, resume=resume, **shared)
    results.append(result)
    on_stage_end(result, model.state_dict())
    return results


def pretraining_stage(
    cfg: Any, p: Plan, log: Any, progress: Any, resume: Any, shared: dict[str, Any], world: Any = None
) -> StageResult:
    """The pretraining stage of the plan's model: trained, or what another job of this process trained
    of this very stage (stage_reuse)."""
    from backprop_lab.run import stage_reuse

    assert isinstance(p.model, Classifier)  # plan() refuses stages for any other model
    shareable = stage_reuse.reusable(cfg, resume, world) and hasattr(log, "dir")
    found = stage_reuse.find(cfg) if shareable else None
    if found is not None:
        return stage_reuse.replay(found, p.model, log)
    result = _pretrain(cfg, p, p.model, log, progress, resume, shared)
    if shareable:
        stage_reuse.keep(cfg, log.dir, result, p.model)
    return result


def ready_to_finetune(cfg: Any, p: Plan) -> Callable[[int], None] | None:
    """A new head for the target classes and the blocks frozen as pretrain.finetune says; returns the
    gradual unfreezing's hook (None for full and freeze)."""
    assert isinstance(p.model, Classifier)  # plan() refuses stages for any other model
    p.model.new_head(p.target.num_classes)
    return finetune_hook(p.model, cfg.pretrain.finetune, cfg.pretrain.unfreeze_every)
