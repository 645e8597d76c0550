"""The engine against a hand-written torch step, and its stopping rules."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from conftest import Quiet, Rows, make_cfg

from backprop_lab.data import load_arrays
from backprop_lab.engine import fit
from backprop_lab.optimizers import build_optimizer
from backprop_lab.pretrain import plan
from backprop_lab.regularizers import Regularization


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
    fit(
        model,
        p.target,
        stage="train",
        optimizer=opt,
        scheduler=None,
        regularization=Regularization(model, cfg.regularizer),
        trainer=cfg.trainer,
        max_steps=1,
        seeds=[0],
        logs=[Rows()],
        progress=Quiet(),
    )
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
