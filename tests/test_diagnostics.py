"""Diagnostics of a tiny net against the same quantities computed by hand."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from conftest import make_cfg

from backprop_lab.components.models import build_model
from backprop_lab.engine.diagnostics import Diagnostics


def _tiny(act: str):
    torch.manual_seed(0)
    model = build_model(make_cfg(f"act={act}", "model.depth=2", "model.width=5"), (3,), 2)
    x = torch.randn(16, 3)
    y = torch.randint(0, 2, (16,))
    return model, x, y


def test_relu_net_norms_ratios_and_dead_units():
    model, x, y = _tiny("relu")
    with torch.no_grad():  # make one unit of layer 0 dead for every input: a large negative bias
        model.blocks[0][0].bias[2] = -100.0
    (w0, b0), (w1, b1), (wh, bh) = [(b[0].weight, b[0].bias) for b in model.blocks] + [
        (model.head.weight, model.head.bias)
    ]
    h0 = torch.relu(x @ w0.T + b0)
    h1 = torch.relu(h0 @ w1.T + b1)
    loss = F.cross_entropy(h1 @ wh.T + bh, y)
    grads = torch.autograd.grad(loss, [w0, b0, w1, b1, wh, bh])
    by_hand = [torch.sqrt(grads[2 * i].pow(2).sum() + grads[2 * i + 1].pow(2).sum()) for i in range(3)]
    before = [w.detach().clone() for w in (w0, w1, wh)]

    diag = Diagnostics(model, "relu")
    diag.arm()
    F.cross_entropy(model(x), y).backward()
    diag.after_backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    values = diag.after_step()

    for i in range(3):
        torch.testing.assert_close(values[f"grad_norm/{i}"], by_hand[i])
        torch.testing.assert_close(values[f"update_ratio/{i}"], (0.1 * grads[2 * i]).norm() / before[i].norm())
        torch.testing.assert_close(values[f"weight_norm/{i}"], (before[i] - 0.1 * grads[2 * i]).norm())
    torch.testing.assert_close(values["act_mean/0"], h0.mean())
    torch.testing.assert_close(values["act_std/1"], h1.std())
    torch.testing.assert_close(values["dead/0"], (h0 <= 0).all(0).float().mean())
    assert values["dead/0"] >= 1 / 5
    assert not any(k.startswith("saturated") for k in values)


def test_sigmoid_saturation_fraction():
    model, x, y = _tiny("sigmoid")
    with torch.no_grad():
        model.blocks[1][0].weight.mul_(100)  # push layer 1 into its flat tails
    w0, b0 = model.blocks[0][0].weight, model.blocks[0][0].bias
    w1, b1 = model.blocks[1][0].weight, model.blocks[1][0].bias
    h1 = torch.sigmoid(torch.sigmoid(x @ w0.T + b0) @ w1.T + b1)
    diag = Diagnostics(model, "sigmoid")
    diag.arm()
    F.cross_entropy(model(x), y).backward()
    diag.after_backward()
    values = diag.after_step()
    torch.testing.assert_close(values["saturated/1"], ((h1 < 0.01) | (h1 > 0.99)).float().mean())
    assert values["saturated/1"] > 0.5 and not any(k.startswith("dead") for k in values)


def test_runs_log_diagnostics_at_logging_points(train):
    summary, run_dir = train("model.depth=3", "trainer.target_acc=0.0")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert train_rows[0]["step"] == 1  # the network at init
    assert all(f"grad_norm/{i}" in r for r in train_rows for i in range(4))
    assert all("gap/acc" in r for r in rows if r["split"] == "val")
    assert summary["metrics"]["target/step"] == 3  # the first evaluation reaches acc >= 0
    off, off_dir = train("trainer.diagnostics=false")
    assert not any("grad_norm/0" in line for line in (off_dir / "metrics.jsonl").read_text().splitlines())
