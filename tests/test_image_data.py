"""Real image data: the standard benchmarks by name from their canonical file formats, images in every
common layout, standardization that never divides by a (near-)zero spread, uint8 on the device."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_cfg, run_cfg
from fake_files import (
    digits_as_mnist,
    idx_bytes,
    random_cifar,
    write_cifar_binary,
    write_cifar_python,
    write_idx_set,
    write_png_folder,
)

from backprop_lab.data import datasets as data
from backprop_lab.data import formats, image_sets
from backprop_lab.errors import ConfigError

QUICK = [
    "trainer.max_steps=300",
    "trainer.eval_every=100",
    "trainer.log_every=100",
    "trainer.progress=off",
    "trainer.checkpoint_every=0",
]


@pytest.fixture(scope="session")
def digits():
    return digits_as_mnist()


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory, digits):
    """Real handwritten digits as MNIST's four gzipped IDX files, in torchvision's layout."""
    root = tmp_path_factory.mktemp("datasets")
    write_idx_set(root / "MNIST" / "raw", *digits)
    return root


def test_idx_reader_reads_plain_and_gzipped_files(tmp_path, digits):
    x, y, _, _ = digits
    plain = write_idx_set(tmp_path / "plain", *digits, gz=False)
    gz = write_idx_set(tmp_path / "gz", *digits, gz=True)
    for files in (plain, gz):
        np.testing.assert_array_equal(formats.read_idx(files[0]), x)
        np.testing.assert_array_equal(formats.read_idx(files[1]), y)
    assert formats.read_idx(plain[0]).dtype == np.uint8 and formats.read_idx(plain[0]).shape == (1497, 28, 28)


@pytest.mark.parametrize(
    "name,folder",
    [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"), ("kmnist", "KMNIST/raw"), ("mnist", ".")],
)
def test_idx_sets_are_found_in_the_root_or_in_torchvisions_layout(tmp_path, digits, name, folder):
    write_idx_set(tmp_path / folder, *digits, gz=folder != ".")
    arrays = data.load_arrays(make_cfg(f"data={name}", f"data.root={tmp_path}").data)
    assert arrays.x.shape == (1497, 1, 28, 28) and arrays.x.dtype == np.uint8
    np.testing.assert_array_equal(arrays.x[:, 0], digits[0])
    np.testing.assert_array_equal(arrays.y_test, digits[3])


def test_mnist_run_has_a_sane_test_loss_with_mlp_and_cnn(tmp_path, mnist_root):
    """The issue's failure: a completed run with 92% accuracy beside a test loss of 31517."""
    for model, steps in (("mlp", 300), ("cnn2d", 150)):
        summary = run_cfg(
            tmp_path / model,
            "data=mnist",
            f"data.root={mnist_root}",
            f"model={model}",
            *QUICK,
            f"trainer.max_steps={steps}",
        )
        m = summary["metrics"]
        assert summary["status"] == "completed", summary["error"]
        assert m["test/acc"] >= 0.8 and m["test/loss"] < 1.0, m
        assert summary["inputs"]["standardize"] == "channel" and summary["inputs"]["uint8_scaled_by"] == "1/255"


def _layouts(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"nhw": x, "nchw": x[:, None], "nhwc": x[..., None]}


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_npz_images_in_every_layout_give_the_same_inputs(tmp_path, digits, dtype):
    x, y, xt, yt = digits
    seen = []
    for layout, a in _layouts(x).items():
        b = _layouts(xt)[layout]
        if dtype == "float32":
            a, b = (a / 255).astype(np.float32), (b / 255).astype(np.float32)
        np.savez(tmp_path / f"{layout}.npz", x=a, y=y, x_test=b, y_test=yt)
        cfg = make_cfg("data=npz", f"data.path={tmp_path / f'{layout}.npz'}")
        split = data.make_split(data.load_arrays(cfg.data), list(range(10)), cfg.data, torch.device("cpu"), None, "n")
        assert split.input_shape == (1, 28, 28)
        assert split.x_train.dtype == (torch.uint8 if dtype == "uint8" else torch.float32)
        seen.append(split.prepare(split.x_test))
    for other in seen[1:]:
        torch.testing.assert_close(other, seen[0], rtol=1e-5, atol=1e-5)


def test_per_channel_standardization_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 3, 4, 5), dtype=np.uint8)
    arrays = data.standardize(data.Arrays(x, np.zeros(50, np.int64), x[:5], np.zeros(5, np.int64)), "auto")
    f = x / 255.0
    mean, std = f.mean(axis=(0, 2, 3), keepdims=True), f.std(axis=(0, 2, 3), keepdims=True)
    got = torch.addcmul(torch.tensor(arrays.shift), torch.tensor(x).float(), torch.tensor(arrays.scale))
    np.testing.assert_allclose(got.numpy(), (f - mean) / std, rtol=1e-5, atol=1e-5)
    assert arrays.scale.shape == (3, 1, 1) and arrays.normalization["standardize"] == "channel"


def test_a_feature_with_zero_training_spread_is_centred_not_divided():
    x = np.zeros((100, 4), np.float32)
    x[:, 0] = np.linspace(-1, 1, 100)
    x[:, 1] = 5.0  # constant in training
    x[:, 2] = np.linspace(0, 3, 100)
    x[0, 3] = 1.0  # ink in one training example of 100: a spread far below the data's
    x_test = np.array([[0, 6.0, 1.5, 1.0]], np.float32)
    out = data.standardize(data.Arrays(x, np.zeros(100, np.int64), x_test, np.zeros(1, np.int64)), "feature")
    assert out.x_test[0, 1] == pytest.approx(1.0)  # 6 - 5: centred, not divided by a zero spread
    assert out.x_test[0, 3] == pytest.approx(0.99)  # 1 - 0.01: centred, not divided by 0.0995
    np.testing.assert_allclose(out.x[:, 2], (x[:, 2] - x[:, 2].mean()) / x[:, 2].std(), rtol=1e-5)
    assert out.normalization["centred_only"] == 2


def test_the_issues_vectors_with_blank_borders_keep_a_sane_test_loss(tmp_path, digits):
    """(N, 784) vectors of digits whose borders are blank in training: per-feature standardization."""
    x, y, xt, yt = digits
    for dtype in ("uint8", "float32"):
        np.savez(
            tmp_path / f"{dtype}.npz",
            x=x.reshape(len(x), -1).astype(dtype),
            y=y,
            x_test=xt.reshape(len(xt), -1).astype(dtype),
            y_test=yt,
        )
        summary = run_cfg(tmp_path / dtype, "data=npz", f"data.path={tmp_path / f'{dtype}.npz'}", *QUICK)
        assert summary["status"] == "completed" and summary["inputs"]["standardize"] == "feature"
        assert summary["metrics"]["test/loss"] < 1.0 and summary["metrics"]["test/acc"] > 0.75, summary["metrics"]


def test_images_stay_uint8_on_the_device(mnist_root):
    cfg = make_cfg("data=mnist", f"data.root={mnist_root}")
    arrays = data.load_arrays(cfg.data)
    split = data.make_split(arrays, list(range(10)), cfg.data, torch.device("cpu"), None, "n")
    assert split.x_train.dtype == torch.uint8 and split.x_train.element_size() == 1
    batch = split.prepare(split.x_train[:8])
    assert batch.dtype == torch.float32
    expected = (split.x_train[:8].double() / 255 - arrays.normalization["mean"][0]) / arrays.normalization["std"][0]
    torch.testing.assert_close(batch.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_binary_and_python_versions_read_the_same(tmp_path, name, classes):
    x, y = random_cifar(100, classes)
    xt, yt = random_cifar(20, classes, seed=1)
    write_cifar_binary(tmp_path / "bin", name, x, y, xt, yt)
    write_cifar_python(tmp_path / "py", name, x, y, xt, yt)
    for version in ("bin", "py"):
        loaded = image_sets.load_cifar_set(name, tmp_path / version, fetch=False)
        for got, want in zip(loaded, (x, y, xt, yt), strict=True):
            np.testing.assert_array_equal(got, want)
    arrays = data.load_arrays(make_cfg(f"data={name}", f"data.root={tmp_path / 'py'}").data)
    assert arrays.x.shape == (100, 3, 32, 32) and arrays.scale.shape == (3, 1, 1)


class _Payload:
    def __reduce__(self):  # unpickling calls os.system: what a crafted "batch" would run
        import os

        return os.system, ("touch pwned",)


def test_a_cifar_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x, y = random_cifar(10, 10)
    folder = write_cifar_python(tmp_path / "root", "cifar10", x, y, x, y)
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": x.reshape(10, -1), "labels": _Payload()}, protocol=2))
    with pytest.raises(ConfigError, match=r"data_batch_3 refused: it holds posix\.system"):
        image_sets.load_cifar_set("cifar10", tmp_path / "root", fetch=False)
    assert not (tmp_path / "pwned").exists()


def _idx_root(tmp_path: Path, digits, damage) -> Path:
    paths = write_idx_set(tmp_path / "MNIST" / "raw", *digits, gz=False)
    damage(paths)
    return tmp_path


BAD_FILES = [
    ("truncated images", lambda p: p[0].write_bytes(p[0].read_bytes()[:-100]), "is truncated or damaged"),
    ("wrong magic", lambda p: p[0].write_bytes(b"\x08\x08" + p[0].read_bytes()[2:]), "wrong magic number"),
    ("counts differ", lambda p: p[1].write_bytes(idx_bytes(np.zeros(10, np.uint8))), "holds 1497 images but"),
    ("damaged gzip", lambda p: p[2].write_bytes(gzip.compress(p[2].read_bytes())[:-200]), "is damaged"),
    ("labels out of range", lambda p: p[1].write_bytes(idx_bytes(np.full(1497, 12, np.uint8))), "labels must be in"),
]


@pytest.mark.parametrize("what,damage,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_damaged_idx_files_are_one_line_errors(tmp_path, digits, what, damage, message):
    root = _idx_root(tmp_path, digits, damage)
    with pytest.raises(ConfigError, match=message) as err:
        data.load_arrays(make_cfg("data=mnist", f"data.root={root}").data)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"data.root={root}")


def test_damaged_cifar_files_are_one_line_errors(tmp_path):
    x, y = random_cifar(20, 10)
    folder = write_cifar_binary(tmp_path, "cifar10", x, y, x, y)
    (folder / "test_batch.bin").write_bytes((folder / "test_batch.bin").read_bytes()[:-7])
    with pytest.raises(ConfigError, match="is not a whole number of 3073-byte records"):
        image_sets.load_cifar_set("cifar10", tmp_path, fetch=False)


def test_missing_files_name_the_folders_the_files_and_download(tmp_path):
    with pytest.raises(ConfigError) as err:
        data.load_arrays(make_cfg("data=fashion_mnist", f"data.root={tmp_path}").data)
    message = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and "train-images-idx3-ubyte[.gz]" in message
    assert "data.download=true" in message
    with pytest.raises(ConfigError, match=r"cifar-10-batches-bin/ \(data_batch_1.bin"):
        data.load_arrays(make_cfg("data=cifar10", f"data.root={tmp_path}").data)


def test_data_root_defaults_to_the_environment_then_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKPROP_LAB_DATA", str(tmp_path / "mine"))
    assert data.data_root(make_cfg("data=mnist").data) == tmp_path / "mine"
    monkeypatch.delenv("BACKPROP_LAB_DATA")
    monkeypatch.setenv("BACKPROP_LAB_CACHE", str(tmp_path / "cache"))
    assert data.data_root(make_cfg("data=mnist").data) == tmp_path / "cache" / "datasets"


LAYOUT_ERRORS = [
    ((10, 3, 5, 3), "auto", "fits no rule"),  # channels could be either axis
    ((10, 7, 5, 9), "auto", "fits no rule"),  # neither axis holds 1, 3 or 4
    ((10, 2, 3, 4, 5), "auto", "fits no image layout"),
]


@pytest.mark.parametrize("shape,layout,message", LAYOUT_ERRORS)
def test_layouts_that_fit_no_rule_are_refused(shape, layout, message):
    with pytest.raises(ConfigError, match=message):
        data.to_nchw(np.zeros(shape, np.uint8), layout)


def test_an_explicit_layout_settles_an_ambiguous_shape():
    x = np.arange(10 * 3 * 5 * 3, dtype=np.uint8).reshape(10, 3, 5, 3)
    assert data.to_nchw(x, "nchw").shape == (10, 3, 5, 3)
    np.testing.assert_array_equal(data.to_nchw(x, "nhwc"), x.transpose(0, 3, 1, 2))


def test_image_folder_of_class_subfolders(tmp_path, digits, monkeypatch):
    monkeypatch.setenv("BACKPROP_LAB_CACHE", str(tmp_path / "cache"))
    x, y, _, _ = digits
    write_png_folder(tmp_path / "pngs", x[:120], y[:120])
    cfg = make_cfg("data=images", f"data.path={tmp_path / 'pngs'}", "data.size=[14,14]")
    arrays = data.load_arrays(cfg.data)
    assert arrays.x.shape[1:] == (1, 14, 14) and len(arrays.x) + len(arrays.x_test) == 120
    assert arrays.x.dtype == np.uint8

    def refuse(*a):
        raise AssertionError("decoded again: the cache was not used")

    monkeypatch.setattr(formats, "decode_images", refuse)
    again = data.load_arrays(cfg.data)
    np.testing.assert_array_equal(again.x, arrays.x)


def test_image_folder_with_train_and_test_and_colour(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKPROP_LAB_CACHE", str(tmp_path / "cache"))
    x, y = random_cifar(40, 3)
    write_png_folder(tmp_path / "set" / "train", x[:30], y[:30])
    write_png_folder(tmp_path / "set" / "test", x[30:], y[30:])
    arrays = data.load_arrays(make_cfg("data=images", f"data.path={tmp_path / 'set'}").data)
    assert arrays.x.shape == (30, 3, 32, 32) and arrays.x_test.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(np.sort(arrays.x.reshape(30, -1), axis=0), np.sort(x[:30].reshape(30, -1), axis=0))


def test_image_folder_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKPROP_LAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no class subfolders"):
        data.load_arrays(make_cfg("data=images", f"data.path={tmp_path / 'empty'}").data)
    x, y = random_cifar(4, 2)
    write_png_folder(tmp_path / "bad", x, y)
    (tmp_path / "bad" / "class_0" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ConfigError, match=r"broken.png could not be read as an image"):
        data.load_arrays(make_cfg("data=images", f"data.path={tmp_path / 'bad'}").data)
    assert not list((tmp_path / "cache").glob("*.npz"))  # nothing half-written in the cache
