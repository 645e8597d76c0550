"""The standard image benchmarks by name, read from their canonical files.

data=mnist | fashion_mnist | kmnist: the four IDX files (plain or .gz), directly in data.root or in
the layout torchvision leaves (<root>/MNIST/raw/, <root>/FashionMNIST/raw/, <root>/KMNIST/raw/).
data=cifar10 | cifar100: the binary version (cifar-10-batches-bin/, cifar-100-binary/) or the python
version torchvision leaves (cifar-10-batches-py/, cifar-100-python/).
With data.download=true the canonical archives are fetched from their official sources and checked
against the published MD5s (download.py); nothing is downloaded otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backprop_lab.data import formats
from backprop_lab.errors import ConfigError

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class IdxSet:
    folder: str  # torchvision's: <root>/<folder>/raw/
    mirrors: tuple[str, ...]  # base URLs, tried in order
    md5: tuple[str, ...]  # published MD5 of each IDX_FILES[i] + ".gz"


@dataclass(frozen=True)
class CifarSet:
    binary: str  # the binary version's folder and files
    train_bin: tuple[str, ...]
    test_bin: str
    python: str  # the python version's (pickled batches)
    train_py: tuple[str, ...]
    test_py: str
    label_bytes: int  # CIFAR-100: coarse then fine label; the fine one is used
    label_key: str
    num_classes: int
    url: str  # the binary archive (no pickle to trust)
    md5: str


# Sources and checksums as published (the same torchvision and TensorFlow Datasets check).
IDX_SETS = {
    "mnist": IdxSet(
        "MNIST",
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
    ),
    "fashion_mnist": IdxSet(
        "FashionMNIST",
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        (
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ),
    ),
    "kmnist": IdxSet(
        "KMNIST",
        ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        (
            "bdb82020997e1d708af4cf47b453dcf7",
            "e144d726b3acfaa3e44228e80efcd344",
            "5c965bf0a639b31b8f53240b1b52f4d7",
            "7320c461ea6c1c855c0b718fb2a4b134",
        ),
    ),
}
CIFAR_SETS = {
    "cifar10": CifarSet(
        "cifar-10-batches-bin",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        "test_batch.bin",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        1,
        "labels",
        10,
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "c32a1d4ab5d03f1284b67883e8d87530",
    ),
    "cifar100": CifarSet(
        "cifar-100-binary",
        ("train.bin",),
        "test.bin",
        "cifar-100-python",
        ("train",),
        "test",
        2,
        "fine_labels",
        100,
        "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        "03b5dce01913d631647c71ecec9e9cb8",
    ),
}

Loaded = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x, y, x_test, y_test


def _find_idx(spec: IdxSet, root: Path) -> list[Path] | None:
    """The four files, each plain or .gz, all in `root` or all in torchvision's <root>/<folder>/raw."""
    for folder in (root, root / spec.folder / "raw"):
        found = [next((p for p in (folder / n, folder / f"{n}.gz") if p.is_file()), None) for n in IDX_FILES]
        if all(found):
            return found  # type: ignore[return-value]
    return None


def _idx_pair(images: Path, labels: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = formats.read_idx(images), formats.read_idx(labels)
    if x.ndim != 3 or y.ndim != 1:
        raise formats.FormatError(
            f"{images} must hold images (idx3: N x H x W) and {labels} labels (idx1: N); "
            f"they hold {x.ndim} and {y.ndim} dimensions"
        )
    if len(x) != len(y):
        raise formats.FormatError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels")
    if not np.issubdtype(y.dtype, np.integer):  # (a cast would truncate 2.7 to 2)
        raise formats.FormatError(f"{labels} holds {y.dtype} labels: an IDX label file holds integers (type 0x08)")
    formats._check_labels(labels, y.astype(np.int64), num_classes)
    return x, y.astype(np.int64)


def load_idx_set(name: str, root: Path, fetch: bool) -> Loaded:
    spec = IDX_SETS[name]
    files = _find_idx(spec, root)
    if files is None and fetch:
        raw = root / spec.folder / "raw"
        for file, md5 in zip(IDX_FILES, spec.md5, strict=True):
            target = raw / f"{file}.gz"
            if not target.is_file():
                _download([f"{m}{file}.gz" for m in spec.mirrors], target, md5)
        files = _find_idx(spec, root)
    if files is None:
        raise ConfigError(
            "data.root",
            str(root),
            f"has no {name} files: looked in {root} and {root / spec.folder / 'raw'} "
            f"for {', '.join(f'{n}[.gz]' for n in IDX_FILES)}; put them there, or add data.download=true",
        )
    try:
        x, y = _idx_pair(files[0], files[1], 10)
        x_test, y_test = _idx_pair(files[2], files[3], 10)
    except formats.FormatError as err:
        raise ConfigError("data.root", str(root), str(err)) from None
    return x, y, x_test, y_test


def _download(urls: list[str], target: Path, md5: str) -> None:
    from backprop_lab.data import download  # (urllib and tarfile: only when a download was asked for)

    try:
        download.fetch(urls, target, md5)
    except download.DownloadError as err:
        raise ConfigError("data.download", True, str(err)) from None


def _cifar_files(spec: CifarSet, root: Path) -> tuple[str, list[Path], Path] | None:
    """("binary" | "python", training files, test file) of the first complete version under root."""
    for kind, folder, train, test in (
        ("binary", spec.binary, spec.train_bin, spec.test_bin),
        ("python", spec.python, spec.train_py, spec.test_py),
    ):
        paths = [root / folder / f for f in (*train, test)]
        if all(p.is_file() for p in paths):
            return kind, paths[:-1], paths[-1]
    return None


def load_cifar_set(name: str, root: Path, fetch: bool) -> Loaded:
    spec = CIFAR_SETS[name]
    found = _cifar_files(spec, root)
    if found is None and fetch:
        archive = root / spec.url.rsplit("/", 1)[1]
        _download([spec.url], archive, spec.md5)
        from backprop_lab.data import download

        try:
            download.unpack(archive, spec.binary, root)
        except download.DownloadError as err:
            raise ConfigError("data.download", True, str(err)) from None
        finally:
            archive.unlink()  # unpacked (or refused): the archive is not kept
        found = _cifar_files(spec, root)
    if found is None:
        expected = lambda folder, files: f"{root / folder}/ ({', '.join(files)})"  # noqa: E731
        raise ConfigError(
            "data.root",
            str(root),
            f"has no {name} files: looked for "
            f"{expected(spec.binary, (*spec.train_bin, spec.test_bin))} or "
            f"{expected(spec.python, (*spec.train_py, spec.test_py))}; put them there, or add data.download=true",
        )
    kind, train, test = found

    def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        if kind == "binary":
            return formats.read_cifar_binary(path, spec.label_bytes, spec.num_classes)
        return formats.read_cifar_pickle(path, spec.label_key, spec.num_classes)

    try:
        parts = [read(p) for p in train]
        x_test, y_test = read(test)
    except formats.FormatError as err:
        raise ConfigError("data.root", str(root), str(err)) from None
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), x_test, y_test
