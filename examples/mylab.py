"""Techniques of your own, for backprop-lab: each one is named by `_target_: mylab.<name>` in a YAML
under configs/<group>/ (run from this folder: backprop-lab train --config-dir configs optimizer=signsgd).
"""

import numpy as np
import torch
from torch import nn


class SignSGD(torch.optim.Optimizer):
    """signSGD with momentum (Bernstein et al. 2018): w <- w - lr * sign(m), m <- momentum * m + grad.
    Each element's update depends on that element alone, so its YAML may say `elementwise: true`."""

    def __init__(self, params, lr=1e-3, momentum=0.9, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("m", torch.zeros_like(p))
                m.mul_(group["momentum"]).add_(p.grad)
                p.mul_(1 - group["lr"] * group["weight_decay"]).add_(m.sign(), alpha=-group["lr"])


def squareplus(x, b=4.0):
    """Squareplus (Barron 2021): a smooth ReLU, (x + sqrt(x^2 + b)) / 2."""
    return 0.5 * (x + torch.sqrt(x * x + b))


def orthogonality(model):
    """||W W^T - I||^2 summed over the linear layers that do not widen: keeps their rows orthonormal."""
    total = torch.zeros(())
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.out_features <= m.in_features:
            w = m.weight
            total = total + ((w @ w.T - torch.eye(len(w), device=w.device)) ** 2).sum()
    return total


def wide_mlp(input_shape, num_classes, act, width=256):
    """A one-hidden-layer MLP as a plain nn.Sequential: it trains, but has no blocks to pretrain."""
    n = int(np.prod(input_shape))
    return nn.Sequential(nn.Flatten(), nn.Linear(n, width), act(), nn.Linear(width, num_classes))


def blobs(n=600, dim=16, classes=3, seed=0):
    """Gaussian blobs: x, y, x_test, y_test as NumPy arrays (3/4 of them for training)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, dim)).astype(np.float32) + y[:, None]
    cut = 3 * n // 4
    return x[:cut], y[:cut], x[cut:], y[cut:]
