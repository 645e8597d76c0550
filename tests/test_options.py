"""Every option of every config group composes and trains real steps on small data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from fake_files import random_cifar, write_cifar_binary, write_idx_set, write_png_folder

from backprop_lab.components.activations import ACTIVATIONS
from backprop_lab.components.models import MODELS
from backprop_lab.components.optimizers import OPTIMIZERS, SCHEDULERS
from backprop_lab.data.datasets import DATASETS
from backprop_lab.groups import group_options
from backprop_lab.run.pretrain import PRETRAIN_STRATEGIES

OPTIONS = group_options()
# What an option needs besides itself to run on small data.
NEEDS = {
    ("model", "cnn2d"): ["data.shape=[8,8]"],
    ("model", "resnet"): ["data.shape=[8,8]", "model.blocks_per_stage=1", "model.width=4"],
    ("data", "mnist1d"): ["data.num_samples=600"],
    ("data", "digits"): [],
    ("pretrain", "supervised"): ["data.source_classes=[0,1]", "data.target_classes=[2,3]"],
    ("pretrain", "autoencoder"): ["pretrain.noise=0.1"],
    ("experiment", "digits_cnn2d"): ["data=digits"],
    ("experiment", "transfer_mnist1d"): ["data=mnist1d", "data.num_samples=600", "data.n_train=40"],
    ("experiment", "study_pretraining"): [
        "data=mnist1d",
        "data.num_samples=600",
        "data.n_train=40",
        "pretrain.steps=6",
    ],
    ("experiment", "study_regularization"): ["data.n_train=40"],
    ("experiment", "study_regularization_real"): ["data.n_train=40"],
    ("experiment", "study_pretraining_real"): ["data.n_train=40", "pretrain.steps=6"],
}


def _idx(name: str):
    def make(tmp_path):
        x, y = random_cifar(80, 10)
        write_idx_set(tmp_path / "root", x[:, 0, :28, :28], y, x[:20, 0, :28, :28], y[:20])
        return [f"data.root={tmp_path / 'root'}"]

    return make


def _cifar(name: str, classes: int):
    def make(tmp_path):
        x, y = random_cifar(80, classes)
        write_cifar_binary(tmp_path / "root", name, x, y, x[:20], y[:20])
        return [f"data.root={tmp_path / 'root'}"]

    return make


def _pngs(tmp_path):
    x, y = random_cifar(40, 2)
    write_png_folder(tmp_path / "pngs", x, y)
    return [f"data.path={tmp_path / 'pngs'}", "data.val_fraction=0.25"]


EXPERIMENT_DATA = {  # presets on real image sets: their data, as small files in the real formats
    "mnist_mlp": "mnist",
    "fashion_mnist_cnn": "fashion_mnist",
    "cifar10_resnet20": "cifar10",
    **{f"study_{name}_real": "mnist" for name in ("activations", "optimizers", "pretraining")},
    "study_regularization_real": "fashion_mnist",
}
# Data options read from files: small files in their real formats.
IMAGE_SETS = {
    "mnist": _idx("mnist"),
    "fashion_mnist": _idx("fashion_mnist"),
    "kmnist": _idx("kmnist"),
    "cifar10": _cifar("cifar10", 10),
    "cifar100": _cifar("cifar100", 100),
    "images": _pngs,
}


def test_every_registry_name_has_a_config_and_back():
    assert OPTIONS["act"] == sorted(ACTIVATIONS)
    assert OPTIONS["optimizer"] == sorted(OPTIMIZERS)
    assert OPTIONS["scheduler"] == sorted(SCHEDULERS)
    assert OPTIONS["model"] == sorted(MODELS)
    assert OPTIONS["data"] == sorted(DATASETS)
    assert OPTIONS["pretrain"] == sorted(PRETRAIN_STRATEGIES)


def _cases():
    for group, names in OPTIONS.items():
        for name in names:
            yield group, name


@pytest.mark.parametrize("group,name", list(_cases()), ids=lambda v: str(v))
def test_option_trains(group, name, train, tmp_path):
    extra = list(NEEDS.get((group, name), []))
    if (group, name) == ("data", "npz"):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(120, 10)).astype("float32")
        y = (x[:, 0] > 0).astype("int64")
        np.savez(tmp_path / "mine.npz", x=x, y=y)
        extra.append(f"data.path={tmp_path / 'mine.npz'}")
    if group == "data" and name in IMAGE_SETS:
        extra += IMAGE_SETS[name](tmp_path)
    if (group, name) == ("logger", "mlflow"):
        pytest.importorskip("mlflow")
        extra.append(f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}")  # (not the working directory)
    if (group, name) == ("pretrain", "checkpoint"):
        first, first_dir = train()
        assert first["status"] == "completed"
        extra.append(f"pretrain.path={first_dir}")
    if group == "experiment" and name in EXPERIMENT_DATA:
        extra += [f"data={EXPERIMENT_DATA[name]}", *IMAGE_SETS[EXPERIMENT_DATA[name]](tmp_path)]
        extra += [
            "trainer.max_epochs=null",
            "trainer.batch_size=16",
            "scheduler.milestones=[3]" if name == "cifar10_resnet20" else "seed=0",
        ]
    if group == "experiment":
        extra += ["trainer=smoke", "trainer.max_steps=6", "trainer.eval_every=3", "trainer.progress=off"]
    summary, run_dir = train(f"{group}={name}", *extra)
    assert summary["status"] == "completed", summary["error"]
    assert 0.0 <= summary["metrics"]["test/acc"] <= 1.0
    assert math.isfinite(summary["metrics"]["test/loss"])
    assert summary["stages"][-1]["steps"] == 6
    last = torch.load(run_dir / "weights" / "last.pt", weights_only=True)
    assert any(k.startswith("head.") for k in last)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    stages = [s["stage"] for s in summary["stages"]]
    expected = (
        ["train"]
        if (group != "pretrain" or name == "none")
        else (["finetune"] if name == "checkpoint" else ["pretrain", "finetune"])
    )
    if group == "experiment" and name == "transfer_mnist1d":
        expected = ["pretrain", "finetune"]
    assert stages == expected


def test_without_torchs_private_fused_check_the_foreach_kernels_are_used(monkeypatch):
    """optimizers.py imports torch's private `_device_dtype_check_for_fused`; a torch without it gets the
    foreach kernels, which give the same steps (compared with the fused ones on the same gradients)."""
    from conftest import make_cfg

    from backprop_lab.components import optimizers

    cfg = make_cfg("optimizer=adam", "optimizer.lr=0.01")
    models = [torch.nn.Linear(4, 3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused = optimizers.build_optimizer(models[0], cfg.optimizer, False)
    monkeypatch.setattr(optimizers, "_device_dtype_check_for_fused", None)
    fallback = optimizers.build_optimizer(models[1], cfg.optimizer, False)
    assert fused.defaults["fused"] and fallback.defaults["foreach"] and not fallback.defaults["fused"]
    for _ in range(3):
        grads = [torch.randn_like(p) for p in models[0].parameters()]
        for model, opt in zip(models, (fused, fallback), strict=True):
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
