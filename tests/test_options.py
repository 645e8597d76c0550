"""Every option of every config group composes and trains real steps on small data."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from backprop_lab.activations import ACTIVATIONS
from backprop_lab.cli import group_options
from backprop_lab.data import DATASETS
from backprop_lab.models import MODELS
from backprop_lab.optimizers import OPTIMIZERS, SCHEDULERS
from backprop_lab.pretrain import PRETRAIN_STRATEGIES

OPTIONS = group_options()
# What an option needs besides itself to run on small data.
NEEDS = {
    ("model", "cnn2d"): ["data.shape=[8,8]"],
    ("data", "mnist1d"): ["data.num_samples=600"],
    ("data", "digits"): [],
    ("pretrain", "supervised"): ["data.source_classes=[0,1]", "data.target_classes=[2,3]"],
    ("pretrain", "autoencoder"): ["pretrain.noise=0.1"],
    ("experiment", "digits_cnn2d"): ["data=digits"],
    ("experiment", "transfer_mnist1d"): ["data=mnist1d", "data.num_samples=600", "data.n_train=40"],
    ("experiment", "study_pretraining"): ["data=mnist1d", "data.num_samples=600", "data.n_train=40", "pretrain.steps=6"],
    ("experiment", "study_regularization"): ["data.n_train=40"],
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
    if (group, name) == ("pretrain", "checkpoint"):
        first, first_dir = train()
        assert first["status"] == "completed"
        extra.append(f"pretrain.path={first_dir}")
    if group == "experiment":
        extra += ["trainer=smoke", "trainer.max_steps=6", "trainer.eval_every=3", "trainer.progress=off"]
    summary, run_dir = train(f"{group}={name}", *extra)
    assert summary["status"] == "completed", summary["error"]
    assert 0.0 <= summary["metrics"]["test/acc"] <= 1.0
    assert math.isfinite(summary["metrics"]["test/loss"])
    assert summary["stages"][-1]["steps"] == 6
    last = torch.load(run_dir / "weights" / "last.pt", weights_only=True)
    assert any(k.startswith("head.") for k in last)
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    stages = [s["stage"] for s in summary["stages"]]
    expected = ["train"] if (group != "pretrain" or name == "none") else (
        ["finetune"] if name == "checkpoint" else ["pretrain", "finetune"])
    if group == "experiment" and name == "transfer_mnist1d":
        expected = ["pretrain", "finetune"]
    assert stages == expected
