"""Pretraining strategies: stages, freezing, checkpoints, and refusing unsafe weight files."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAST, make_cfg, sweep_here

from backprop_lab.components.models import build_model
from backprop_lab.errors import ConfigError
from backprop_lab.run.pretrain import finetune_hook, load_weights

TRANSFER = ["pretrain=supervised", "data.source_classes=[0,1]", "data.target_classes=[2,3]"]


def _body(state):
    return {k: v for k, v in state.items() if k.startswith("blocks.")}


def test_supervised_transfer_writes_both_stages(train):
    summary, run_dir = train(*TRANSFER, "data.n_train=40")
    assert [s["stage"] for s in summary["stages"]] == ["pretrain", "finetune"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {"pretrain", "finetune"}
    assert summary["sizes"]["train"] == 40
    pre = torch.load(run_dir / "weights" / "pretrain.pt", weights_only=True)
    assert pre["head.weight"].shape[0] == 2  # the source task's head


def _rows_without_times(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in rows]


def test_jobs_that_differ_only_in_the_fine_tune_share_one_pretraining_stage(tmp_path):
    """A label budget x fine-tune sweep trains the pretraining stage once per seed; every other job starts
    from it and writes, and ends with, exactly what its own pretraining would have given (dropout masks
    and the new head draw from torch's random state after the stage)."""
    grid = [*FAST, *TRANSFER, "regularizer=dropout", "data.n_train=20,40", "pretrain.finetune=freeze,full", "seed=0,1"]
    shared = sweep_here(tmp_path / "shared", *grid)
    own = sweep_here(tmp_path / "own", *grid, "pretrain.reuse=false")
    trained_by = {}
    for job in range(8):
        summaries = [json.loads((sweep / str(job) / "summary.json").read_text()) for sweep in (shared, own)]
        assert [s["status"] for s in summaries] == ["completed"] * 2
        assert "reused_from" not in summaries[1]["stages"][0]
        trained_by[job] = summaries[0]["stages"][0].get("reused_from", str(shared / str(job)))
        assert json.loads((tmp_path / trained_by[job] / "summary.json").read_text())["seed"] == summaries[0]["seed"]
        rows = [_rows_without_times(sweep / str(job)) for sweep in (shared, own)]
        assert rows[0] == rows[1] and {r["stage"] for r in rows[0]} == {"pretrain", "finetune"}
        for weights in ("pretrain.pt", "best.pt", "last.pt"):
            a, b = (torch.load(sweep / str(job) / "weights" / weights, weights_only=True) for sweep in (shared, own))
            assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(set(trained_by.values())) == 2  # one pretraining per seed, not one per job


def test_freeze_trains_only_the_head(train):
    summary, run_dir = train(*TRANSFER, "pretrain.finetune=freeze", "regularizer=[batchnorm,dropout]")
    pre = torch.load(run_dir / "weights" / "pretrain.pt", weights_only=True)
    last = torch.load(run_dir / "weights" / "last.pt", weights_only=True)
    for k, v in _body(pre).items():  # weights and batch-norm statistics alike
        torch.testing.assert_close(last[k], v)


def test_full_finetune_changes_the_body(train):
    _, run_dir = train(*TRANSFER, "pretrain.finetune=full")
    pre = torch.load(run_dir / "weights" / "pretrain.pt", weights_only=True)
    last = torch.load(run_dir / "weights" / "last.pt", weights_only=True)
    assert any(not torch.equal(last[k], v) for k, v in _body(pre).items())


def test_gradual_unfreezes_one_block_at_a_time_from_the_top():
    model = build_model(make_cfg("model.depth=3"), (6,), 3)
    hook = finetune_hook(model, "gradual", unfreeze_every=10)
    trainable = lambda: [all(p.requires_grad for p in b.parameters()) for b in model.blocks]  # noqa: E731
    assert trainable() == [False, False, False]
    for step, expected in (
        (9, [False] * 3),
        (10, [False, False, True]),
        (20, [False, True, True]),
        (30, [True] * 3),
        (40, [True] * 3),
    ):
        hook(step)
        assert trainable() == expected, step
    assert all(p.requires_grad for p in model.head.parameters())


def test_checkpoint_from_a_run_folder(train):
    _, first = train()
    summary, run_dir = train("pretrain=checkpoint", f"pretrain.path={first}", "pretrain.finetune=freeze")
    assert summary["status"] == "completed"
    src = torch.load(first / "weights" / "best.pt", weights_only=True)
    last = torch.load(run_dir / "weights" / "last.pt", weights_only=True)
    for k, v in _body(src).items():
        torch.testing.assert_close(last[k], v)


def test_checkpoint_of_another_shape_is_refused(train):
    _, first = train("model.width=7")
    summary, _ = train("pretrain=checkpoint", f"pretrain.path={first}")
    assert summary["status"] == "failed" and "do not fit this model" in summary["error"]


class Payload:
    def __reduce__(self):
        return (print, ("this ran code",))


def test_a_weights_file_that_carries_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"blocks.0.0.weight": torch.zeros(2), "x": Payload()}, path)
    with pytest.raises(ConfigError, match="refused"):
        load_weights(str(path))


def test_autoencoder_pretrains_on_reconstruction(train):
    summary, run_dir = train("pretrain=autoencoder", "trainer.max_steps=30", "trainer.eval_every=10")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    pre = [r for r in rows if r["stage"] == "pretrain" and r["split"] == "train"]
    assert pre and all("acc" not in r for r in pre) and pre[-1]["loss"] < pre[0]["loss"]
    assert summary["stages"][1]["metrics"]["test/acc"] > 0


def test_kept_pretraining_stages_stay_within_their_byte_budget(tmp_path, monkeypatch):
    """A process keeps the newest stages whose weights (after the stage and at its last step) fit
    stage_reuse.KEPT_BYTES; older ones are dropped and trained again when asked for."""
    from collections import OrderedDict

    from backprop_lab.engine.loop import StageResult
    from backprop_lab.run import stage_reuse

    monkeypatch.setattr(stage_reuse, "_trained", OrderedDict())
    monkeypatch.setattr(stage_reuse, "KEPT_BYTES", 1000)
    model = torch.nn.Linear(10, 10)  # 110 floats: 440 bytes, twice per stage
    (tmp_path / "metrics.jsonl").write_text("")
    result = StageResult("pretrain", "completed", 1, 0.1, 0.0, last_state=model.state_dict())
    cfgs = [make_cfg(*TRANSFER, f"seed={seed}") for seed in range(3)]
    for cfg in cfgs:
        stage_reuse.keep(cfg, tmp_path, result, model)
    assert [stage_reuse.find(cfg) is not None for cfg in cfgs] == [False, False, True]
