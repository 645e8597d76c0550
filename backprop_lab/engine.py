"""The one training engine: every stage (scratch, pretrain, fine-tune) runs through `fit`.

Data stay on the device and are batched by index into a per-epoch permutation. Running sums of
loss and accuracy stay on the device too; the host reads them only at logging and evaluation
points, so the hot loop never waits on a `.item()`.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import Split
from .diagnostics import Diagnostics
from .regularizers import Regularization


@dataclass
class StageResult:
    stage: str
    status: str                      # completed | diverged
    steps: int
    epochs: float
    seconds: float
    best: dict[str, float] = field(default_factory=dict)   # val metrics at the best evaluation
    best_step: int | None = None
    test: dict[str, float] = field(default_factory=dict)   # test metrics of the best weights
    last_train: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    last_state: dict[str, torch.Tensor] | None = None  # the weights at the last step
    target: dict[str, float] = field(default_factory=dict)  # steps and seconds to trainer.target_acc


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, reconstruct: bool,
             autocast: Any, chunk: int = 8192) -> dict[str, torch.Tensor]:
    """Mean loss (and accuracy) over a whole split, in eval mode; tensors, so nothing syncs here."""
    was_training = model.training
    model.eval()
    loss_sum = x.new_zeros((), dtype=torch.float32)
    correct = x.new_zeros((), dtype=torch.float32)
    for start in range(0, len(x), chunk):
        xb, yb = x[start:start + chunk], y[start:start + chunk]
        with autocast():
            out = model(xb)
        if reconstruct:
            loss_sum += F.mse_loss(out.float(), xb.flatten(1), reduction="sum") / xb[0].numel()
        else:
            loss_sum += F.cross_entropy(out.float(), yb, reduction="sum")
            correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    metrics = {"loss": loss_sum / max(1, len(x))}
    if not reconstruct:
        metrics["acc"] = correct / max(1, len(x))
    return metrics


def _to_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    values = torch.stack(list(metrics.values())).tolist()  # one host sync for all of them
    return dict(zip(metrics, values))


def fit(model: nn.Module, split: Split, *, stage: str, optimizer: torch.optim.Optimizer,
        scheduler: Any, regularization: Regularization, trainer: Any, max_steps: int, seed: int,
        log: Any, progress: Any, reconstruct: bool = False, noise: float = 0.0,
        on_step: Callable[[int], None] | None = None, act_name: str | None = None) -> StageResult:
    """Train `model` on `split` for `max_steps` steps; validate every `trainer.eval_every` steps,
    keep the best weights by `trainer.monitor`, stop early or on a non-finite loss, then test the best."""
    device = split.x_train.device
    x, y = split.x_train, split.y_train
    n = len(x)
    batch_size = min(trainer.batch_size, n)
    batches_per_epoch = n // batch_size  # drop the ragged last batch: constant shapes, no BN on 1 example
    monitor = "loss" if reconstruct else trainer.monitor.split("/", 1)[1]
    sign = -1.0 if monitor == "loss" else 1.0  # internally, higher is better
    if trainer.precision == "bf16":
        autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = contextlib.nullcontext  # a disabled torch.autocast still costs time every step
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    per_step_scheduler = None if plateau else scheduler
    penalise, decay = regularization.adds_to_loss, regularization.l2_decay > 0
    diagnostics = Diagnostics(model, act_name) if trainer.diagnostics and act_name else None
    measured: dict[str, torch.Tensor] = {}
    generator = torch.Generator(device=device).manual_seed(seed)  # the data order
    params = list(model.parameters())

    result = StageResult(stage=stage, status="completed", steps=0, epochs=0.0, seconds=0.0)
    best_score, best_state, evals_since_best = -math.inf, None, 0
    loss_sum = torch.zeros((), device=device)
    correct_sum = torch.zeros((), device=device)
    seen = 0
    step, stop = 0, False
    start = time.perf_counter()
    model.train()
    progress.start_stage(stage, max_steps)

    while not stop:
        order = torch.randperm(n, device=device, generator=generator)
        for b in range(batches_per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            # logging points: step 1 (the network at init), every log_every steps, the last step
            log_now = step == 0 or (step + 1) % trainer.log_every == 0 or step + 1 == max_steps
            if diagnostics is not None and log_now:
                diagnostics.arm()
            xb = x[idx]
            target = xb.flatten(1) if reconstruct else y[idx]
            if noise > 0:
                xb = xb + noise * torch.randn_like(xb)
            with autocast():
                out = model(xb)
                loss = F.mse_loss(out.float(), target) if reconstruct else F.cross_entropy(out.float(), target)
            objective = loss + regularization.penalty() if penalise else loss
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            if diagnostics is not None and log_now:
                diagnostics.after_backward()  # the gradient as backprop made it, before clipping
            if trainer.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, trainer.grad_clip, foreach=True)
            if decay:
                regularization.decay_(optimizer.param_groups[0]["lr"])  # before the step, as AdamW does
            optimizer.step()
            if diagnostics is not None and log_now:
                measured = diagnostics.after_step()
            if per_step_scheduler is not None:
                per_step_scheduler.step()

            loss_sum += loss.detach()
            if not reconstruct:
                correct_sum += (out.argmax(1) == target).sum()
            seen += 1
            step += 1
            if on_step is not None:
                on_step(step)
            stop = step == max_steps

            if log_now:
                window = {"loss": loss_sum / seen} if reconstruct else \
                         {"loss": loss_sum / seen, "acc": correct_sum / (seen * batch_size)}
                train_metrics = _to_floats({**window, **measured})
                loss_sum.zero_(), correct_sum.zero_()
                seen = 0
                result.last_train = {k: train_metrics[k] for k in window}
                elapsed = time.perf_counter() - start
                log.metrics(stage=stage, split="train", step=step, epoch=step / batches_per_epoch,
                            lr=optimizer.param_groups[0]["lr"], elapsed_s=elapsed, **train_metrics)
                progress.update(step, result.last_train)
                if not math.isfinite(train_metrics["loss"]):
                    result.status, stop = "diverged", True

            if (step % trainer.eval_every == 0 or stop) and result.status == "completed":
                val = _to_floats(evaluate(model, split.x_val, split.y_val, reconstruct, autocast))
                score = sign * val[monitor]
                improved = score > best_score + trainer.min_delta
                if improved or best_state is None:
                    best_score = max(score, best_score)
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    result.best, result.best_step, evals_since_best = val, step, 0
                else:
                    evals_since_best += 1
                elapsed = time.perf_counter() - start
                extra = {}
                if "acc" in val and "acc" in result.last_train:
                    extra["gap/acc"] = result.last_train["acc"] - val["acc"]  # train (last window) - val
                    if trainer.target_acc is not None and not result.target and val["acc"] >= trainer.target_acc:
                        result.target = {"target/step": step, "target/seconds": elapsed}
                log.metrics(stage=stage, split="val", step=step, epoch=step / batches_per_epoch,
                            elapsed_s=elapsed, **val, **extra)
                progress.update(step, {f"val/{k}": v for k, v in val.items()})
                if plateau:
                    scheduler.step(score)
                if not all(math.isfinite(v) for v in val.values()):
                    result.status, stop = "diverged", True
                elif trainer.early_stopping and evals_since_best >= trainer.early_stopping:
                    result.stopped_early = stop = True
            if stop:
                break

    result.steps = step
    result.epochs = step / batches_per_epoch
    result.seconds = time.perf_counter() - start
    progress.end_stage()
    result.last_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if result.status == "completed" and best_state is not None:
        model.load_state_dict(best_state)  # test the weights that validated best
        result.test = _to_floats(evaluate(model, split.x_test, split.y_test, reconstruct, autocast))
        log.metrics(stage=stage, split="test", step=result.best_step, elapsed_s=result.seconds, **result.test)
    return result
