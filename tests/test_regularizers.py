"""Regularizer penalties, gradients and decay against an independent torch computation."""

from __future__ import annotations

import pytest
import torch
from conftest import make_cfg
from omegaconf import OmegaConf
from torch import nn

from backprop_lab.components.models import build_model
from backprop_lab.components.optimizers import build_optimizer
from backprop_lab.components.regularizers import Regularization, active_regularizers
from backprop_lab.vectorized.members import Members


def _model(*overrides: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(make_cfg("data=synthetic", *overrides), (6,), 3)


def _reg(**values) -> OmegaConf:
    base = dict(l1=0.0, l2=0.0, l2_mode="penalty", dropout=0.0, batchnorm=False, decay_bias_and_norm=False)
    return OmegaConf.create({**base, **values})


def _weights(model):  # an independent choice of what is regularised: Linear weight matrices only
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("l1,l2", [(0.01, 0.0), (0.0, 0.1), (0.003, 0.05)])
def test_penalty_value_and_gradient(l1, l2):
    model = _model("regularizer=batchnorm")
    reg = Regularization(model, _reg(l1=l1, l2=l2))
    penalty = reg.penalty()
    expected = sum(l1 * w.abs().sum() + 0.5 * l2 * (w**2).sum() for w in _weights(model))
    torch.testing.assert_close(penalty, expected)

    penalty.backward()
    for w in _weights(model):
        torch.testing.assert_close(w.grad, l1 * torch.sign(w.detach()) + l2 * w.detach())
    for name, p in model.named_parameters():
        if p.ndim < 2:  # biases and batch-norm scales are left alone by default
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    # the engine adds these gradients without autograd, onto the loss's: the same numbers
    by_autograd = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    assert reg.adds_to_gradients and not reg.adds_to_loss
    reg.add_penalty_gradients_()
    for name, p in model.named_parameters():
        if name in by_autograd:
            torch.testing.assert_close(p.grad, by_autograd[name], rtol=1e-6, atol=0)
            if not (l1 and l2):  # (elastic net: autograd adds its two terms in an order of its own)
                assert torch.equal(p.grad, by_autograd[name]), name
        else:
            assert p.grad is None, name


def test_each_members_penalty_gradient_is_its_own_coefficient_times_its_weights():
    """Members whose l1 and l2 differ: the gradients added are what autograd makes of penalty(), which
    weighs each member's sum by its own coefficients, bit for bit."""
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model(make_cfg("data=synthetic"), (6,), 3))
    members = Members(models)
    regs = [_reg(l1=l1, l2=l2) for l1, l2 in ((0.0, 0.1), (0.01, 0.0), (0.0, 0.3))]
    reg = Regularization(members, regs[0], regs)
    reg.penalty().backward()
    by_autograd = [p.grad for p in members.stacked]  # (None for biases: not penalised)
    members.zero_grad(set_to_none=True)
    reg.add_penalty_gradients_()
    for p, expected in zip(members.stacked, by_autograd, strict=True):
        if p.ndim - 1 >= 2:  # weights
            assert torch.equal(p.grad, expected)
            w = p.detach()
            torch.testing.assert_close(p.grad[1], 0.01 * torch.sign(w[1]))
            torch.testing.assert_close(p.grad[2], 0.3 * w[2])
        else:
            assert p.grad is None and expected is None


def test_bias_and_norm_are_penalised_only_when_asked():
    model = _model("regularizer=batchnorm")
    reg = Regularization(model, _reg(l2=0.2, decay_bias_and_norm=True))
    expected = 0.5 * 0.2 * sum((p**2).sum() for p in model.parameters())
    torch.testing.assert_close(reg.penalty(), expected)


def test_decoupled_decay_shrinks_weights_not_biases():
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reg = Regularization(model, _reg(l2=0.5, l2_mode="decoupled"))
    assert not reg.adds_to_loss
    reg.decay_(lr=0.1)
    for n, p in model.named_parameters():
        factor = 1 - 0.1 * 0.5 if p.ndim >= 2 else 1.0
        torch.testing.assert_close(p.detach(), before[n] * factor)


def test_optimizer_weight_decay_skips_biases():
    cfg = make_cfg("optimizer=adamw", "optimizer.weight_decay=0.3")
    model = _model()
    opt = build_optimizer(model, cfg.optimizer, decay_all=False)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for p in model.parameters():
        assert decay[id(p)] == (0.3 if p.ndim >= 2 else 0.0)


def test_dropout_and_batchnorm_are_layers_of_every_model():
    for model_name, shape in (("mlp", (6,)), ("cnn1d", (16,)), ("cnn2d", (8, 8))):
        torch.manual_seed(0)
        cfg = make_cfg(f"model={model_name}", "regularizer=[dropout,batchnorm]", "regularizer.dropout=0.3")
        model = build_model(cfg, shape, 3)
        drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert drops and all(d.p == 0.3 for d in drops) and len(norms) == len(model.blocks)


def test_option_lists_merge_into_one_node():
    cfg = make_cfg("regularizer=[l2,dropout,batchnorm]", "regularizer.dropout=0.3")
    assert cfg.regularizer.l2 == 1e-4 and cfg.regularizer.dropout == 0.3 and cfg.regularizer.batchnorm
    assert active_regularizers(cfg.regularizer) == ["l2", "dropout", "batchnorm"]
    assert active_regularizers(make_cfg("regularizer=elastic_net").regularizer) == ["elastic_net"]
