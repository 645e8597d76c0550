"""Data: the MNIST-1D cache returns exactly what the generator makes; splits and class selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_cfg

from backprop_lab.data import datasets as data


def test_cached_mnist1d_is_identical_to_fresh_generation(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKPROP_LAB_CACHE", str(tmp_path))
    cfg = make_cfg("data.num_samples=500", "data.generation_seed=7").data
    first = data.load_mnist1d(cfg)  # generates and writes the cache
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 1
    fresh = data.generate_mnist1d(500, 7)

    def refuse(*args):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(data, "generate_mnist1d", refuse)
    cached = data.load_mnist1d(cfg)
    for field in ("x", "y", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(cached, field), getattr(fresh, field))
        np.testing.assert_array_equal(getattr(first, field), getattr(fresh, field))


@pytest.mark.parametrize("name", ["synthetic", "digits"])
def test_cached_scikit_learn_data_is_scikit_learns_and_needs_no_scikit_learn_the_second_time(tmp_path, name):
    """data=synthetic (make_classification) and data=digits, read from the cache in a fresh process:
    exactly scikit-learn's arrays, split as before, without importing scikit-learn (seconds a run)."""
    import os
    import subprocess
    import sys

    from sklearn.datasets import load_digits, make_classification
    from sklearn.model_selection import train_test_split

    cfg = {"shape": [6], "num_samples": 90, "num_classes": 4, "split_seed": 4, "test_fraction": 0.2}
    probe = (
        "import sys, numpy as np; from omegaconf import OmegaConf; from backprop_lab.data import datasets as data; "
        f"a = data.load_{name}(OmegaConf.create({cfg!r})); "
        "np.savez(sys.argv[1], x=np.concatenate([a.x, a.x_test]), y=np.concatenate([a.y, a.y_test])); "
        "print('sklearn' in sys.modules)"
    )
    env = {**os.environ, "BACKPROP_LAB_CACHE": str(tmp_path / "cache")}
    imported = []
    for run in ("first", "second"):
        command = [sys.executable, "-c", probe, str(tmp_path / f"{run}.npz")]
        imported.append(subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout.strip())
    assert imported == ["True", "False"]
    first, second = np.load(tmp_path / "first.npz"), np.load(tmp_path / "second.npz")
    np.testing.assert_array_equal(first["x"], second["x"])
    np.testing.assert_array_equal(first["y"], second["y"])
    if name == "synthetic":
        x, y = make_classification(
            n_samples=90, n_features=6, n_informative=3, n_redundant=0, n_classes=4,
            n_clusters_per_class=1, random_state=4,
        )  # fmt: skip
    else:
        digits = load_digits()
        x, y = digits.images / 16.0, digits.target
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=4, stratify=y)
    np.testing.assert_array_equal(second["x"], np.concatenate([x_train, x_test]))
    np.testing.assert_array_equal(second["y"], np.concatenate([y_train, y_test]))


def test_a_damaged_cache_file_is_regenerated(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKPROP_LAB_CACHE", str(tmp_path))
    cfg = make_cfg("data.num_samples=500").data
    data.load_mnist1d(cfg)
    (path,) = tmp_path.glob("mnist1d-*.npz")
    path.write_bytes(b"not an npz")
    again = data.load_mnist1d(cfg)
    np.testing.assert_array_equal(again.x, data.generate_mnist1d(500, 42).x)


def test_cached_split_is_scikit_learns_split_and_needs_no_scikit_learn_the_second_time(tmp_path, monkeypatch):
    import subprocess
    import sys

    from sklearn.model_selection import train_test_split

    monkeypatch.setenv("BACKPROP_LAB_CACHE", str(tmp_path))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 5)), rng.integers(0, 4, 300)
    got = data._split(x, y, 0.2, 3)
    x_keep, x_held, y_keep, y_held = train_test_split(x, y, test_size=0.2, random_state=3, stratify=y)
    for a, b in zip(got, (x_keep, y_keep, x_held, y_held), strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(list(tmp_path.glob("splits/*.npz"))) == 1
    probe = (
        "import sys, numpy as np; from backprop_lab.data.datasets import split_indices; "
        "rng = np.random.default_rng(0); "
        "rng.normal(size=(300, 5)); y = rng.integers(0, 4, 300); split_indices(y, 0.2, 3); "
        "print('sklearn' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"  # the cached split, read without importing scikit-learn


def test_class_selection_renumbers_and_subsamples_stratified():
    cfg = make_cfg("data=synthetic", "data.num_classes=4")
    arrays = data.load_arrays(cfg.data)
    split = data.make_split(arrays, [3, 1], cfg.data, torch.device("cpu"), 20, "data.n_train")
    assert split.classes == [3, 1] and set(split.y_train.tolist()) == {0, 1}
    assert len(split.x_train) == 20 and split.y_train.bincount().tolist() == [10, 10]
    with pytest.raises(data.ConfigError, match="must be at most"):
        data.make_split(arrays, [3, 1], cfg.data, torch.device("cpu"), 10**6, "data.n_train")
