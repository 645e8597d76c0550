"""logger=tensorboard: event files in the run folder holding the same numbers as metrics.jsonl."""

from __future__ import annotations

import json

import pytest

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def test_tensorboard_scalars_match_metrics_jsonl(train):
    summary, run_dir = train("logger=tensorboard")
    assert summary["status"] == "completed"
    acc = event_accumulator.EventAccumulator(str(run_dir))
    acc.Reload()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    logged = {e.step: e.value for e in acc.Scalars("train/val/acc")}
    assert logged == {r["step"]: pytest.approx(r["acc"]) for r in val}
    assert "train/train/grad_norm/0" in acc.Tags()["scalars"]
    assert (run_dir / "hparams").is_dir()  # the hparams summary, for TensorBoard's HPARAMS tab
