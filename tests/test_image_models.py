"""Models, augmentation and transfer for image data: cnn2d on C channels, the CIFAR ResNet built from
the same parts as the other models, crops and flips on the device, pretraining on another data set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_cfg, run_cfg
from fake_files import random_cifar, write_cifar_binary, write_idx_set
from test_launchers import _jobs
from test_resume import comparable, kill_mid_run

from backprop_lab.components.models import build_model
from backprop_lab.data.augment import Augment
from backprop_lab.data.datasets import load_arrays
from backprop_lab.errors import ConfigError
from backprop_lab.run.training import resume, run_members

SMALL = [
    "trainer.max_steps=12",
    "trainer.eval_every=6",
    "trainer.log_every=3",
    "trainer.progress=off",
    "trainer.batch_size=16",
    "trainer.checkpoint_every=0",
]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    x, y = random_cifar(300, 10)
    xt, yt = random_cifar(60, 10, seed=1)
    write_cifar_binary(root, "cifar10", x, y, xt, yt)
    x, y = random_cifar(300, 100, seed=2)
    write_cifar_binary(root, "cifar100", x, y, x[:50], y[:50])
    return root


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    for folder, seed in (("MNIST", 0), ("FashionMNIST", 1)):
        x, y = random_cifar(300, 10, seed=seed)
        write_idx_set(root / folder / "raw", x[:, 0, 2:30, 2:30], y, x[:60, 0, 2:30, 2:30], y[:60])
    return root


def test_resnet20_has_the_papers_layers_and_parameters():
    """6n+2 = 20 weighted layers; option-A shortcuts add no parameters: counted by hand below."""
    cfg = make_cfg("model=resnet", "regularizer=batchnorm")
    model = build_model(cfg, (3, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == 20 and len(model.blocks) == 4  # stem + three stages: what freezing works by
    conv = lambda c_in, c_out: 9 * c_in * c_out  # noqa: E731 (3x3, no bias beside batch norm)
    bn = lambda c: 2 * c  # noqa: E731
    stem = conv(3, 16) + bn(16)
    stage1 = 3 * (2 * conv(16, 16) + 2 * bn(16))
    stage2 = conv(16, 32) + conv(32, 32) + 2 * bn(32) + 2 * (2 * conv(32, 32) + 2 * bn(32))
    stage3 = conv(32, 64) + conv(64, 64) + 2 * bn(64) + 2 * (2 * conv(64, 64) + 2 * bn(64))
    assert sum(p.numel() for p in model.parameters()) == stem + stage1 + stage2 + stage3 + 64 * 10 + 10 == 269_722
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_takes_dropout_before_the_head_and_any_activation():
    model = build_model(make_cfg("model=resnet", "regularizer.dropout=0.3", "act=tanh"), (1, 28, 28), 10)
    dropouts = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == ["blocks.3.4"]  # after the last stage's pooling, before the head
    assert any(isinstance(m, torch.nn.Tanh) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # regularizer=none


def test_cnn2d_and_resnet_train_on_colour_images_with_diagnostics(tmp_path, cifar_root):
    for model in ("cnn2d", "resnet"):
        summary = run_cfg(
            tmp_path / model,
            "data=cifar10",
            f"data.root={cifar_root}",
            f"model={model}",
            "regularizer=batchnorm",
            "model.width=8" if model == "resnet" else "seed=0",
            *SMALL,
        )
        assert summary["status"] == "completed", summary["error"]
        rows = [json.loads(line) for line in (tmp_path / model / "metrics.jsonl").read_text().splitlines()]
        first = rows[0]
        layers = 5 if model == "resnet" else 3  # resnet: stem, three stages, head
        assert {f"grad_norm/{i}" for i in range(layers)} <= set(first) and f"grad_norm/{layers}" not in first
        assert "dead/0" in first and all(np.isfinite(first[f"grad_norm/{i}"]) for i in range(layers))


def _resnet_transfer(tmp_path, cifar_root, *overrides: str) -> tuple[dict, dict, dict]:
    """A small ResNet pretrained on CIFAR-100, fine-tuned on CIFAR-10: (summary, weights after
    pretraining, weights at the end)."""
    run_dir = tmp_path / "run"
    summary = run_cfg(
        run_dir,
        "data=cifar10",
        f"data.root={cifar_root}",
        "model=resnet",
        "model.width=8",
        "pretrain=supervised",
        "pretrain.data=cifar100",
        *overrides,
        *SMALL,
    )
    assert summary["status"] == "completed", summary["error"]
    assert [s["stage"] for s in summary["stages"]] == ["pretrain", "finetune"]
    before = torch.load(run_dir / "weights" / "pretrain.pt", weights_only=True)
    return summary, before, torch.load(run_dir / "weights" / "last.pt", weights_only=True)


def test_resnet_frozen_stages_stay_as_pretrained(tmp_path, cifar_root):
    _, before, after = _resnet_transfer(
        tmp_path, cifar_root, "regularizer=batchnorm", "pretrain.steps=6", "pretrain.finetune=freeze"
    )
    for key, value in before.items():
        if key.startswith("blocks."):  # weights and batch-norm statistics of every frozen stage
            torch.testing.assert_close(after[key], value, rtol=0, atol=0)
    assert before["head.weight"].shape[0] > 10 and after["head.weight"].shape == (10, 32)  # CIFAR-100 head, then 10


def test_gradual_unfreezing_goes_stage_by_stage(tmp_path, cifar_root):
    _, before, after = _resnet_transfer(
        tmp_path, cifar_root, "pretrain.steps=4", "pretrain.finetune=gradual", "pretrain.unfreeze_every=4"
    )
    first_conv = ["blocks.0.0.weight", *(f"blocks.{i}.0.conv1.weight" for i in (1, 2, 3))]
    changed = [not torch.equal(before[key], after[key]) for key in first_conv]
    assert changed == [False, False, True, True]  # 12 steps, one stage every 4, top first: 3 and 2 trained


def test_pretraining_on_another_data_set_of_the_same_shape(tmp_path, idx_root):
    summary = run_cfg(
        tmp_path / "run",
        "data=mnist",
        f"data.root={idx_root}",
        "data.n_train=100",
        "pretrain=supervised",
        "pretrain.data=fashion_mnist",
        "pretrain.steps=6",
        *SMALL,
    )
    assert summary["status"] == "completed", summary["error"]
    pretrain, finetune = summary["stages"]
    assert pretrain["stage"] == "pretrain" and finetune["metrics"]["test/acc"] >= 0
    assert summary["sizes"]["train"] == 100


def test_pretraining_data_of_another_shape_is_refused(tmp_path, idx_root, cifar_root):
    for f in ("cifar-10-batches-bin",):
        (idx_root / f).symlink_to(cifar_root / f)
    summary = run_cfg(
        tmp_path / "run", "data=mnist", f"data.root={idx_root}", "pretrain=supervised", "pretrain.data=cifar10", *SMALL
    )
    assert summary["status"] == "failed" and summary["refused"]
    assert summary["error"] == (
        "pretrain.data=cifar10 is not valid: has inputs of shape [3, 32, 32], data=mnist has "
        "[1, 28, 28]: one model must take both (pretrain on a data set of the same shape)"
    )


def _independent_augment(x: torch.Tensor, flips: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int):
    out = []
    for img, f, r, c in zip(x.numpy(), flips.numpy(), dy.numpy(), dx.numpy(), strict=True):
        img = img[..., ::-1] if f else img
        padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)))
        out.append(padded[:, r : r + img.shape[1], c : c + img.shape[2]])
    return torch.tensor(np.stack(out))


def test_crop_and_flip_against_an_independent_computation():
    x = torch.randint(0, 256, (6, 3, 5, 7), dtype=torch.uint8)
    g, replay = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    out = Augment(["crop", "flip"], 2)(x, [g], batch_size=6)
    flips = torch.rand(6, generator=replay) < 0.5
    offsets = torch.randint(0, 5, (2, 6), generator=replay)
    assert out.dtype == torch.uint8
    torch.testing.assert_close(out, _independent_augment(x, flips, offsets[0], offsets[1], 2))
    members = Augment(["flip"], 0)(
        torch.stack([x, x]), [torch.Generator().manual_seed(s) for s in (1, 2)], batch_size=6
    )
    alone = [Augment(["flip"], 0)(x, [torch.Generator().manual_seed(s)], batch_size=6) for s in (1, 2)]
    torch.testing.assert_close(members, torch.stack(alone))  # each member draws what its own run draws


def test_augmented_vectorized_members_match_their_own_runs(tmp_path, cifar_root):
    overrides = (
        "data=cifar10",
        f"data.root={cifar_root}",
        "model=cnn2d",
        "model.channels=[4,8]",
        "data.augment=[crop,flip]",
        "optimizer=momentum",
        "optimizer.lr=0.002",
        *SMALL,
    )
    run_members(_jobs(tmp_path, *overrides))
    for s in (0, 1):
        alone = run_cfg(tmp_path / f"alone{s}", *overrides, f"seed={s}")
        assert alone["status"] == "completed"
        together = torch.load(tmp_path / f"member{s}" / "weights" / "last.pt", weights_only=True)
        single = torch.load(tmp_path / f"alone{s}" / "weights" / "last.pt", weights_only=True)
        for key in single:
            torch.testing.assert_close(together[key], single[key], rtol=1e-4, atol=1e-5)


def test_an_augmented_run_resumes_to_the_same_numbers(tmp_path, cifar_root):
    overrides = [
        "data=cifar10",
        f"data.root={cifar_root}",
        "model=cnn2d",
        "model.channels=[4,8]",
        "data.augment=[crop,flip]",
        "trainer.max_steps=200",
        "trainer.eval_every=50",
        "trainer.log_every=10",
        "trainer.checkpoint_every=30",
        "trainer.batch_size=16",
        "trainer.progress=off",
    ]
    reference = run_cfg(tmp_path / "reference", *overrides)
    assert reference["status"] == "completed"
    import signal

    run_dir = tmp_path / "killed"
    p = kill_mid_run(run_dir, signal.SIGTERM, overrides, after_rows=8)
    assert p.returncode == 130
    assert resume(run_dir)["status"] == "completed"  # what `backprop-lab resume` runs, in this process
    assert comparable(run_dir) == comparable(tmp_path / "reference")


BAD = [
    (
        ["data=digits", "data.augment=[rotate]"],
        "data.augment=['rotate'] is not valid: must be a list of distinct names from: crop, flip",
    ),
    (
        ["data=mnist1d", "data.num_samples=200", "data.augment=[flip]"],
        "data.augment=['flip'] is not valid: crops and flips are for images",
    ),
    (
        ["pretrain=supervised", "pretrain.data=imagenet"],
        "pretrain.data=imagenet is not valid: choose a data option: mnist1d",
    ),
    (
        ["data=digits", "data.standardize=perpixel"],
        "data.standardize=perpixel is not valid: choose one of: auto, channel",
    ),
    (
        ["data=mnist1d", "data.num_samples=200", "data.standardize=channel"],
        "data.standardize=channel is not valid: is for images",
    ),
    (["data=digits", "model=cnn1d"], "model=cnn1d is not valid: cnn1d needs sequences"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[b[1].split(" is")[0] for b in BAD])
def test_bad_image_settings_are_refused_in_one_line(tmp_path, overrides, message):
    summary = run_cfg(tmp_path / "run", *overrides, *SMALL)
    assert summary["status"] == "failed" and summary["refused"], summary
    assert summary["error"].startswith(message) and "\n" not in summary["error"]


def test_load_arrays_checks_the_labels(tmp_path):
    np.savez(tmp_path / "f.npz", x=np.zeros((10, 4), np.float32), y=np.linspace(0, 1, 10))
    with pytest.raises(ConfigError, match="y must hold integer class labels"):
        load_arrays(make_cfg("data=npz", f"data.path={tmp_path / 'f.npz'}").data)
