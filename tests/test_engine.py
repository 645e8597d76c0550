"""The engine against a hand-written torch step, and its stopping rules."""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F
from conftest import Quiet, Rows, make_cfg

from backprop_lab.components.optimizers import build_optimizer
from backprop_lab.components.regularizers import Regularization
from backprop_lab.data.datasets import load_arrays
from backprop_lab.engine.loop import StageSettings, fit
from backprop_lab.run.pretrain import plan
from backprop_lab.run.runlog import read_metrics


def test_one_full_batch_step_matches_a_hand_written_step():
    cfg = make_cfg(
        "data=synthetic",
        "optimizer=sgd",
        "optimizer.lr=0.5",
        "regularizer=elastic_net",
        "regularizer.l1=0.01",
        "regularizer.l2=0.1",
        "trainer.batch_size=100000",
        "trainer.progress=off",
    )
    torch.manual_seed(0)
    p = plan(cfg, load_arrays(cfg.data), torch.device("cpu"))
    model = p.model
    x, y = p.target.x_train, p.target.y_train
    by_hand = {n: t.detach().clone() for n, t in model.named_parameters()}

    # the independent computation: full-batch loss + penalty on weight matrices, plain SGD
    params = {n: t.clone().requires_grad_(True) for n, t in by_hand.items()}
    out = torch.func.functional_call(model, params, (x,))
    loss = F.cross_entropy(out, y)
    weights = [t for n, t in params.items() if t.ndim >= 2]
    loss = loss + sum(0.01 * w.abs().sum() + 0.05 * (w**2).sum() for w in weights)
    grads = torch.autograd.grad(loss, list(params.values()))
    expected = {n: t - 0.5 * g for (n, t), g in zip(params.items(), grads, strict=True)}

    opt = build_optimizer(model, cfg.optimizer, decay_all=False)
    settings = StageSettings(
        stage="train",
        optimizer=opt,
        scheduler=None,
        regularization=Regularization(model, cfg.regularizer),
        trainer=cfg.trainer,
        max_steps=1,
        logs=[Rows()],
        progress=Quiet(),
    )
    fit(model, p.target, [0], settings)
    # fit restores the best weights, which after one step are the weights after that step
    for n, t in model.named_parameters():
        torch.testing.assert_close(t.detach(), expected[n].detach(), rtol=1e-5, atol=1e-6)


def test_training_reduces_the_loss(train):
    summary, run_dir = train(
        "trainer.max_steps=200", "trainer.eval_every=100", "trainer.log_every=50", "optimizer.lr=0.01"
    )
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert train_losses[-1] < 0.5 * train_losses[0]
    assert summary["metrics"]["test/acc"] > 0.6  # 4 separable classes: chance is 0.25


def test_divergence_is_a_status_not_a_crash(train):
    summary, run_dir = train("optimizer=sgd", "optimizer.lr=1e12", "trainer.max_steps=50", "trainer.log_every=5")
    assert summary["status"] == "diverged"
    assert "non-finite" in summary["error"]
    assert summary["stages"][0]["steps"] < 50  # stopped at the first logging point that saw it
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"


def test_a_loss_that_blows_up_but_stays_finite_completes_with_a_warning(train, tmp_path, capsys):
    from backprop_lab.lab.compare import compare, find_runs
    from backprop_lab.lab.report import write_report

    chance = math.log(4)  # synthetic data: 4 classes
    wild, wild_dir = train("optimizer=rmsprop", "optimizer.lr=0.3", "trainer.max_steps=30", "trainer.log_every=5")
    sane, sane_dir = train("optimizer=sgd", "optimizer.lr=0.3", "trainer.max_steps=30", "trainer.log_every=5")
    assert wild["status"] == sane["status"] == "completed"
    high = [k for k in ("train/loss", "val/loss", "test/loss") if wild["metrics"][k] > 10 * chance]
    assert high and wild["warnings"][0].startswith("unstable: " + high[0])
    peak = max(r["loss"] for r in read_metrics(wild_dir / "metrics.jsonl")[1:] if r["split"] == "train")
    assert peak > 100 * chance and f"loss spike: train loss {peak:.4g}" in wild["warnings"][1]
    assert "warning: unstable" in capsys.readouterr().err
    assert max(sane["metrics"][k] for k in ("train/loss", "val/loss", "test/loss")) < 10 * chance
    assert sane["warnings"] == []
    for run_dir, name in ((wild_dir, "rmsprop"), (sane_dir, "sgd")):  # what the CLI writes beside summary.json
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text(f"- optimizer={name}\n")
        (run_dir / ".hydra" / "config.yaml").write_text(f"optimizer:\n  name: {name}\n")
    _, rows = compare(find_runs([tmp_path]), ["test/acc"], by=["optimizer"])
    assert sorted(r.status_text for r in rows) == ["1 completed", "1 completed (1 unstable)"]
    report = write_report([tmp_path], tmp_path / "report", ["test/acc"]).read_text()
    assert f"`{wild_dir}`: unstable:" in report


def test_loss_warnings_draw_the_line_at_ten_times_chance(tmp_path):
    from backprop_lab.run.instability import loss_warnings

    line = 10 * math.log(10)
    assert loss_warnings({"test/loss": line * 0.99}, 10, tmp_path / "none.jsonl", "train") == []
    assert loss_warnings({"test/loss": line * 1.01}, 10, tmp_path / "none.jsonl", "train")[0].startswith(
        "unstable: test/loss"
    )
    assert loss_warnings({"test/loss": float("inf")}, 10, tmp_path / "none.jsonl", "train") == []  # (diverged's)


def test_early_stopping_counts_evaluations_without_improvement(train):
    # an improvement must beat min_delta=2 (impossible for accuracy): stop after 1 + patience evaluations
    summary, _ = train(
        "trainer.max_steps=1000", "trainer.eval_every=4", "trainer.early_stopping=3", "trainer.min_delta=2.0"
    )
    stage = summary["stages"][0]
    assert stage["stopped_early"] and stage["steps"] == 16 and stage["best_step"] == 4


def test_same_seed_same_numbers_other_seed_other_numbers(train):
    a, _ = train("seed=3", "trainer.deterministic=true")
    b, _ = train("seed=3", "trainer.deterministic=true")
    c, _ = train("seed=4", "trainer.deterministic=true")
    assert a["metrics"] == b["metrics"]
    assert a["metrics"] != c["metrics"]


def test_max_epochs_replaces_max_steps(train):
    summary, _ = train("trainer.max_epochs=2", "trainer.batch_size=50")
    # synthetic: 600 samples -> 480 train -> 432 after the 10% validation split -> 8 batches of 50
    assert summary["stages"][0]["steps"] == 16 and summary["sizes"]["train"] == 432


def test_compiled_model_trains_to_the_same_numbers(train):
    """trainer.compile=true (torch.compile) is a faster path, not another model: same losses."""
    eager, eager_dir = train("trainer.max_steps=4", "trainer.log_every=1", "trainer.diagnostics=false")
    compiled, compiled_dir = train(
        "trainer.max_steps=4", "trainer.log_every=1", "trainer.diagnostics=false", "trainer.compile=true"
    )
    assert compiled["status"] == "completed"
    a = [
        r["loss"]
        for r in map(json.loads, (eager_dir / "metrics.jsonl").read_text().splitlines())
        if r["split"] == "train"
    ]
    b = [
        r["loss"]
        for r in map(json.loads, (compiled_dir / "metrics.jsonl").read_text().splitlines())
        if r["split"] == "train"
    ]
    assert len(a) == 4 and torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-4)


def test_schedule_free_is_evaluated_and_kept_at_its_averaged_weights():
    """Schedule-free AdamW steps at one point (y) and is evaluated at another (x, the average): three
    full-batch steps by hand in train mode, then eval mode, give the x the engine must have evaluated
    and kept as the best weights (at y the numbers would differ)."""
    import copy

    import schedulefree

    cfg = make_cfg("data=synthetic", "optimizer=schedulefree_adamw", "trainer.batch_size=100000",
                   "trainer.max_steps=3", "trainer.eval_every=3", "trainer.progress=off")  # fmt: skip
    torch.manual_seed(0)
    p = plan(cfg, load_arrays(cfg.data), torch.device("cpu"))
    model, x, y = p.model, p.target.x_train, p.target.y_train
    by_hand = copy.deepcopy(model)
    opt = schedulefree.AdamWScheduleFree(by_hand.parameters(), lr=0.0025, betas=(0.9, 0.999), eps=1e-8)
    opt.train()
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(by_hand(x), y).backward()
        opt.step()
    at_y = {n: t.detach().clone() for n, t in by_hand.named_parameters()}
    opt.eval()

    settings = StageSettings(
        stage="train",
        optimizer=build_optimizer(model, cfg.optimizer, decay_all=False),
        scheduler=None,
        regularization=Regularization(model, cfg.regularizer),
        trainer=cfg.trainer,
        max_steps=3,
        logs=[Rows()],
        progress=Quiet(),
    )
    (result,) = fit(model, p.target, [0], settings)
    assert result.best_step == 3
    for t, expected in zip(model.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(t.detach(), expected.detach(), rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(t, at_y[n]) for n, t in by_hand.named_parameters())  # (x is not y)
