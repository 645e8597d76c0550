"""Python's cyclic garbage collector, paused while a console command starts up.

Importing torch, torch._dynamo, Hydra and OmegaConf allocates hundreds of thousands of objects that live
as long as the process, and the collector walks them again and again as they arrive: about a quarter
of the time importing torch and torch._dynamo takes (BENCHMARKS.md). `backprop-lab train`, `resume` and `study`,
run as their own process, pause the collector at their start (cli.main); once the first run has built
its plans (training._prepare), everything alive is moved to the permanent generation (gc.freeze: those
objects are never walked again) and collection goes on as usual. A command that ends before (bad
input, a report) ends its process with the collector paused. The Python API leaves it alone.
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Collection as usual, start-up objects frozen; nothing to do unless `pause` paused it."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
