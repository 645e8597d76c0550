"""Readers of the image-file formats the standard data sets ship in, with NumPy and Pillow only.

IDX (the MNIST family), CIFAR's binary records and CIFAR's "python version" pickles (read by an
unpickler that admits only arrays, lists, dicts, bytes, strings and numbers), and a folder of class
subfolders of PNG/JPEG files. Every reader checks what it reads: a truncated or damaged file, a wrong
magic number or counts that disagree raise `FormatError`, one line naming the file.
"""

from __future__ import annotations

import gzip
import math
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np


class FormatError(ValueError):
    """A file that is not what its name promises; `str()` is the one line shown to the user."""


def _open(path: Path) -> Any:
    """A plain or gzipped file (by its first two bytes, not its name)."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _read_all(path: Path) -> bytes:
    try:
        with _open(path) as f:
            return f.read()
    except (OSError, EOFError) as err:  # gzip: truncated stream, bad CRC, not gzip after all
        raise FormatError(f"{path} is damaged ({type(err).__name__}: {err})") from None


# IDX type byte -> big-endian NumPy dtype (http://yann.lecun.com/exdb/mnist/, "the IDX file format")
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (plain or .gz): magic 0x0000, a type byte, the number of dimensions, one big-endian
    uint32 per dimension, then the data."""
    raw = _read_all(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise FormatError(
            f"{path} is not an IDX file (wrong magic number {raw[:4].hex() or 'none'}; "
            "expected 0000 08 01 for labels or 0000 08 03 for images)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FormatError(f"{path} is truncated: its header ends early")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize  # (Python's integers: a header of 2^31 x 2^31 x 4 does not wrap)
    if len(raw) - header != expected:
        raise FormatError(
            f"{path} is truncated or damaged: its header promises {dims} "
            f"({expected} bytes of data), the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_cifar_binary(path: Path, label_bytes: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR's binary version: records of `label_bytes` label bytes (CIFAR-100: coarse, fine; the
    last one is used) then 3072 pixels (1024 R, 1024 G, 1024 B, row-major). Returns (N,3,32,32) uint8
    images and int64 labels."""
    raw = _read_all(path)
    record = label_bytes + 3072
    if not raw or len(raw) % record:
        raise FormatError(
            f"{path} is truncated or not a CIFAR binary batch: {len(raw)} bytes is not a "
            f"whole number of {record}-byte records"
        )
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    labels = rows[:, label_bytes - 1].astype(np.int64)
    _check_labels(path, labels, num_classes)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), labels


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise FormatError(f"{path} is damaged: labels must be in [0, {num_classes - 1}], found {labels.max()}")


def _numpy_core() -> Any:
    import importlib

    try:
        return importlib.import_module("numpy._core.multiarray")  # NumPy >= 2
    except ImportError:  # NumPy 1.x
        return importlib.import_module("numpy.core.multiarray")


class _ArraysOnly(pickle.Unpickler):
    """Admits what CIFAR's pickles hold (NumPy arrays, and the built-in lists, dicts, bytes, strings
    and numbers, which need no lookup); any other global - a function that would run - is refused
    before it is called."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name}")
        if module == "numpy":
            return getattr(np, name)
        if module == "_codecs":  # how Python 3 pickles bytes at protocol 2
            import _codecs

            return _codecs.encode
        return getattr(_numpy_core(), name)


def read_cifar_pickle(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch of CIFAR's python version (a pickled dict with `data`, N x 3072 uint8, and
    `label_key`), read without running any code the file might carry."""
    try:
        with _open(path) as f:
            batch = _ArraysOnly(f, encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise FormatError(
            f"{path} refused: it holds {err}, which a CIFAR batch never does (a pickle "
            "that would run code); only arrays, lists, dicts, bytes, strings and numbers are read"
        ) from None
    except Exception as err:
        raise FormatError(f"{path} is truncated or not a CIFAR batch ({type(err).__name__}: {err})") from None
    if not isinstance(batch, dict):
        raise FormatError(f"{path} is not a CIFAR batch (a dict with 'data' and '{label_key}')")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise FormatError(f"{path} is not a CIFAR batch: 'data' must be an N x 3072 uint8 array")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if len(labels) != len(data):
        raise FormatError(f"{path} is damaged: {len(data)} images but {len(labels)} labels ('{label_key}')")
    _check_labels(path, labels, num_classes)
    return data.reshape(-1, 3, 32, 32), labels


def _eight_bit(path: Path, im: Any) -> Any:
    """A 16-bit or 32-bit gray image scaled onto 8 bits by its type's range (Pillow's convert("L")
    would clip every value above 255 to white); a float image refused (its range is not known)."""
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode == "I":
        values = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or values.max(initial=0) <= 65535 else 2.0**31 - 1
        if values.min(initial=0) < 0:
            raise FormatError(f"{path} holds negative pixel values ({im.mode}): save it as 8- or 16-bit")
        return Image.fromarray(np.round(values * (255.0 / top)).astype(np.uint8), mode="L")
    if im.mode == "F":
        raise FormatError(
            f"{path} is a floating-point image (mode F), whose range is not known: save it as 8- or 16-bit"
        )
    return im


def _memory_limit() -> float:
    """MEMORY_SHARE of this machine's memory in bytes (no limit where the machine does not say)."""
    import os

    try:
        return MEMORY_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # (no sysconf: Windows)
        return math.inf


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MEMORY_SHARE = 0.5  # decoded images may take at most this share of the machine's memory


def image_files(folder: Path) -> dict[str, list[Path]]:
    """Class name -> its image files, for a folder of class subfolders (sorted names are the labels)."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {
        c.name: sorted(f for f in c.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()) for c in classes
    }


def decode_images(files: list[Path], size: tuple[int, int] | None) -> np.ndarray:
    """Decode with Pillow into one (N, C, H, W) uint8 array: C = 1 when every image is grayscale,
    else 3 (RGB). Without `size`, every image must have the same size."""
    from PIL import Image, UnidentifiedImageError

    images = []
    limit, decoded = _memory_limit(), 0
    for f in files:
        try:
            with warnings.catch_warnings():  # Pillow's warning of a large image (over ~89 M pixels): refused
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(f) as im:
                    decoded += (size[0] * size[1] if size else im.width * im.height) * len(im.getbands())
                    if decoded > limit:  # (from the headers, before the pixels are decoded)
                        raise FormatError(
                            f"{f}: the images up to this one decode to {decoded / 2**30:.1f} GiB, over half of this "
                            "machine's memory: set data.size=[H,W] smaller, or use fewer images"
                        )
                    im.load()
                    images.append(_eight_bit(f, im.copy()))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise FormatError(f"{f} refused: {err}") from None
        except FormatError:
            raise
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise FormatError(f"{f} could not be read as an image ({type(err).__name__}: {err})") from None
    gray = all(im.mode in ("1", "L", "LA") for im in images)
    arrays: list[np.ndarray] = []
    for f, im in zip(files, images, strict=True):
        im = im.convert("L" if gray else "RGB")
        if size is not None:
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)  # Pillow takes (width, height)
        a = np.asarray(im, dtype=np.uint8)
        a = a[None] if gray else a.transpose(2, 0, 1)
        if arrays and a.shape != arrays[0].shape:
            raise FormatError(
                f"{f} is {a.shape[1]}x{a.shape[2]}, {files[0]} is {arrays[0].shape[1]}x"
                f"{arrays[0].shape[2]}: set data.size=[H,W] to resize every image"
            )
        arrays.append(a)
    return np.stack(arrays)
