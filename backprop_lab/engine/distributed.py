"""Data-parallel training under torchrun: the same run in N processes, one per CPU share or GPU.

    torchrun --standalone --nproc-per-node=2 $(which backprop-lab) train ...

Every process holds the whole (small) data set and draws the same shuffled order; process r takes
its 1/N slice of every global batch of `trainer.batch_size` examples. After backward the gradients
are averaged over the processes, so each optimizer step uses the mean gradient of the global batch,
as one process would. Train and evaluation metrics are summed over the processes before anyone reads
them, so every process takes the same decisions (best weights, early stopping, divergence). Rank 0
alone writes the run folder (the CLI sends the other ranks into a scratch folder it removes).

The gradients go through one all-reduce of all of them, flattened, rather than through
DistributedDataParallel: DDP fixes its buckets when it wraps the model, and gradual fine-tuning
unfreezes blocks mid-stage, which DDP refuses. For models of this size one all-reduce per step is
the whole communication cost either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

INTERRUPT_CHECK_EVERY = 10  # steps between the processes' agreement on a Ctrl-C / SIGTERM


@dataclass(frozen=True)
class World:
    """Where this process stands in a torchrun job; World() is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = World()  # the one process outside torchrun


def from_environment() -> World:
    """The world torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (a single process without them)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def start(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group (gloo on CPU, NCCL on CUDA, one GPU per local rank) once per process."""
    world = from_environment()
    if not world.active:
        return world, device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def stop() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over the processes, in place (a no-op outside a process group)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def _average_(tensors: list[torch.Tensor], world: World) -> None:
    """Each tensor becomes its mean over the processes, in place, with one all-reduce for all."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    sum_(flat).div_(world.size)
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        t.copy_(part.view_as(t))


def average_gradients_(params: list[torch.Tensor], world: World) -> None:
    """Every parameter's gradient becomes its mean over the processes."""
    _average_([p.grad for p in params if p.grad is not None], world)  # the same parameters train on every rank


def average_buffers_(module: torch.nn.Module, world: World) -> None:
    """Batch-norm running statistics differ by rank (each saw its own slices): average them, so
    that every process evaluates, and rank 0 saves, the same model."""
    _average_([b for b in module.buffers() if b.is_floating_point()], world)


def any_(flag: bool, device: torch.device) -> bool:
    """True on every process when it is True on any."""
    return bool(sum_(torch.tensor([float(flag)], device=device)).item() > 0)


def shard(n: int, world: World) -> slice:
    """This process's contiguous share of n items (evaluation splits)."""
    return slice(n * world.rank // world.size, n * (world.rank + 1) // world.size)
