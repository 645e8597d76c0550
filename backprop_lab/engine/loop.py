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
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from backprop_lab.components.regularizers import Regularization
from backprop_lab.data.augment import Augment
from backprop_lab.data.datasets import Split
from backprop_lab.engine import distributed, interrupts
from backprop_lab.engine.diagnostics import Diagnostics
from backprop_lab.engine.distributed import SINGLE, World
from backprop_lab.errors import RefusedError
from backprop_lab.vectorized.member_optimizers import (
    MemberOptimizers,
    MemberSchedulers,
    member_optimizer_state,
    scaled_rates,
    step_at_rates,
)
from backprop_lab.vectorized.members import Members, clip_grad_norm_per_member_


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
    reused_from: str | None = None  # the run of this process that trained this very stage (stage_reuse)


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
    a time (default: by input size, since large chunks of images overflow the CPU's caches and
    evaluate several times slower: BENCHMARKS.md, evaluation chunks)."""
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


@dataclass
class LoopState:
    """What the training loop carries from one step to the next, for K members (a vector entry or a
    list item each). A checkpoint holds one member's slice of it (`member`), and `restore` puts such a
    slice back into a one-member state: a field added here is saved and resumed with nothing else to
    change."""

    loss_sum: torch.Tensor  # [K] the train window's summed losses, on the device
    correct_sum: torch.Tensor  # [K] and its correct predictions
    generators: list[torch.Generator]  # each member's data order (and augmentation) stream
    best_score: list[float]  # the best monitored value so far, higher is better
    best_state: list[dict[str, torch.Tensor] | None]  # the weights that scored it
    evals_since_best: list[int]  # for early stopping
    step: int = 0
    seen: int = 0  # steps in the current train window
    order: torch.Tensor | None = None  # [K, n] this epoch's data order
    batch: int = 0  # the next batch of that order
    elapsed_before: float = 0.0  # seconds trained before a resume

    @classmethod
    def fresh(cls, seeds: list[int], device: torch.device) -> LoopState:
        count = len(seeds)
        return cls(
            loss_sum=torch.zeros(count, device=device),
            correct_sum=torch.zeros(count, device=device),
            generators=[torch.Generator(device=device).manual_seed(s) for s in seeds],
            best_score=[-math.inf] * count,
            best_state=[None] * count,
            evals_since_best=[0] * count,
        )

    def member(self, k: int) -> dict[str, Any]:
        """Member k's slice, as the checkpoint of an ordinary one-member run stores it."""
        assert self.order is not None, "a checkpoint is taken inside an epoch"
        return {
            "step": self.step,
            "batch": self.batch,
            "order": self.order[k],
            "seen": self.seen,
            "generator": self.generators[k].get_state(),
            "loss_sum": self.loss_sum[k : k + 1],
            "correct_sum": self.correct_sum[k : k + 1],
            "best_score": self.best_score[k],
            "best_state": self.best_state[k],
            "evals_since_best": self.evals_since_best[k],
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue a one-member state from a checkpoint's slice."""
        device = self.loss_sum.device
        self.step, self.seen, self.batch = saved["step"], saved["seen"], saved["batch"]
        self.order = saved["order"].to(device)[None]
        self.generators[0].set_state(saved["generator"])
        self.loss_sum.copy_(saved["loss_sum"]), self.correct_sum.copy_(saved["correct_sum"])
        self.best_score[0], self.best_state[0] = saved["best_score"], saved["best_state"]
        self.evals_since_best[0] = saved["evals_since_best"]
        self.elapsed_before = saved["elapsed_s"]


@dataclass(frozen=True)
class Reconstruction:
    """The autoencoder stage's part: the model reconstructs its inputs (loss: their mean squared error)
    from inputs with Gaussian noise of std `noise` (a denoising autoencoder when > 0)."""

    noise: float = 0.0


@dataclass(frozen=True)
class MemberRates:
    """The batched members' part, when their optimizer is built at rate 1: each member's own learning
    rate ([K]), by which its update is scaled (Stage.lr)."""

    rates: torch.Tensor


@dataclass(frozen=True)
class StageSettings:
    """Everything one stage trains with (what `fit` is given besides the model, the data and the seeds).
    Three modes are parts of their own: `reconstruction` (the autoencoder's stage), `member_rates`
    (members of a batched model at their own rates) and `world` (torchrun's processes)."""

    stage: str  # train | pretrain | finetune
    optimizer: torch.optim.Optimizer
    scheduler: Any
    regularization: Regularization
    trainer: Any  # the trainer node (batch_size, eval_every, log_every, monitor, ...)
    max_steps: int
    logs: list[Any]  # one run log per member
    progress: Any
    on_step: Callable[[int], None] | None = None  # called with the step before each one (gradual unfreezing)
    act_name: str | None = None  # the activation, for the diagnostics (None: no blocks to look into)
    act_class: type[nn.Module] | None = None
    checkpoint: Any = None  # a checkpoint.Checkpointer (for members, one per member), or None
    augment: Augment | None = None
    reconstruction: Reconstruction | None = None
    member_rates: MemberRates | None = None
    world: World = SINGLE


class Stage:
    """One stage's training: its settings, what follows from them, the loop state and each member's
    result. Its methods are the parts of the loop that `fit` runs top to bottom."""

    def __init__(self, model: nn.Module, split: Split, seeds: list[int], settings: StageSettings):
        self.model, self.split, self.count, self.settings = model, split, len(seeds), settings
        self.stage, self.optimizer, self.scheduler = settings.stage, settings.optimizer, settings.scheduler
        self.regularization, self.max_steps = settings.regularization, settings.max_steps
        self.logs, self.progress, self.on_step = settings.logs, settings.progress, settings.on_step
        self.act_name, self.act_class = settings.act_name, settings.act_class
        self.checkpoint, self.augment, self.world = settings.checkpoint, settings.augment, settings.world
        self.reconstruct = settings.reconstruction is not None
        self.noise = settings.reconstruction.noise if settings.reconstruction is not None else 0.0
        self.member_lr = settings.member_rates.rates if settings.member_rates is not None else None
        # the trainer's values as plain attributes: the loop reads some every step, and reading a
        # DictConfig's attribute costs a noticeable share of a small MLP's step (BENCHMARKS.md)
        trainer_values = OmegaConf.to_container(settings.trainer, resolve=True)
        self.trainer = SimpleNamespace(**trainer_values)  # type: ignore[arg-type]
        trainer, world, device = self.trainer, self.world, split.x_train.device
        self.device = device
        n = len(split.x_train)
        batch_size = min(trainer.batch_size, n)
        self.batch_size = batch_size - batch_size % world.size  # (a small split: still equal slices)
        self.batches_per_epoch = n // self.batch_size  # drop the ragged last batch: constant shapes
        # under torchrun this process takes its slice of every global batch (validated: batch_size % size == 0)
        self.my_slice = slice(
            world.rank * self.batch_size // world.size, (world.rank + 1) * self.batch_size // world.size
        )
        self.monitor = "loss" if self.reconstruct else trainer.monitor.split("/", 1)[1]
        self.sign = -1.0 if self.monitor == "loss" else 1.0  # internally, higher is better
        self.plateau = isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        self.per_step_scheduler = None if self.plateau else self.scheduler
        self.diagnostics = (
            Diagnostics(model, self.act_name, self.act_class) if trainer.diagnostics and self.act_name else None
        )
        self.measured: dict[str, torch.Tensor] = {}
        self.forward = torch.compile(model) if trainer.compile else model  # same parameters, compiled graph
        self.params: list[torch.Tensor] = list(model.parameters())
        self.state = LoopState.fresh(seeds, device)
        self.results = [
            StageResult(stage=self.stage, status="completed", steps=0, epochs=0.0, seconds=0.0) for _ in seeds
        ]
        self.running = list(range(self.count))  # members still training: not diverged, not stopped early
        self.checkpoints = self.checkpoint if isinstance(self.checkpoint, list) else [self.checkpoint]  # one per member
        self.start = time.perf_counter()

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.trainer.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()  # a disabled torch.autocast still costs time every step

    def elapsed(self) -> float:
        return time.perf_counter() - self.start + self.state.elapsed_before

    # ------------------------------------------------------------------ resume and checkpoints
    def restore(self, resume: dict[str, Any]) -> None:
        """Continue from a checkpoint (a single model): weights, optimizer, schedule, RNG, loop state."""
        self.model.load_state_dict(resume["model"])
        # both counted from state dicts, which compare like with like (MuonWithAdamW's has no param_groups)
        saved, built = (len(o.get("param_groups", [])) for o in (resume["optimizer"], self.optimizer.state_dict()))
        if saved != built:  # (since 2026-11-29 a run without weight decay has one group, not two)
            raise RefusedError(
                f"the checkpoint's optimizer has {saved} parameter groups and this version of backprop-lab "
                f"builds {built}: resume it with the version that started it"
            )
        self.optimizer.load_state_dict(resume["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(resume["scheduler"])
        self.state.restore(resume)
        r = self.results[0]
        r.last_train, r.best, r.best_step, r.target = (
            resume["last_train"],
            resume["best"],
            resume["best_step"],
            resume["target"],
        )
        torch.set_rng_state(resume["torch_rng"])  # dropout masks and input noise go on as they would have
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(resume["cuda_rng"], self.device)
        if self.on_step is not None:
            self.on_step(self.state.step)  # e.g. the blocks gradual fine-tuning had unfrozen by then
        if resume.get("finished") is not None:
            self.finish(0, **resume["finished"])  # a member that had stopped (early, or diverged) before its group

    def snapshot(self, k: int) -> dict[str, Any]:
        """Everything member k (a single model: k = 0) needs to continue after this step, as an ordinary
        run; a member that has stopped keeps its weights and outcome from then."""
        r, stopped, count = self.results[k], k not in self.running, self.count
        return {
            "stage": self.stage,
            **self.state.member(k),
            **({"step": r.steps} if stopped else {}),
            "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
            "model": r.last_state if stopped else _state(self.model, k) if count > 1 else self.model.state_dict(),
            **self.optimizer_states(k),
            "last_train": r.last_train,
            "best": r.best,
            "best_step": r.best_step,
            "target": r.target,
            "elapsed_s": r.seconds if stopped else self.elapsed(),
            "finished": {"status": r.status, "stopped_early": r.stopped_early} if stopped else None,
        }

    def optimizer_states(self, k: int) -> dict[str, Any]:
        """Member k's optimizer and schedule states, as its own run would hold them."""
        if isinstance(self.optimizer, MemberOptimizers):  # each member has its own already
            return {"optimizer": self.optimizer.member_state(k), "scheduler": self.scheduler.member_state(k)}
        optimizer_state = self.optimizer.state_dict()
        rate = 1.0 if self.member_lr is None else float(self.member_lr[k])  # rates saved as its own run's
        return {
            "optimizer": member_optimizer_state(optimizer_state, k, rate) if self.count > 1 else optimizer_state,
            "scheduler": scaled_rates(self.scheduler.state_dict(), rate) if self.scheduler is not None else None,
        }

    def checkpoint_or_stop(self) -> None:
        """A periodic checkpoint when due; on Ctrl-C / SIGTERM, a checkpoint and KeyboardInterrupt."""
        interrupted, step = interrupts.requested, self.state.step
        if self.world.active:  # all processes stop at the same step, or the others would wait forever
            interrupted = step % distributed.INTERRUPT_CHECK_EVERY == 0 and distributed.any_(interrupted, self.device)
        periodic = self.checkpoints[0]  # (all members' are due at the same steps)
        if interrupted or (periodic is not None and periodic.due(step)):
            if periodic is not None:
                for k, member_checkpoint in enumerate(self.checkpoints):
                    member_checkpoint.save(self.snapshot(k))
            if interrupted:
                raise interrupts.Interrupted(self.stage, step, self.max_steps)

    def finish(self, k: int, **outcome: Any) -> None:
        """Member k trains no more: record where it stopped and the weights it stopped with."""
        r = self.results[k]
        r.steps, r.epochs, r.seconds = self.state.step, self.state.step / self.batches_per_epoch, self.elapsed()
        r.last_state = _state(self.model, k)
        for key, value in outcome.items():
            setattr(r, key, value)
        self.running.remove(k)

    # ------------------------------------------------------------------ the parts of a step
    def epoch_batches(self) -> torch.Tensor:
        """batches[b]: [K, B] indices (one batch per member; a single model: [B]) of this epoch's order;
        a resumed run continues the order of its checkpoint."""
        s = self.state
        if s.order is None:
            s.order = torch.stack(
                [torch.randperm(len(self.split.x_train), device=self.device, generator=g) for g in s.generators]
            )
            s.batch = 0
        used = self.batches_per_epoch * self.batch_size
        batches = s.order[:, :used].view(self.count, self.batches_per_epoch, self.batch_size).transpose(0, 1)
        return batches[:, 0] if self.count == 1 else batches

    def train_step(self, idx: torch.Tensor, log_now: bool) -> None:
        """Batch, forward, backward, optimizer step; the window's sums grow on the device."""
        s, x, y = self.state, self.split.x_train, self.split.y_train
        diagnostics = self.diagnostics if log_now else None
        if diagnostics is not None:
            diagnostics.arm()
        xb = x[idx]  # stored inputs (uint8 images stay uint8 until here)
        if self.augment is not None:
            xb = self.augment(xb, s.generators, self.batch_size, self.my_slice if self.world.active else None)
        xb = self.split.prepare(xb)
        target = xb.flatten(1) if self.reconstruct else y[idx]  # (members never reconstruct)
        if self.noise > 0:
            xb = xb + self.noise * torch.randn_like(xb)
        with self.autocast():  # (the diagnostics' hooks need the eager model: a compiled one would recompile)
            out = self.model(xb) if diagnostics is not None else self.forward(xb)
            loss = F.mse_loss(out.float(), target) if self.reconstruct else _losses(out.float(), target)
        objective = loss if loss.ndim == 0 else loss.sum()  # members: each gets its own gradient
        if self.regularization.adds_to_loss:
            objective = objective + self.regularization.custom_term()
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if self.world.active:
            distributed.average_gradients_(self.params, self.world)  # the global batch's mean gradient
        if self.regularization.adds_to_gradients:
            self.regularization.add_penalty_gradients_()  # L1 / L2 penalties: their gradient, without autograd
        if diagnostics is not None:
            diagnostics.after_backward()  # the gradient as backprop made it, before clipping
        if self.trainer.grad_clip > 0:
            if isinstance(self.model, Members):
                clip_grad_norm_per_member_(self.params, self.trainer.grad_clip)
            else:
                nn.utils.clip_grad_norm_(self.params, self.trainer.grad_clip, foreach=True)
        if self.regularization.decays:
            self.regularization.decay_(self.lr())  # before the step, as AdamW does
        self.step_optimizer()
        if diagnostics is not None:
            self.measured = diagnostics.after_step()
        if self.per_step_scheduler is not None:
            self.per_step_scheduler.step()
        s.loss_sum += loss.detach()
        if not self.reconstruct:
            s.correct_sum += (out.argmax(-1) == target).sum(-1)
        s.seen += 1
        s.step += 1
        if self.on_step is not None:
            self.on_step(s.step)

    def lr(self) -> float | torch.Tensor:
        """The learning rate now: the optimizer's, or each member's (a [K] tensor) under member_lr."""
        if isinstance(self.optimizer, MemberOptimizers):
            return self.optimizer.rates()
        factor = self.optimizer.param_groups[0]["lr"]
        return factor if self.member_lr is None else self.member_lr * factor

    def step_optimizer(self) -> None:
        """The optimizer's step; with member_lr, the optimizer stepped at factor f(t) and each member's
        update is scaled by its own rate (the update is linear in the rate: members.lr_batchable)."""
        if self.member_lr is None:
            self.optimizer.step()
        else:
            step_at_rates(self.optimizer, self.params, self.member_lr)

    def log_train(self) -> None:
        """The train window's metrics (and diagnostics) for every running member: one host sync."""
        s = self.state
        if self.world.active:  # every process reads the same pooled window
            pooled = distributed.sum_(torch.cat([s.loss_sum, s.correct_sum]))
            s.loss_sum, s.correct_sum = pooled[: self.count] / self.world.size, pooled[self.count :]
        window = {"loss": s.loss_sum / s.seen}
        if not self.reconstruct:
            window["acc"] = s.correct_sum / (s.seen * self.batch_size)
        lr = self.lr()
        train_metrics = _per_member(
            {**window, **self.measured, **({"lr": lr} if isinstance(lr, torch.Tensor) else {})}, self.count
        )
        s.loss_sum.zero_(), s.correct_sum.zero_()
        s.seen = 0
        elapsed = self.elapsed()
        for k in list(self.running):
            self.results[k].last_train = {key: train_metrics[k][key] for key in window}
            self.logs[k].metrics(
                stage=self.stage,
                split="train",
                step=s.step,
                epoch=s.step / self.batches_per_epoch,
                **({"lr": lr} if not isinstance(lr, torch.Tensor) else {}),
                elapsed_s=elapsed,
                **train_metrics[k],
            )
            if not math.isfinite(train_metrics[k]["loss"]):
                self.finish(k, status="diverged")
        self.progress.update(s.step, self.results[0].last_train)

    def validate(self) -> None:
        """Evaluate on the validation split; keep each member's best weights; stop early or on divergence."""
        s, split = self.state, self.split
        optimizer_mode(self.optimizer, "eval")  # (schedule-free: the averaged weights are the ones evaluated)
        val = _per_member(
            evaluate(
                self.model, split.x_val, split.y_val, self.reconstruct, self.autocast, self.world, prepare=split.prepare
            ),
            self.count,
        )
        elapsed = self.elapsed()
        for k in list(self.running):
            r = self.results[k]
            score = self.sign * val[k][self.monitor]
            if score > s.best_score[k] + self.trainer.min_delta or s.best_state[k] is None:
                s.best_score[k] = max(score, s.best_score[k])
                s.best_state[k] = _state(self.model, k)
                r.best, r.best_step, s.evals_since_best[k] = val[k], s.step, 0
            else:
                s.evals_since_best[k] += 1
            extra = {}
            if "acc" in val[k] and "acc" in r.last_train:
                extra["gap/acc"] = r.last_train["acc"] - val[k]["acc"]  # train (last window) - val
                target_acc = self.trainer.target_acc
                if target_acc is not None and not r.target and val[k]["acc"] >= target_acc:
                    r.target = {"target/step": s.step, "target/seconds": elapsed}
            epoch = s.step / self.batches_per_epoch
            self.logs[k].metrics(
                stage=self.stage, split="val", step=s.step, epoch=epoch, elapsed_s=elapsed, **val[k], **extra
            )
            if isinstance(self.scheduler, MemberSchedulers):
                self.scheduler.validated(k, score)  # (a member's plateau schedule)
            elif self.plateau:
                self.scheduler.step(score)
            if not all(math.isfinite(v) for v in val[k].values()):
                self.finish(k, status="diverged")
            elif reason := self.logs[k].stop_requested():  # the search's pruner (search.TrialReporter)
                self.finish(k, status=reason)
            elif self.trainer.early_stopping and s.evals_since_best[k] >= self.trainer.early_stopping:
                self.finish(k, stopped_early=True)
        optimizer_mode(self.optimizer, "train")
        self.progress.update(s.step, {f"val/{key}": v for key, v in val[0].items()})

    def test(self) -> list[StageResult]:
        """Evaluate the weights that validated best on the test split; the results of every member."""
        s, split = self.state, self.split
        tested = [k for k in range(self.count) if self.results[k].status == "completed" and s.best_state[k] is not None]
        if not tested:
            return self.results
        weights = [_tested_weights(s.best_state[k], self.results[k]) for k in range(self.count)]
        if isinstance(self.model, Members):
            self.model.load_member_states(weights)
        else:
            self.model.load_state_dict(weights[0])
        test = _per_member(
            evaluate(
                self.model,
                split.x_test,
                split.y_test,
                self.reconstruct,
                self.autocast,
                self.world,
                prepare=split.prepare,
            ),
            self.count,
        )
        for k in tested:
            r = self.results[k]
            r.test = test[k]
            self.logs[k].metrics(stage=self.stage, split="test", step=r.best_step, elapsed_s=r.seconds, **test[k])
        return self.results


def optimizer_mode(optimizer: Any, mode: str) -> None:
    """A schedule-free optimizer's mode: "train" puts the weights at the point gradients are taken
    at, "eval" at the averaged point that is evaluated and kept; other optimizers have no modes."""
    switch = getattr(optimizer, mode, None)
    if callable(switch):
        switch()


def fit(
    model: nn.Module,
    split: Split,
    seeds: list[int],
    settings: StageSettings,
    resume: dict[str, Any] | None = None,
) -> list[StageResult]:
    """Train `model` on `split` for `settings.max_steps` steps; validate every `trainer.eval_every` steps,
    keep the best weights by `trainer.monitor`, stop early or on a non-finite loss, then test the best.
    Returns one StageResult per member (`seeds[k]` orders member k's data, `settings.logs[k]` gets its
    rows). The checkpoint (for members, one per member) is written periodically and when interrupted; a
    single model continues from `resume` (such a checkpoint) to the numbers it would have had. A
    member's checkpoint is an ordinary single-model one (its slice of the stacked weights and optimizer
    state), so an interrupted member resumes as an ordinary run."""
    run = Stage(model, split, seeds, settings)
    max_steps, progress, world = settings.max_steps, settings.progress, settings.world
    s = run.state
    model.train()
    if resume is not None:
        run.restore(resume)
    optimizer_mode(run.optimizer, "train")
    progress.start_stage(settings.stage, max_steps)
    with interrupts.deferred():  # Ctrl-C / SIGTERM: finish the step, checkpoint, then stop
        while s.step < max_steps and run.running:
            batches = run.epoch_batches()
            while s.batch < run.batches_per_epoch and s.step < max_steps and run.running:
                idx = batches[s.batch][run.my_slice] if world.active else batches[s.batch]
                s.batch += 1
                # logging points: step 1 (the network at init), every log_every steps, the last step
                log_now = s.step == 0 or (s.step + 1) % run.trainer.log_every == 0 or s.step + 1 == max_steps
                run.train_step(idx, log_now)
                if log_now:
                    run.log_train()
                if (s.step % run.trainer.eval_every == 0 or s.step == max_steps) and run.running:
                    run.validate()
                if s.step < max_steps and run.running:
                    run.checkpoint_or_stop()
            if s.batch == run.batches_per_epoch:
                s.order = None  # the next epoch draws a new order
    optimizer_mode(run.optimizer, "eval")  # (schedule-free: the last weights kept are its averaged ones)
    for k in list(run.running):
        run.finish(k)
    progress.end_stage()
    return run.test()
