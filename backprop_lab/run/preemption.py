"""Preemption and time limits on a cluster: hydra/launcher=submitit_slurm (and submitit_local).

SLURM warns a job before it preempts it or its time runs out with a signal (submitit asks for
SIGUSR2, `signal_delay_s` before the end). submitit's handler for it pickles the job and requeues it;
hydra-submitit-launcher makes every job checkpointable, so the requeued job runs Hydra's task again
with the same arguments, in the same folder. Left alone, that would train from step 0 and lose the
step the run had reached. Here the signal first reaches the training loop (interrupts.handle): the
step finishes, a checkpoint is written and the run records `interrupted`; then submitit's own handler
requeues the job; and the requeued task, finding its folder interrupted with a checkpoint, resumes
from it (training.resume), as `backprop-lab resume RUN_DIR` would.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from backprop_lab.engine import interrupts

_requeue: dict[str, Any] = {}  # the signal and submitit's handler for it, once armed


def under_submitit() -> bool:
    """Is this process a job that submitit started (SLURM or its local twin)?"""
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def arm() -> None:
    """Put the training loop between the requeue signal and submitit's handler for it."""
    from submitit import JobEnvironment

    sig = JobEnvironment._usr_sig()
    _requeue.update(signal=sig, handler=signal.getsignal(sig), pending=False)

    def checkpoint_first(signum: int, frame: Any) -> None:
        _requeue["pending"] = True
        interrupts.handle(signum, frame)  # in the loop: finish the step, checkpoint, then KeyboardInterrupt

    signal.signal(sig, checkpoint_first)


def requeue_if_asked() -> None:
    """After a run stopped on the requeue signal: hand the signal to submitit, which pickles the job,
    requeues it and ends this process. Returns (doing nothing) when the stop had another cause."""
    handler = _requeue.get("handler")
    if _requeue.get("pending") and callable(handler):
        handler(_requeue["signal"], None)


def run_job(job: Any) -> dict[str, Any]:
    """A job of a submitit sweep: resumed from its checkpoint when it is a requeued one, else trained."""
    from backprop_lab.run.sweep_resume import action
    from backprop_lab.run.training import resume, run_members

    arm()
    try:
        return resume(job.run_dir) if action(job.run_dir) == "resume" else run_members([job])[0]
    except KeyboardInterrupt:
        requeue_if_asked()
        raise
