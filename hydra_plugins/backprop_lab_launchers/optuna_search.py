"""hydra/sweeper=optuna: the Optuna plugin's sweeper with one change. When every trial of a study
failed (diverged or refused runs), the plugin ends in its own traceback ("No trials are completed
yet"); here the sweep ends like any sweep whose runs did not complete: one line, the runs listed,
exit status 1. (Hydra takes sweepers only from the hydra_plugins package, hence here.)"""

# (no `from __future__ import annotations`: see vectorized_launcher.py)
import logging
from typing import Any

log = logging.getLogger(__name__)

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _PluginSweeper
except ImportError:  # the optional extra backprop-lab[search] is not installed
    pass
else:

    class OptunaSweeper(_PluginSweeper):
        def sweep(self, arguments: list[str]) -> Any:
            try:
                return super().sweep(arguments)
            except ValueError as err:
                if "No trials are completed yet" not in str(err):
                    raise
                log.error("no trial completed: every run diverged or failed (their folders are listed below)")
                return None
