"""Small files in the exact on-disk formats of the standard data sets (these machines cannot reach the
real ones): IDX (plain or gzipped), CIFAR binary records, CIFAR python-version pickles, PNG folders.

`digits_as_mnist` makes the closest thing to real MNIST available offline: scikit-learn's real
handwritten 8x8 digits, scaled to 20x20 and placed in a 28x28 field with a random shift, so the
borders are almost always blank (as in MNIST) and a few test images have ink where no training image
has any - the case that breaks per-pixel standardization.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(a: np.ndarray) -> bytes:
    """IDX: two zero bytes, 0x08 (unsigned byte), the number of dimensions, big-endian sizes, the data."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_idx_set(
    folder: Path, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, gz: bool = True
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, a in zip(IDX_NAMES, (x, y, x_test, y_test), strict=True):
        data = idx_bytes(a)
        path = folder / (f"{name}.gz" if gz else name)
        path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
        paths.append(path)
    return paths


def digits_as_mnist(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Real handwritten digits as 28x28 uint8 images (N, 28, 28): 1497 for training, 300 for testing."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images = np.zeros((len(digits.images), 28, 28), dtype=np.uint8)
    for i, small in enumerate(digits.images):
        big = np.asarray(Image.fromarray((small * 255 / 16).astype(np.uint8)).resize((20, 20), Image.BILINEAR))
        dy, dx = rng.integers(1, 8, size=2)  # MNIST centres by mass in a 28x28 field; shifts reach the border
        images[i, dy : dy + 20, dx : dx + 20] = big
    order = rng.permutation(len(images))
    images, labels = images[order], digits.target[order].astype(np.uint8)
    return images[:1497], labels[:1497], images[1497:], labels[1497:]


def random_cifar(n: int, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 images whose class shows in the mean colour (learnable), and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes)  # every class, where n allows (as in the real sets)
    base = np.random.default_rng(1234).integers(0, 256, size=(num_classes, 3, 1, 1))  # same classes in every split
    noise = rng.normal(0, 40, size=(n, 3, 32, 32))
    return np.clip(base[labels] + noise, 0, 255).astype(np.uint8), labels


def cifar_binary_bytes(x: np.ndarray, labels: np.ndarray, label_bytes: int) -> bytes:
    records = np.zeros((len(x), label_bytes + 3072), dtype=np.uint8)
    records[:, label_bytes - 1] = labels
    if label_bytes == 2:
        records[:, 0] = labels // 5  # CIFAR-100's coarse label comes first
    records[:, label_bytes:] = x.reshape(len(x), 3072)
    return records.tobytes()


def write_cifar_binary(
    root: Path, name: str, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Path:
    """cifar-10-batches-bin/ (5 training batches) or cifar-100-binary/ (train.bin, test.bin)."""
    if name == "cifar10":
        folder = root / "cifar-10-batches-bin"
        folder.mkdir(parents=True, exist_ok=True)
        for i, (xs, ys) in enumerate(zip(np.array_split(x, 5), np.array_split(y, 5), strict=True), start=1):
            (folder / f"data_batch_{i}.bin").write_bytes(cifar_binary_bytes(xs, ys, 1))
        (folder / "test_batch.bin").write_bytes(cifar_binary_bytes(x_test, y_test, 1))
        (folder / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    else:
        folder = root / "cifar-100-binary"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train.bin").write_bytes(cifar_binary_bytes(x, y, 2))
        (folder / "test.bin").write_bytes(cifar_binary_bytes(x_test, y_test, 2))
    return folder


def write_cifar_python(
    root: Path, name: str, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Path:
    """cifar-10-batches-py/ or cifar-100-python/: pickled dicts as torchvision leaves them."""

    def batch(xs: np.ndarray, ys: np.ndarray, label: str) -> bytes:
        key = "labels" if name == "cifar10" else "fine_labels"
        entry = {
            "batch_label": label,
            key: [int(v) for v in ys],
            "data": xs.reshape(len(xs), 3072),
            "filenames": [f"img_{i}.png" for i in range(len(xs))],
        }
        if name == "cifar100":
            entry["coarse_labels"] = [int(v) // 5 for v in ys]
        return pickle.dumps(entry, protocol=2)

    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        for i, (xs, ys) in enumerate(zip(np.array_split(x, 5), np.array_split(y, 5), strict=True), start=1):
            (folder / f"data_batch_{i}").write_bytes(batch(xs, ys, f"training batch {i} of 5"))
        (folder / "test_batch").write_bytes(batch(x_test, y_test, "testing batch 1 of 1"))
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train").write_bytes(batch(x, y, "training batch 1 of 1"))
        (folder / "test").write_bytes(batch(x_test, y_test, "testing batch 1 of 1"))
    return folder


def write_png_folder(folder: Path, x: np.ndarray, y: np.ndarray) -> None:
    """folder/<class>/<i>.png for (N, H, W) grayscale or (N, 3, H, W) colour uint8 images."""
    from PIL import Image

    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        (folder / f"class_{label}").mkdir(parents=True, exist_ok=True)
        pixels = image if image.ndim == 2 else image.transpose(1, 2, 0)
        Image.fromarray(pixels).save(folder / f"class_{label}" / f"{i}.png")
