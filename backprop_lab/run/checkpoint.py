"""The run folder's checkpoint: everything a stage needs to continue exactly where it stopped.

checkpoints/last.pt holds the model, optimizer and scheduler states, the RNG states, the position
in the data order, the running train window and the best-so-far state of early stopping. It is
written atomically (temp file, fsync, rename), so a kill at any moment leaves the previous one whole,
and read with torch.load(weights_only=True), so it cannot carry code.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from backprop_lab.errors import ConfigError


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.pt"


class Checkpointer:
    """Writes the checkpoint of one run every `every` steps (0: only when interrupted)."""

    def __init__(self, run_dir: Path, every: int):
        self.path = checkpoint_path(run_dir)
        self.every = every

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        buffer = io.BytesIO()  # (serialised first: a full disk is then the file's OSError, not a torch
        torch.save(state, buffer)  # RuntimeError from inside its zip writer)
        try:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)  # (only a whole file replaces the last good checkpoint)
        except BaseException:
            tmp.unlink(missing_ok=True)  # (no half-written file left behind: a full disk, a lost permission)
            raise

    def remove(self) -> None:
        """A finished run needs no checkpoint (weights/ keeps its best and last weights)."""
        self.path.unlink(missing_ok=True)
        if self.path.parent.is_dir() and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise ConfigError(
            "RUN_DIR",
            str(run_dir),
            "has no checkpoint (checkpoints/last.pt): it was never "
            "interrupted after a checkpoint, or trainer.checkpoint_every was 0 and it was killed",
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(
            "RUN_DIR",
            str(run_dir),
            "refused checkpoints/last.pt: it holds more than tensors and plain values (possibly code)",
        ) from None
    except Exception as err:
        raise ConfigError(
            "RUN_DIR",
            str(run_dir),
            f"checkpoints/last.pt is damaged ({type(err).__name__}); the run cannot continue from it",
        ) from None
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise ConfigError("RUN_DIR", str(run_dir), "checkpoints/last.pt is not a backprop-lab checkpoint")
    return state
