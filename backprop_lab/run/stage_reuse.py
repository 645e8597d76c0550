"""Pretraining stages shared by the jobs of one process (a sweep under the basic or vectorized launcher).

Jobs whose configs differ only in what the fine-tune stage reads (FINETUNE_ONLY: the label budget
data.n_train, pretrain.finetune, pretrain.unfreeze_every) pretrain alike, step for step: the same
seed, model, source data and settings. The first such job trains its pretraining stage; the others
start from what it left: its weights, its stage result and metrics rows (written into their own run
folders, with `reused_from` naming the run that trained them) and torch's random state after the
stage, so their fine-tune draws what it would have drawn. pretrain.reuse=false trains every stage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from backprop_lab.engine.loop import StageResult
from backprop_lab.run.runlog import read_metrics

log = logging.getLogger(__name__)

FINETUNE_ONLY = ("data.n_train", "pretrain.finetune", "pretrain.unfreeze_every", "pretrain.reuse")
KEPT_BYTES = 1 << 30  # the stages kept hold at most this many bytes of weights (the oldest go first)


@dataclass
class Trained:
    """A finished pretraining stage: what a later job needs to start where it ended."""

    run_dir: str
    result: StageResult
    weights: dict[str, torch.Tensor]  # the classifier's state after the stage
    rows: list[dict[str, Any]]  # the stage's metrics rows
    rng: torch.Tensor
    cuda_rng: torch.Tensor | None

    def size(self) -> int:
        """Bytes held: the weights after the stage and those at its last step (in the result)."""
        held = [*self.weights.values(), *(self.result.last_state or {}).values()]
        return sum(t.numel() * t.element_size() for t in held)


_trained: OrderedDict[str, Trained] = OrderedDict()


def stage_key(cfg: Any) -> str:
    """What decides the pretraining stage: the whole config but FINETUNE_ONLY."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(values, dict)
    for dotted in FINETUNE_ONLY:
        group, _, key = dotted.partition(".")
        values.get(group, {}).pop(key, None)
    return json.dumps(values, sort_keys=True, default=str)


def reusable(cfg: Any, resume: Any, world: Any) -> bool:
    """May this run's pretraining stage be shared: asked for, from the start, in one process."""
    return bool(cfg.pretrain.get("reuse", False)) and resume is None and not (world is not None and world.active)


def find(cfg: Any) -> Trained | None:
    return _trained.get(stage_key(cfg))


def keep(cfg: Any, run_dir: Any, result: StageResult, model: torch.nn.Module) -> None:
    """Remember a completed stage of the run in `run_dir`, whose metrics.jsonl holds its rows."""
    if result.status != "completed":
        return
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("stage") == result.stage]
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cuda_rng = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    key = stage_key(cfg)
    _trained[key] = Trained(str(run_dir), result, weights, rows, torch.get_rng_state(), cuda_rng)
    _trained.move_to_end(key)
    while len(_trained) > 1 and sum(t.size() for t in _trained.values()) > KEPT_BYTES:
        _trained.popitem(last=False)


def replay(found: Trained, model: torch.nn.Module, runlog: Any) -> StageResult:
    """Start `model` where `found`'s stage ended, writing the stage's rows into this run's log."""
    model.load_state_dict(found.weights)
    for row in found.rows:
        runlog.metrics(**row)
    torch.set_rng_state(found.rng)
    if found.cuda_rng is not None:
        torch.cuda.set_rng_state(found.cuda_rng)
    log.info("pretraining stage: reused from %s (same config and seed, in this process)", found.run_dir)
    return dataclasses.replace(found.result, reused_from=found.run_dir)
