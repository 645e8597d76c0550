"""Where a run's numbers go besides its folder (`logger=tensorboard`, `logger=mlflow`, or both:
`logger=[tensorboard,mlflow]`). A tracker gets every metrics row as the run writes it, and the
summary at the end; the run folder stays the record, so a tracker that fails says so once and the
run goes on. Each tracker imports its package only when chosen."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from backprop_lab.errors import ConfigError

log = logging.getLogger(__name__)
SINGLE_RUN_EXPERIMENT = "backprop-lab"  # MLflow's experiment for runs outside a sweep


def _finite_numbers(row: dict[str, Any]) -> dict[str, float]:
    skip = ("step", "stage", "split")
    return {
        k: float(v)
        for k, v in row.items()
        if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


class TensorBoard:
    """TensorBoard event files in the run folder: every metric, and the hparams at the end."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "logger", "tensorboard", "needs the tensorboard package: pip install 'backprop-lab[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(log_dir=str(run_dir))

    def metrics(self, row: dict[str, Any]) -> None:
        if row.get("step") is None:
            return
        for key, value in _finite_numbers(row).items():
            self.writer.add_scalar(f"{row['stage']}/{row['split']}/{key}", value, row["step"])

    def finish(self, summary: dict[str, Any], params: dict[str, Any]) -> None:
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()}
        self.writer.add_hparams(clean, _finite_numbers(summary.get("metrics", {})), run_name="hparams")
        self.writer.close()


def flat_params(cfg: DictConfig, choices: dict[str, str], overrides: list[str]) -> dict[str, str]:
    """A run's MLflow params: the choices (act=relu, ...), the overrides as typed, and every value of
    the composed config by its dotted key (optimizer.lr, trainer.max_steps, ...)."""
    values = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(values, dict)  # the composed config is a mapping
    params: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            params[prefix] = str(node)[:6000]  # MLflow's limit on a param's value

    walk("", values)
    params.update(choices)
    params["overrides"] = " ".join(overrides) or "(none)"
    return params


class MLflow:
    """The run as an MLflow run: params, metric histories, test metrics, summary.json and the composed
    config as artifacts, its status as a tag. A resumed run goes on in the MLflow run it started
    (its id is in summary.json)."""

    def __init__(self, logger: DictConfig, run_dir: Path, experiment: str, run_id: str | None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError(
                "logger", "mlflow", "needs the mlflow package: pip install 'backprop-lab[mlflow]'"
            ) from None
        self.uri = absolute_uri(str(logger.tracking_uri))
        self.run_dir, self.failed = run_dir, False
        self.pending: list[Any] = []  # metrics not yet written (one write per evaluation)
        try:
            with _store_lock(self.uri):  # the first process creates the database; the others wait for it
                self.client = MlflowClient(tracking_uri=self.uri)
                found = self.client.get_experiment_by_name(experiment)
                experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            if run_id is None:
                self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            else:
                self.run_id = run_id
                self.client.update_run(run_id, status="RUNNING")
        except Exception as err:  # a URI MLflow cannot open, a server that does not answer
            raise ConfigError("logger.tracking_uri", str(logger.tracking_uri), _one_line(err)) from None
        self.experiment = experiment

    def start(self, params: dict[str, str], run_name: str) -> None:
        from mlflow.entities import Param, RunTag

        tags = [RunTag("status", "running"), RunTag("run_dir", str(self.run_dir)), RunTag("mlflow.runName", run_name)]
        items = [Param(k, v) for k, v in params.items()]
        self._call(lambda: self.client.log_batch(self.run_id, tags=tags))
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
            self._call(lambda chunk=items[i : i + 100]: self.client.log_batch(self.run_id, params=chunk))

    def metrics(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        if row.get("step") is None:
            return
        prefix = f"{row['stage']}/" if row["stage"] == "pretrain" else ""  # the final stage's keys: val/acc
        now = int(time.time() * 1000)
        self.pending += [
            Metric(f"{prefix}{row['split']}/{k}", v, now, int(row["step"])) for k, v in _finite_numbers(row).items()
        ]
        if row["split"] != "train" or len(self.pending) >= 900:  # at evaluations: one write per window
            self.flush()

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for i in range(0, len(pending), 900):  # (at most 1000 metrics per call)
            self._call(lambda chunk=pending[i : i + 900]: self.client.log_batch(self.run_id, metrics=chunk))

    def finish(self, summary: dict[str, Any], params: dict[str, Any]) -> None:
        self.flush()
        status = str(summary.get("status"))
        self._call(lambda: self.client.set_tag(self.run_id, "status", status))
        for path in (self.run_dir / "summary.json", self.run_dir / ".hydra" / "config.yaml"):
            if path.is_file():
                self._call(lambda p=path: self.client.log_artifact(self.run_id, str(p)))
        ended = {"completed": "FINISHED", "interrupted": "KILLED", "running": "KILLED"}.get(status, "FAILED")
        self._call(lambda: self.client.set_terminated(self.run_id, ended))

    def _call(self, write: Any) -> None:
        """One write to the store; the first failure is reported and the rest skipped (the run folder
        has every number)."""
        if self.failed:
            return
        try:
            write()
        except Exception as err:
            self.failed = True
            log.warning("MLflow: %s; this run's folder has every number, MLflow stops here", _one_line(err))
            from backprop_lab.console import err_console

            err_console.print(f"warning: MLflow stopped logging ({_one_line(err)}); the run goes on", markup=False)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    text = text if len(text) <= 200 else text[:200].rsplit(" ", 1)[0] + " ..."
    return f"{type(err).__name__}: {text}"


def absolute_uri(uri: str) -> str:
    """sqlite:///relative.db names a file in the working directory: made absolute, so every job of a
    sweep (and a resumed run) writes the same store wherever it runs."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
        return prefix + str(Path(uri[len(prefix) :]).absolute())
    return uri


@contextlib.contextmanager
def _store_lock(uri: str) -> Any:
    """Jobs that start together (joblib, submitit) would each create a new SQLite store's tables: the
    first takes an exclusive lock on the file (SQLite's own locks are of another kind), the others wait."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        yield
        return
    path = Path(uri[len(prefix) :])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def attach(runlog: Any, job: Any, previous: dict[str, Any] | None) -> dict[str, Any]:
    """The trackers `logger` chooses for one run (rank 0 only), and the Optuna trial it is (whose
    pruner may stop it); a resumed run's MLflow run goes on. Returns what summary.json records."""
    logger, recorded = job.cfg.logger, {}
    if logger.get("tensorboard"):
        runlog.trackers.append(TensorBoard(job.run_dir))
    if logger.get("mlflow"):
        before = (previous or {}).get("mlflow") or {}
        experiment = before.get("experiment") or logger.get("experiment") or job.sweep_dir or SINGLE_RUN_EXPERIMENT
        tracker = MLflow(logger, job.run_dir, str(experiment), before.get("run_id"))
        name = f"{job.run_dir.name} {' '.join(job.overrides)}".strip()
        tracker.start(flat_params(job.cfg, job.choices, job.overrides), name[:250])
        runlog.trackers.append(tracker)
        recorded["mlflow"] = {"tracking_uri": tracker.uri, "experiment": tracker.experiment, "run_id": tracker.run_id}
    if job.trial is not None:
        from backprop_lab.run.search import TrialReporter

        runlog.trackers.append(TrialReporter(job.trial, str(job.cfg.trainer.monitor)))
    return recorded
