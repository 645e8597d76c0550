"""The one training engine: every stage (scratch, pretrain, fine-tune) runs through `fit`.

Data stay on the device and are batched by index into a per-epoch permutation. Running sums of
loss and accuracy stay on the device too; the host reads them only at logging and evaluation
points, so the hot loop never waits on a `.item()`.

`fit` trains K >= 1 members at once: an ordinary model is one member; `members.Members` (runs that
differ only in their seed, hydra/launcher=vectorized) is K. Every metric is then a vector of K, and
each member has its own data order, best weights, early stopping, divergence and log.

Under torchrun (`world`, a distributed.World) each process trains on its slice of every batch, the
gradients are averaged and the metrics summed over the processes: see distributed.py.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed, interrupts
from .augment import Augment
from .data import Split
from .diagnostics import Diagnostics
from .distributed import SINGLE, World
from .members import Members, clip_grad_norm_per_member_
from .regularizers import Regularization


@dataclass
class StageResult:
    stage: str
    status: str  # completed | diverged
    steps: int
    epochs: float
    seconds: float
    best: dict[str, float] = field(default_factory=dict)  # val metrics at the best evaluation
    best_step: int | None = None
    test: dict[str, float] = field(default_factory=dict)  # test metrics of the best weights
    last_train: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    last_state: dict[str, torch.Tensor] | None = None  # the weights at the last step
    target: dict[str, float] = field(default_factory=dict)  # steps and seconds to trainer.target_acc


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    reconstruct: bool,
    autocast: Any,
    world: World = SINGLE,
    chunk: int | None = None,
    prepare: Callable[[torch.Tensor], torch.Tensor] = lambda xb: xb,
) -> dict[str, torch.Tensor]:
    """Mean loss (and accuracy) over a whole split, in eval mode, one value per member; tensors, so
    nothing syncs here. Under torchrun each process evaluates its share and the sums are pooled.
    `prepare` makes a chunk of stored inputs float (Split.prepare). `chunk` examples are evaluated at
    a time (default: by input size; on CPU a ResNet-20 evaluates 5000 CIFAR images in 4.7 s in chunks
    of 256 and in 14 s in chunks of 8192, which overflow the caches)."""
    was_training = model.training
    model.eval()
    members = isinstance(model, Members)
    total = len(x)
    if world.active:
        distributed.average_buffers_(model, world)
        part = distributed.shard(total, world)
        x, y = x[part], y[part]
    loss_sum = x.new_zeros(model.count if isinstance(model, Members) else 1, dtype=torch.float32)
    correct = torch.zeros_like(loss_sum)
    if chunk is None:
        chunk = min(8192, max(256, 2**19 // max(1, x[0].numel())))
    for start in range(0, len(x), chunk):
        xb, yb = prepare(x[start : start + chunk]), y[start : start + chunk]
        with autocast():
            out = model(xb, shared=True) if members else model(xb)
        if reconstruct:
            loss_sum += F.mse_loss(out.float(), xb.flatten(1), reduction="sum") / xb[0].numel()
        else:
            loss_sum += _losses(out.float(), yb.expand(out.shape[:-1]), reduction="sum")
            correct += (out.argmax(-1) == yb).sum(-1)
    model.train(was_training)
    if world.active:
        pooled = distributed.sum_(torch.cat([loss_sum, correct]))
        loss_sum, correct = pooled[: len(loss_sum)], pooled[len(loss_sum) :]
    metrics = {"loss": loss_sum / max(1, total)}
    if not reconstruct:
        metrics["acc"] = correct / max(1, total)
    return metrics


def _losses(out: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits [B, C] (a scalar) or, for members, of [K, B, C] (one value per member)."""
    if out.ndim == 2:
        return F.cross_entropy(out, target, reduction=reduction)
    per_example = F.cross_entropy(out.flatten(0, 1), target.flatten(), reduction="none").view(out.shape[:2])
    return per_example.sum(1) if reduction == "sum" else per_example.mean(1)


def _per_member(metrics: dict[str, torch.Tensor], count: int) -> list[dict[str, float]]:
    """{name: [K] tensor or scalar} -> one {name: float} per member, with one host sync for all."""
    if not metrics:
        return [{} for _ in range(count)]
    values = torch.stack([v.reshape(count) for v in metrics.values()]).T.tolist()
    return [dict(zip(metrics, row, strict=True)) for row in values]


def _member_optimizer_state(state: dict[str, Any], k: int) -> dict[str, Any]:
    """Member k's part of an optimizer state over stacked parameters: what an optimizer of member k
    alone would hold (the optimizers are elementwise; scalar entries such as `step` are shared)."""
    sliced = {
        i: {key: v[k].clone() if isinstance(v, torch.Tensor) and v.ndim > 0 else v for key, v in s.items()}
        for i, s in state["state"].items()
    }
    return {"state": sliced, "param_groups": state["param_groups"]}


def _state(model: nn.Module, k: int) -> dict[str, torch.Tensor]:
    """Member k's weights as an ordinary state dict (a copy)."""
    if isinstance(model, Members):
        return model.member_state(k)
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def _tested_weights(best: dict[str, torch.Tensor] | None, result: StageResult) -> dict[str, torch.Tensor]:
    """The weights a member is tested with: its best; one that never validated keeps its last."""
    weights = best if best is not None else result.last_state
    assert weights is not None, "a member stops with its weights recorded (finish)"
    return weights


def fit(
    model: nn.Module,
    split: Split,
    *,
    stage: str,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    regularization: Regularization,
    trainer: Any,
    max_steps: int,
    seeds: list[int],
    logs: list[Any],
    progress: Any,
    reconstruct: bool = False,
    noise: float = 0.0,
    on_step: Callable[[int], None] | None = None,
    act_name: str | None = None,
    act_class: type[nn.Module] | None = None,
    checkpoint: Any = None,
    resume: dict[str, Any] | None = None,
    world: World = SINGLE,
    augment: Augment | None = None,
) -> list[StageResult]:
    """Train `model` on `split` for `max_steps` steps; validate every `trainer.eval_every` steps,
    keep the best weights by `trainer.monitor`, stop early or on a non-finite loss, then test the best.
    Returns one StageResult per member (`seeds[k]` orders member k's data, `logs[k]` gets its rows).
    `checkpoint` (a checkpoint.Checkpointer; for members, one per member) is written periodically and
    when interrupted; a single model continues from `resume` (such a checkpoint) to the numbers it
    would have had. A member's checkpoint is an ordinary single-model one (its slice of the stacked
    weights and optimizer state), so an interrupted member resumes as an ordinary run.
    `augment` (augment.Augment) transforms each training batch, drawn from the members' generators."""
    device = split.x_train.device
    x, y = split.x_train, split.y_train
    n = len(x)
    count = len(seeds)
    batch_size = min(trainer.batch_size, n)
    batch_size -= batch_size % world.size  # (a split smaller than the batch: still equal slices)
    batches_per_epoch = n // batch_size  # drop the ragged last batch: constant shapes, no BN on 1 example
    # under torchrun this process takes its slice of every global batch (validated: batch_size % size == 0)
    my_slice = slice(world.rank * batch_size // world.size, (world.rank + 1) * batch_size // world.size)
    monitor = "loss" if reconstruct else trainer.monitor.split("/", 1)[1]
    sign = -1.0 if monitor == "loss" else 1.0  # internally, higher is better
    if trainer.precision == "bf16":
        autocast: Callable[[], contextlib.AbstractContextManager[Any]] = lambda: torch.autocast(  # noqa: E731
            device.type, dtype=torch.bfloat16
        )
    else:
        autocast = contextlib.nullcontext  # a disabled torch.autocast still costs time every step
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    per_step_scheduler = None if plateau else scheduler
    penalise, decay = regularization.adds_to_loss, regularization.l2_decay > 0
    diagnostics = Diagnostics(model, act_name, act_class) if trainer.diagnostics and act_name else None
    measured: dict[str, torch.Tensor] = {}
    forward = torch.compile(model) if trainer.compile else model  # same parameters, compiled graph
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]  # each member's data order
    params: list[torch.Tensor] = list(model.parameters())
    clip = (
        clip_grad_norm_per_member_
        if isinstance(model, Members)
        else lambda ps, norm: nn.utils.clip_grad_norm_(ps, norm, foreach=True)
    )

    results = [StageResult(stage=stage, status="completed", steps=0, epochs=0.0, seconds=0.0) for _ in seeds]
    running = list(range(count))  # members still training: not diverged, not stopped early
    best_score, evals_since_best = [-math.inf] * count, [0] * count
    best_state: list[dict[str, torch.Tensor] | None] = [None] * count
    loss_sum = torch.zeros(count, device=device)
    correct_sum = torch.zeros(count, device=device)
    seen = 0
    step, stop = 0, False
    start = time.perf_counter()
    model.train()
    resume_order, resume_batch = None, 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resume["scheduler"])
        step, seen, resume_order, resume_batch = resume["step"], resume["seen"], resume["order"], resume["batch"]
        generators[0].set_state(resume["generator"])
        loss_sum.copy_(resume["loss_sum"]), correct_sum.copy_(resume["correct_sum"])
        best_score[0], best_state[0], evals_since_best[0] = (
            resume["best_score"],
            resume["best_state"],
            resume["evals_since_best"],
        )
        r = results[0]
        r.last_train, r.best, r.best_step, r.target = (
            resume["last_train"],
            resume["best"],
            resume["best_step"],
            resume["target"],
        )
        start -= resume["elapsed_s"]
        torch.set_rng_state(resume["torch_rng"])  # dropout masks and input noise go on as they would have
        if device.type == "cuda":
            torch.cuda.set_rng_state(resume["cuda_rng"], device)
        if on_step is not None:
            on_step(step)  # e.g. the blocks gradual fine-tuning had unfrozen by then

    def finish(k: int, **outcome: Any) -> None:
        """Member k trains no more: record where it stopped and the weights it stopped with."""
        r = results[k]
        r.steps, r.epochs, r.seconds = step, step / batches_per_epoch, time.perf_counter() - start
        r.last_state = _state(model, k)
        for key, value in outcome.items():
            setattr(r, key, value)
        running.remove(k)

    if resume is not None and resume.get("finished") is not None:
        finish(0, **resume["finished"])  # a member that had stopped (early, or diverged) before its group

    def snapshot(k: int, b_next: int, order: torch.Tensor) -> dict[str, Any]:
        """Everything member k (a single model: k = 0) needs to continue after this step, as an
        ordinary run; a member that has stopped keeps its weights and outcome from then."""
        r = results[k]
        stopped = k not in running
        return {
            "stage": stage,
            "step": r.steps if stopped else step,
            "batch": b_next,
            "order": order[k],
            "seen": seen,
            "generator": generators[k].get_state(),
            "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            "model": r.last_state if stopped else _state(model, k) if count > 1 else model.state_dict(),
            "optimizer": _member_optimizer_state(optimizer.state_dict(), k) if count > 1 else optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "loss_sum": loss_sum[k : k + 1],
            "correct_sum": correct_sum[k : k + 1],
            "best_score": best_score[k],
            "best_state": best_state[k],
            "evals_since_best": evals_since_best[k],
            "last_train": r.last_train,
            "best": r.best,
            "best_step": r.best_step,
            "target": r.target,
            "elapsed_s": r.seconds if stopped else time.perf_counter() - start,
            "finished": {"status": r.status, "stopped_early": r.stopped_early} if stopped else None,
        }

    checkpoints = checkpoint if isinstance(checkpoint, list) else [checkpoint]  # one per member
    periodic = checkpoints[0]  # (all are due at the same steps)
    progress.start_stage(stage, max_steps)

    stop = step >= max_steps or not running
    with interrupts.deferred():  # Ctrl-C / SIGTERM: finish the step, checkpoint, then stop
        while not stop:
            if resume_order is not None:  # the epoch the checkpoint was in
                orders, first_batch, resume_order = resume_order.to(device)[None], resume_batch, None
            else:
                orders, first_batch = (
                    torch.stack([torch.randperm(n, device=device, generator=g) for g in generators]),
                    0,
                )
            # batches[b] is [K, B] (one batch per member); a single model takes [B]
            batches = (
                orders[:, : batches_per_epoch * batch_size].view(count, batches_per_epoch, batch_size).transpose(0, 1)
            )
            if count == 1:
                batches = batches[:, 0]
            for b in range(first_batch, batches_per_epoch):
                idx = batches[b][my_slice] if world.active else batches[b]
                # logging points: step 1 (the network at init), every log_every steps, the last step
                log_now = step == 0 or (step + 1) % trainer.log_every == 0 or step + 1 == max_steps
                if diagnostics is not None and log_now:
                    diagnostics.arm()
                xb = x[idx]  # stored inputs (uint8 images stay uint8 until here)
                if augment is not None:
                    xb = augment(xb, generators, batch_size, my_slice if world.active else None)
                xb = split.prepare(xb)
                target = xb.flatten(1) if reconstruct else y[idx]  # (members never reconstruct)
                if noise > 0:
                    xb = xb + noise * torch.randn_like(xb)
                with autocast():  # (the diagnostics' hooks need the eager model: a compiled one would recompile)
                    out = model(xb) if diagnostics is not None and log_now else forward(xb)
                    loss = F.mse_loss(out.float(), target) if reconstruct else _losses(out.float(), target)
                objective = loss if loss.ndim == 0 else loss.sum()  # members: each gets its own gradient
                if penalise:
                    objective = objective + regularization.penalty()
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                if world.active:
                    distributed.average_gradients_(params, world)  # the global batch's mean gradient
                if diagnostics is not None and log_now:
                    diagnostics.after_backward()  # the gradient as backprop made it, before clipping
                if trainer.grad_clip > 0:
                    clip(params, trainer.grad_clip)
                if decay:
                    regularization.decay_(optimizer.param_groups[0]["lr"])  # before the step, as AdamW does
                optimizer.step()
                if diagnostics is not None and log_now:
                    measured = diagnostics.after_step()
                if per_step_scheduler is not None:
                    per_step_scheduler.step()

                loss_sum += loss.detach()
                if not reconstruct:
                    correct_sum += (out.argmax(-1) == target).sum(-1)
                seen += 1
                step += 1
                if on_step is not None:
                    on_step(step)
                stop = step == max_steps

                if log_now:
                    if world.active:  # every process reads the same pooled window
                        pooled = distributed.sum_(torch.cat([loss_sum, correct_sum]))
                        loss_sum, correct_sum = pooled[:count] / world.size, pooled[count:]
                    window = (
                        {"loss": loss_sum / seen}
                        if reconstruct
                        else {"loss": loss_sum / seen, "acc": correct_sum / (seen * batch_size)}
                    )
                    train_metrics = _per_member({**window, **measured}, count)
                    loss_sum.zero_(), correct_sum.zero_()
                    seen = 0
                    elapsed = time.perf_counter() - start
                    for k in list(running):
                        results[k].last_train = {key: train_metrics[k][key] for key in window}
                        logs[k].metrics(
                            stage=stage,
                            split="train",
                            step=step,
                            epoch=step / batches_per_epoch,
                            lr=optimizer.param_groups[0]["lr"],
                            elapsed_s=elapsed,
                            **train_metrics[k],
                        )
                        if not math.isfinite(train_metrics[k]["loss"]):
                            finish(k, status="diverged")
                    progress.update(step, results[0].last_train)

                if (step % trainer.eval_every == 0 or stop) and running:
                    val = _per_member(
                        evaluate(model, split.x_val, split.y_val, reconstruct, autocast, world, prepare=split.prepare),
                        count,
                    )
                    elapsed = time.perf_counter() - start
                    for k in list(running):
                        r = results[k]
                        score = sign * val[k][monitor]
                        if score > best_score[k] + trainer.min_delta or best_state[k] is None:
                            best_score[k] = max(score, best_score[k])
                            best_state[k] = _state(model, k)
                            r.best, r.best_step, evals_since_best[k] = val[k], step, 0
                        else:
                            evals_since_best[k] += 1
                        extra = {}
                        if "acc" in val[k] and "acc" in r.last_train:
                            extra["gap/acc"] = r.last_train["acc"] - val[k]["acc"]  # train (last window) - val
                            if trainer.target_acc is not None and not r.target and val[k]["acc"] >= trainer.target_acc:
                                r.target = {"target/step": step, "target/seconds": elapsed}
                        logs[k].metrics(
                            stage=stage,
                            split="val",
                            step=step,
                            epoch=step / batches_per_epoch,
                            elapsed_s=elapsed,
                            **val[k],
                            **extra,
                        )
                        if plateau:
                            scheduler.step(score)  # only ever one member: Members refuses plateau
                        if not all(math.isfinite(v) for v in val[k].values()):
                            finish(k, status="diverged")
                        elif trainer.early_stopping and evals_since_best[k] >= trainer.early_stopping:
                            finish(k, stopped_early=True)
                    progress.update(step, {f"val/{key}": v for key, v in val[0].items()})
                stop = stop or not running
                interrupted = interrupts.requested
                if world.active:  # all processes stop at the same step, or the others would wait forever
                    interrupted = step % distributed.INTERRUPT_CHECK_EVERY == 0 and distributed.any_(
                        interrupted, device
                    )
                if not stop and (interrupted or (periodic is not None and periodic.due(step))):
                    if periodic is not None:
                        for k, member_checkpoint in enumerate(checkpoints):
                            member_checkpoint.save(snapshot(k, b + 1, orders))
                    if interrupted:
                        raise KeyboardInterrupt
                if stop:
                    break

    for k in list(running):
        finish(k)
    progress.end_stage()
    tested = [k for k in range(count) if results[k].status == "completed" and best_state[k] is not None]
    if tested:  # test the weights that validated best
        if isinstance(model, Members):
            model.load_member_states([_tested_weights(best_state[k], results[k]) for k in range(count)])
        else:
            model.load_state_dict(_tested_weights(best_state[0], results[0]))
        test = _per_member(
            evaluate(model, split.x_test, split.y_test, reconstruct, autocast, world, prepare=split.prepare), count
        )
        for k in tested:
            results[k].test = test[k]
            logs[k].metrics(
                stage=stage, split="test", step=results[k].best_step, elapsed_s=results[k].seconds, **test[k]
            )
    return results
