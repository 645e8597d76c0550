"""data.download=true against a local HTTP server on 127.0.0.1 that serves files in the real formats
with their checksums: fetched, checked, written atomically; a checksum mismatch keeps nothing."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import make_cfg, run_cfg
from fake_files import IDX_NAMES, random_cifar, write_cifar_binary, write_idx_set

from backprop_lab.data import datasets as data
from backprop_lab.data import image_sets
from backprop_lab.errors import ConfigError


@pytest.fixture
def server(tmp_path):
    """(folder served, base URL): a quiet HTTP server on a free port of 127.0.0.1."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _serve_mnist(folder: Path) -> tuple[list[Path], tuple[np.ndarray, ...]]:
    x, y = random_cifar(120, 10)
    arrays = (x[:100, 0, :28, :28], y[:100], x[100:, 0, :28, :28], y[100:])
    return write_idx_set(folder / "mnist", *arrays), arrays


def test_download_fetches_checks_and_uses_the_idx_files(tmp_path, server, monkeypatch):
    folder, url = server
    files, arrays = _serve_mnist(folder)
    spec = dataclasses.replace(
        image_sets.IDX_SETS["mnist"], mirrors=(f"{url}missing/", f"{url}mnist/"), md5=tuple(md5(f) for f in files)
    )
    monkeypatch.setitem(image_sets.IDX_SETS, "mnist", spec)
    root = tmp_path / "root"
    summary = run_cfg(
        tmp_path / "run",
        "data=mnist",
        f"data.root={root}",
        "data.download=true",
        "trainer=smoke",
        "trainer.progress=off",
    )
    assert summary["status"] == "completed", summary["error"]
    raw = root / "MNIST" / "raw"  # torchvision's layout, so both tools share one copy
    assert sorted(p.name for p in raw.iterdir()) == sorted(f"{n}.gz" for n in IDX_NAMES)
    loaded = data.load_arrays(make_cfg("data=mnist", f"data.root={root}").data)  # no download asked: found
    np.testing.assert_array_equal(loaded.x[:, 0], arrays[0])


def test_a_checksum_mismatch_keeps_nothing(tmp_path, server, monkeypatch):
    folder, url = server
    files, _ = _serve_mnist(folder)
    published = [md5(f) for f in files]
    published[2] = "0" * 32  # the served test images are not what was published
    monkeypatch.setitem(
        image_sets.IDX_SETS,
        "mnist",
        dataclasses.replace(image_sets.IDX_SETS["mnist"], mirrors=(f"{url}mnist/",), md5=tuple(published)),
    )
    root = tmp_path / "root"
    with pytest.raises(ConfigError) as err:
        data.load_arrays(make_cfg("data=mnist", f"data.root={root}", "data.download=true").data)
    assert f"checksum mismatch for {url}mnist/t10k-images-idx3-ubyte.gz" in str(err.value)
    assert str(err.value).startswith("data.download=true is not valid") and "\n" not in str(err.value)
    left = sorted(p.name for p in (root / "MNIST" / "raw").iterdir())
    assert left == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]  # the good ones, no partial file


def test_nothing_is_downloaded_unless_asked(tmp_path, server, monkeypatch):
    folder, url = server
    files, _ = _serve_mnist(folder)
    monkeypatch.setitem(
        image_sets.IDX_SETS,
        "mnist",
        dataclasses.replace(image_sets.IDX_SETS["mnist"], mirrors=(f"{url}mnist/",), md5=tuple(md5(f) for f in files)),
    )
    with pytest.raises(ConfigError, match="add data.download=true"):
        data.load_arrays(make_cfg("data=mnist", f"data.root={tmp_path / 'root'}").data)
    assert not (tmp_path / "root").exists()


def _tar(folder: Path, name: str, extra: tarfile.TarInfo | None = None) -> Path:
    archive = folder / name
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size))
    return archive


def test_download_unpacks_the_cifar_archive_atomically(tmp_path, server, monkeypatch):
    folder, url = server
    x, y = random_cifar(60, 10)
    write_cifar_binary(folder, "cifar10", x, y, x[:10], y[:10])
    archive = _tar(folder, "cifar-10-binary.tar.gz")
    monkeypatch.setitem(
        image_sets.CIFAR_SETS,
        "cifar10",
        dataclasses.replace(image_sets.CIFAR_SETS["cifar10"], url=f"{url}cifar-10-binary.tar.gz", md5=md5(archive)),
    )
    root = tmp_path / "root"
    arrays = data.load_arrays(make_cfg("data=cifar10", f"data.root={root}", "data.download=true").data)
    np.testing.assert_array_equal(arrays.x, x)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-bin"]  # no archive, no staging folder left


def test_an_archive_with_a_path_outside_its_folder_is_refused(tmp_path, server, monkeypatch):
    folder, url = server
    x, y = random_cifar(10, 10)
    write_cifar_binary(folder, "cifar10", x, y, x, y)
    evil = tarfile.TarInfo("../../escaped.txt")
    evil.size = 3
    archive = _tar(folder, "cifar-10-binary.tar.gz", evil)
    monkeypatch.setitem(
        image_sets.CIFAR_SETS,
        "cifar10",
        dataclasses.replace(image_sets.CIFAR_SETS["cifar10"], url=f"{url}cifar-10-binary.tar.gz", md5=md5(archive)),
    )
    root = tmp_path / "root"
    with pytest.raises(ConfigError, match="is not a plain file inside the archive; refused"):
        data.load_arrays(make_cfg("data=cifar10", f"data.root={root}", "data.download=true").data)
    assert not (tmp_path / "escaped.txt").exists() and not list(root.iterdir())  # nothing kept
