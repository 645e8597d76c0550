"""Options of the user's own (`_target_`), the shipped muon and adafactor, and a third-party optimizer:
real runs, numbers against the shipped options and an independent torch computation, one-line errors."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST
from omegaconf import OmegaConf
from test_cli import EXE
from test_launchers import assert_same_rows, rows, sweep
from torch import nn

from backprop_lab.components.models import Classifier, build_model
from backprop_lab.components.optimizers import MuonWithAdamW, build_optimizer
from backprop_lab.components.regularizers import Regularization
from backprop_lab.groups import GROUPS
from backprop_lab.run.job_check import compose_train
from backprop_lab.run.training import run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# A user's module beside their configs: a model that is a Classifier, one that is not, and bad data.
EXTRA_CODE = """

from backprop_lab.models import Classifier


def body_and_head(input_shape, num_classes, act, width=16):
    n = int(np.prod(input_shape))
    return Classifier([nn.Sequential(nn.Linear(n, width), act())], (n,), width, num_classes)


def not_arrays():
    return "x.npy"
"""

CONFIGS = {
    "optimizer/torch_sgd.yaml": "_target_: torch.optim.SGD\nlr: 0.05\nmomentum: 0.0\nweight_decay: 0.0\n",
    "act/tanh_function.yaml": "_target_: torch.tanh\ninit: xavier\n",
    "scheduler/torch_step.yaml": "_target_: torch.optim.lr_scheduler.StepLR\nstep_size: 3\ngamma: 0.5\n",
    "model/body_and_head.yaml": "_target_: mylab.body_and_head\nwidth: 16\n",
    "data/not_arrays.yaml": "_target_: mylab.not_arrays\n",
    "optimizer/ghost.yaml": "_target_: mylab.Ghost\nlr: 0.1\n",
    "optimizer/nomodule.yaml": "_target_: nomodule.Opt\nlr: 0.1\n",
    "optimizer/wrong_kind.yaml": "_target_: builtins.dict\nlr: 0.1\n",
    "optimizer/bad_args.yaml": "_target_: mylab.SignSGD\nlr: 0.1\nbetas: [0.9, 0.99]\n",
    "optimizer/signsgd_plain.yaml": "_target_: mylab.SignSGD\nlr: 0.001\n",  # not declared elementwise
}


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A user's folder: examples/mylab.py (+ EXTRA_CODE) and examples/configs (+ CONFIGS); the cwd."""
    shutil.copytree(EXAMPLES / "configs", tmp_path / "configs")
    (tmp_path / "mylab.py").write_text((EXAMPLES / "mylab.py").read_text() + EXTRA_CODE)
    for name, text in CONFIGS.items():
        (tmp_path / "configs" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "configs" / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mylab", None)
    return tmp_path


def run_own(lab: Path, name: str, *overrides: str) -> dict:
    """One run in this process, composed with the user's config folder as `train --config-dir` does."""
    cfg = compose_train([*FAST, *overrides], lab / "configs")
    choices = {g: str(cfg[g].get("name") or "") for g in GROUPS if g in cfg}
    for o in overrides:  # the option's file name, as Hydra records it
        key, _, value = o.partition("=")
        if key in GROUPS:
            choices[key] = value
    return run(cfg, lab / name, choices, list(overrides))


def test_target_options_give_the_shipped_options_numbers(lab):
    """torch.optim.SGD, torch.tanh and StepLR named by _target_ train exactly as sgd, tanh and step."""
    own = run_own(lab, "own", "optimizer=torch_sgd", "act=tanh_function", "scheduler=torch_step")
    shipped = run_own(
        lab,
        "shipped",
        "optimizer=sgd",
        "optimizer.lr=0.05",
        "act=tanh",
        "scheduler=step",
        "scheduler.step_size=3",
        "scheduler.gamma=0.5",
    )
    assert own["status"] == shipped["status"] == "completed"
    assert own["choices"]["optimizer"] == "torch_sgd" and own["choices"]["act"] == "tanh_function"
    # (a function of the user's is not known to saturate: its blocks report dead units, not saturation)
    unit_stats = ("dead/", "saturated/")

    def comparable(run_dir: Path) -> list[dict]:
        return [{k: v for k, v in row.items() if not k.startswith(unit_stats)} for row in rows(run_dir)]

    assert_same_rows(comparable(lab / "own"), comparable(lab / "shipped"), rtol=1e-5)


def test_user_optimizer_activation_and_regularizer_through_config_dir(lab):
    """The README's example, from the user's folder, with the installed command."""
    r = subprocess.run(
        [EXE, "train", "--config-dir", "configs", "optimizer=signsgd", "act=squareplus",
         "regularizer=[l2,orthogonality]", *FAST, "hydra.run.dir=run"],
        capture_output=True, text=True, cwd=lab, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads((lab / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["choices"]["optimizer"] == "signsgd" and summary["choices"]["act"] == "squareplus"
    assert summary["regularizers_active"] == ["l2", "orthogonality"]
    train = [row for row in rows(lab / "run") if row["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]


@pytest.mark.parametrize(
    "option,message",
    [
        (
            "optimizer=ghost",
            "optimizer._target_=mylab.Ghost is not valid: is not importable (module mylab has no Ghost)",
        ),
        ("optimizer=nomodule", "optimizer._target_=nomodule.Opt is not valid: is not importable (ModuleNotFoundError"),
        ("optimizer=wrong_kind", "optimizer._target_=builtins.dict is not valid: made a dict, not a torch.optim.Opt"),
        ("optimizer=bad_args", "optimizer._target_=mylab.SignSGD is not valid: rejected its arguments (got an unexp"),
        ("data=not_arrays", "data._target_=mylab.not_arrays is not valid: returned a str: return (x, y, x_test, y_t"),
        ("pretrain=supervised", "pretrain=supervised is not valid: model=wide_mlp made a Sequential, which has no b"),
    ],
)
def test_a_bad_target_is_one_line_and_leaves_its_folder(lab, option, message):
    extra = ["model=wide_mlp", "data.source_classes=[0,1]", "data.target_classes=[2,3]"] if "pretrain" in option else []
    summary = run_own(lab, "bad", option, *extra)
    assert summary["status"] == "failed" and summary["refused"] and summary["error"].startswith(message)
    assert json.loads((lab / "bad" / "summary.json").read_text())["error"] == summary["error"]


def test_a_target_cli_error_is_one_line(lab):
    r = subprocess.run(
        [EXE, "train", "--config-dir", "configs", "optimizer=ghost", *FAST, "hydra.run.dir=run"],
        capture_output=True, text=True, cwd=lab, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: optimizer._target_=mylab.Ghost is not valid: is not importable")
    assert not (lab / "run").exists()
    r = subprocess.run(
        [EXE, "train", "--config-dir", "configs", "optimizer=nope"], capture_output=True, text=True, cwd=lab
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: In 'train': Could not find 'optimizer/nope'") and "signsgd" in r.stderr


def test_user_model_and_data(lab):
    """A plain nn.Module trains in one stage; a Classifier (blocks and a head) can also be pretrained;
    data from a function go through the same split and standardization as shipped data."""
    plain = run_own(lab, "plain", "model=wide_mlp", "data=blobs")
    assert plain["status"] == "completed" and plain["sizes"] == {"train": 405, "val": 45, "test": 150}
    assert plain["num_params"] == 16 * 256 + 256 + 256 * 3 + 3
    staged = run_own(lab, "staged", "model=body_and_head", "pretrain=autoencoder", "pretrain.steps=4")
    assert staged["status"] == "completed" and [s["stage"] for s in staged["stages"]] == ["pretrain", "finetune"]
    assert any(k.startswith("grad_norm/") for k in rows(lab / "staged")[0])  # diagnostics: it has blocks


def test_user_regularizer_adds_weight_times_its_penalty(lab):
    import mylab

    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    reg = OmegaConf.create(
        {"l1": 0.0, "l2": 1e-3, "l2_mode": "penalty", "dropout": 0.0, "batchnorm": False,
         "decay_bias_and_norm": False, "_target_": "mylab.orthogonality", "weight": 0.1}
    )  # fmt: skip
    got = Regularization(model, reg).penalty()
    w1, w2 = model[0].weight, model[2].weight
    independent = 0.5 * 1e-3 * (w1.pow(2).sum() + w2.pow(2).sum())
    independent = independent + 0.1 * sum(((w @ w.T - torch.eye(len(w))) ** 2).sum() for w in (w1, w2))
    assert torch.allclose(got, independent) and callable(mylab.orthogonality)


def test_muon_updates_hidden_matrices_and_adamw_the_rest():
    cfg = compose_train([*FAST, "optimizer=muon"])
    model = build_model(cfg, (32,), 4)
    assert isinstance(model, Classifier)
    opt = build_optimizer(model, cfg.optimizer, decay_all=False)
    assert isinstance(opt, MuonWithAdamW)
    muon = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    assert muon == {id(b[0].weight) for b in model.blocks}  # the hidden layers' weights, not the head's
    adamw = {id(p) for g in opt.adamw.param_groups for p in g["params"]}
    assert id(model.head.weight) in adamw and not muon & adamw
    assert len(muon) + len(adamw) == len(list(model.parameters()))
    # Muon's first step, computed independently (float32; torch iterates in bfloat16): Newton-Schulz
    # orthogonalisation of the momentum (its first value is a multiple of the gradient, and the iteration
    # is scale-free), times AdamW's RMS match 0.2 * sqrt(max(rows, cols)) * lr. A full-rank gradient:
    # the iteration amplifies bfloat16 rounding in the null space of a low-rank one.
    w = model.blocks[1][0].weight
    before = w.detach().clone()
    w.grad = torch.randn_like(w)
    x = w.grad / w.grad.norm()
    a, b, c = 3.4445, -4.7750, 2.0315
    for _ in range(5):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    expected = before - cfg.optimizer.lr * 0.2 * math.sqrt(max(w.shape)) * x
    opt.step()
    moved = (before - w.detach()).abs().max()
    assert (w.detach() - expected).abs().max() < 0.05 * moved
    state = opt.state_dict()
    opt.load_state_dict(state)
    assert set(state) == {"muon", "adamw"}


@pytest.mark.parametrize("optimizer", ["muon", "adafactor"])
def test_current_optimizers_train(lab, optimizer):
    summary = run_own(lab, optimizer, f"optimizer={optimizer}", "trainer.max_steps=30", "trainer.eval_every=10")
    assert summary["status"] == "completed"
    train = [row for row in rows(lab / optimizer) if row["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] and math.isfinite(summary["metrics"]["test/loss"])


def test_third_party_lion_by_target(lab):
    """examples/configs/optimizer/lion.yaml: pytorch-optimizer's Lion, the README's example."""
    summary = run_own(lab, "lion", "optimizer=lion", "optimizer.lr=0.001")
    assert summary["status"] == "completed" and summary["choices"]["optimizer"] == "lion"
    train = [row for row in rows(lab / "lion") if row["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]


def test_vectorized_batches_every_optimizer_with_each_members_own_numbers(lab):
    """signsgd (elementwise: true) may step its members as one optimizer over the stacked tensors; the same
    optimizer undeclared, adafactor (not elementwise), or a group of several optimizers gives each member
    an optimizer of its own. All six jobs are one batched model; members end where their own runs end."""
    from omegaconf import OmegaConf

    from backprop_lab.vectorized.member_optimizers import needs_own_optimizers

    declared = OmegaConf.create({"_target_": "mylab.SignSGD", "lr": 0.001, "elementwise": True})
    undeclared = OmegaConf.create({"_target_": "mylab.SignSGD", "lr": 0.001})
    schedules = [OmegaConf.create({"name": "constant"})] * 2
    assert not needs_own_optimizers([declared, declared], schedules)
    assert needs_own_optimizers([undeclared, undeclared], schedules)
    folder, out = sweep(
        lab, "vec", "--config-dir", "configs", "hydra/launcher=vectorized",
        "optimizer=signsgd,signsgd_plain,adafactor", "seed=0,1",
    )  # fmt: skip
    assert "one batched model: #0 #1 #2 #3 #4 #5 :" in out and "one by one" not in out
    for job, optimizer in (("1", "signsgd"), ("5", "adafactor")):  # seed 1 of each, against its own run
        run_own(lab, f"alone_{optimizer}", f"optimizer={optimizer}", "seed=1")
        assert_same_rows(rows(folder / job), rows(lab / f"alone_{optimizer}"), rtol=1e-4)
