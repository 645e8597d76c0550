"""Files a hostile or careless user has (issue 31): each ends with the right numbers, or one line that
names the file or key and the cause, exit 2, and no run folder left. The files are made here."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_cli import EXE

T = ["trainer.max_steps=20", "trainer.eval_every=10", "trainer.batch_size=8", "trainer.progress=off"]


def train(folder: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, "train", *overrides, *T], capture_output=True, text=True, cwd=folder, timeout=300)


def refused(r: subprocess.CompletedProcess, folder: Path, *said: str) -> None:
    """Exit 2, one line that says all of `said`, no traceback, no run folder left."""
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert all(s in r.stderr for s in said), r.stderr
    assert not list(folder.glob("outputs/*/*/summary.json"))


def two_classes(n: int = 40, features: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    return rng.normal(size=(n, features)).astype(np.float32) + 3.0 * y[:, None], y


@pytest.mark.parametrize(
    ("arrays", "said"),
    [
        ({"y": np.array([0, 1] * 20, dtype=np.uint64) * np.uint64(2**64 - 1)}, "class labels in [0, 2147483647]"),
        ({"y": np.array([0.0, 1e20] * 20)}, "class labels in [0, 2147483647]"),
        ({"x": (np.ones((40, 6)) + 1j).astype(np.complex64)}, "x must hold real numbers; it holds complex"),
        ({"x": np.array([["a"] * 6] * 40)}, "x must hold real numbers; it holds <U1 values"),
        ({"x": np.zeros((0, 6), np.float32), "y": np.zeros(0, np.int64)}, "x is empty"),
        ({"x_test": np.zeros((0, 6), np.float32), "y_test": np.zeros(0, np.int64)}, "x_test is empty"),
        ({"y": np.zeros(40, np.int64)}, "the training labels hold one class (0)"),
        ({"y_test": np.array([0, 1, 2, 1] * 5)}, "the test labels hold classes the training labels lack: 2"),
    ],
    ids=["uint64-max", "label-1e20", "complex-x", "string-x", "empty-x", "empty-x-test", "one-class", "unseen-class"],
)
def test_arrays_a_run_cannot_learn_from_are_refused_in_one_line(tmp_path, arrays, said):
    x, y = two_classes()
    given = {"x": x, "y": y, "x_test": x[:20], "y_test": y[:20], **arrays}
    np.savez(tmp_path / "mine.npz", **given)
    refused(train(tmp_path, "data=npz", "data.path=mine.npz"), tmp_path, "data.path=mine.npz", said)


def test_a_large_label_costs_no_memory_of_its_size(tmp_path):
    """Labels 0 and 300000000 train as two classes, and selecting them allocates memory of the number of
    examples, not of the largest label (a lookup table sized by it: 2.4 GB)."""
    import tracemalloc

    from backprop_lab.data.datasets import _select

    x, y = two_classes()
    tracemalloc.start()
    _, renumbered = _select(x, y * 300_000_000, [0, 300_000_000])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1_000_000 and renumbered.tolist() == y.tolist()
    np.savez(tmp_path / "mine.npz", x=x, y=y * 300_000_000)
    r = train(tmp_path, "data=npz", "data.path=mine.npz")
    assert r.returncode == 0, r.stderr[-2000:]


def test_sixteen_bit_png_images_are_scaled_not_clipped(tmp_path):
    """Two classes of 16-bit gray images, at about 1000 and 58000 of 65535: convert("L") would clip both
    to white (chance accuracy); scaled onto 8 bits they are told apart."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, level in (("dark", 1000), ("bright", 58000)):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(30):
            pixels = np.clip(level + rng.normal(0, 300, size=(8, 8)), 0, 65535).astype(np.uint16)
            Image.fromarray(pixels).save(tmp_path / "photos" / label / f"{i}.png")
    from backprop_lab.data.formats import decode_images

    decoded = decode_images(sorted((tmp_path / "photos" / "dark").glob("*.png"))[:1], None)
    assert decoded.dtype == np.uint8 and abs(int(decoded.mean()) - round(1000 * 255 / 65535)) <= 2
    r = train(tmp_path, "data=images", "data.path=photos", "data.test_fraction=0.3")
    assert r.returncode == 0, r.stderr[-2000:]
    (summary,) = tmp_path.glob("outputs/*/*/summary.json")
    assert json.loads(summary.read_text())["metrics"]["test/acc"] >= 0.9  # (clipped to white: 0.5)


def test_a_float_image_and_a_decompression_bomb_are_refused_naming_the_file(tmp_path):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / "photos" / label / f"{i}.png")
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "photos" / "a" / "float.tif")
    (tmp_path / "photos" / "a" / "float.tif").rename(tmp_path / "photos" / "a" / "float.webp")  # (any image suffix)
    r = train(tmp_path, "data=images", "data.path=photos")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert "float.webp" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "photos" / "a" / "float.webp").unlink()
    Image.new("L", (12000, 12000)).save(tmp_path / "photos" / "b" / "huge.png")  # (over Pillow's 2x bomb limit)
    r = train(tmp_path, "data=images", "data.path=photos")
    refused(r, tmp_path, "huge.png", "refused")


def idx(path: Path, data: np.ndarray, type_byte: int, dims: tuple[int, ...] | None = None) -> None:
    dims = dims if dims is not None else data.shape
    header = bytes([0, 0, type_byte, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    path.write_bytes(header + data.astype(data.dtype.newbyteorder(">")).tobytes())


def mnist_files(root: Path, labels: np.ndarray, label_type: int = 0x08) -> None:
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(0).integers(0, 255, size=(len(labels), 28, 28), dtype=np.uint8)
    for prefix in ("train", "t10k"):
        idx(folder / f"{prefix}-images-idx3-ubyte", images, 0x08)
        idx(folder / f"{prefix}-labels-idx1-ubyte", labels, label_type)


def test_idx_labels_of_a_float_type_are_refused_not_truncated(tmp_path):
    mnist_files(tmp_path / "root", np.array([0.5, 1.7, 2.2, 3.9] * 5, dtype=np.float32), label_type=0x0D)
    r = train(tmp_path, "data=mnist", f"data.root={tmp_path / 'root'}")
    refused(r, tmp_path, "train-labels-idx1-ubyte", "holds float32 labels")


def test_an_idx_header_whose_size_overflows_is_a_damaged_file(tmp_path):
    from backprop_lab.data.formats import FormatError, read_idx

    path = tmp_path / "train-images-idx3-ubyte"
    idx(path, np.zeros(0, np.uint8), 0x08, dims=(2**31, 2**31, 4))  # (in 64 bits the product wraps to 0)
    with pytest.raises(FormatError, match="truncated or damaged: its header promises"):
        read_idx(path)


def test_compare_and_report_read_damaged_run_files(tmp_path):
    """A summary.json holding [1, 2, 3], a metrics line `null`, rows without a stage: compare and report
    list the run as damaged, skip the rows that are not rows, and report the rest."""
    r = subprocess.run([EXE, "train", "-m", "seed=0,1,2", "trainer=smoke", "hydra.sweep.dir=sw"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    sweep = tmp_path / "sw"
    (sweep / "0" / "summary.json").write_text("[1, 2, 3]")
    with open(sweep / "1" / "metrics.jsonl", "a") as f:
        f.write("null\n" + json.dumps({"split": "train", "step": 99, "loss": 1.0}) + "\n[1]\n")
    for command in ("compare", "report"):
        r = subprocess.run([EXE, command, "sw"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "damaged" in subprocess.run([EXE, "compare", "sw"], capture_output=True, text=True, cwd=tmp_path).stdout
    report = (sweep / "report.md").read_text()
    assert "summary.json is damaged: it holds a list" in report and "2 completed" in report


def test_an_optimizer_yaml_without_lr_is_one_line_before_any_folder(tmp_path):
    (tmp_path / "configs" / "optimizer").mkdir(parents=True)
    (tmp_path / "configs" / "optimizer" / "nolr.yaml").write_text("name: sgd\nweight_decay: 0.0\n")
    r = train(tmp_path, "--config-dir", "configs", "optimizer=nolr")
    refused(r, tmp_path, "optimizer=nolr", "its YAML has no lr")
    assert not (tmp_path / "outputs").exists()


def test_a_users_module_never_replaces_the_standard_librarys(tmp_path):
    """A statistics.py beside the user's configs (which would break the standard library's for the rest
    of the run) is not imported in its place; a target that names it is refused in one line."""
    import shutil

    examples = Path(__file__).resolve().parents[1] / "examples"
    (tmp_path / "configs" / "act").mkdir(parents=True)
    shutil.copy(examples / "mylab.py", tmp_path)
    shutil.copy(examples / "configs" / "act" / "squareplus.yaml", tmp_path / "configs" / "act")
    (tmp_path / "statistics.py").write_text("raise ImportError('the user statistics.py was imported')\n")
    r = train(tmp_path, "--config-dir", "configs", "act=squareplus")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    (tmp_path / "configs" / "act" / "mean.yaml").write_text("_target_: statistics.fmean\n")
    for run in tmp_path.glob("outputs/*/*"):
        shutil.rmtree(run)  # (the run above)
    r = train(tmp_path, "--config-dir", "configs", "act=mean")
    refused(r, tmp_path, "act._target_=statistics.fmean", "statistics.py in the working folder has the name")


def test_an_activation_module_of_the_wrong_shape_is_named(tmp_path):
    (tmp_path / "configs" / "act").mkdir(parents=True)
    (tmp_path / "mylab.py").write_text(
        "import torch\n\nclass Halve(torch.nn.Module):\n    def forward(self, x):\n        return x[..., ::2]\n"
    )
    (tmp_path / "configs" / "act" / "halve.yaml").write_text("_target_: mylab.Halve\n")
    r = train(tmp_path, "--config-dir", "configs", "act=halve")
    refused(r, tmp_path, "act._target_=mylab.Halve", "must return a tensor of its input's shape; (2, 8) gave (2, 4)")


# ------------------------------------------------------------------ resume: what it resumes is verified
def finished_sweep(tmp_path: Path) -> Path:
    r = subprocess.run([EXE, "train", "-m", "seed=0,1", "optimizer.lr=0.001", "trainer=smoke", "hydra.sweep.dir=sw"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp_path / "sw"


def resume(tmp_path: Path, folder: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, "resume", folder], capture_output=True, text=True, cwd=tmp_path, timeout=300)


def test_resume_refuses_an_edited_multirun_yaml_naming_both_values(tmp_path):
    sweep = finished_sweep(tmp_path)
    recorded = (sweep / "0" / ".hydra" / "overrides.yaml").read_text()
    edited = (sweep / "multirun.yaml").read_text().replace("optimizer.lr=0.001", "optimizer.lr=0.1")
    (sweep / "multirun.yaml").write_text(edited)
    r = resume(tmp_path, "sw")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert "job 0 ran with optimizer.lr=0.001, and multirun.yaml now gives it optimizer.lr=0.1" in r.stderr
    assert (sweep / "0" / ".hydra" / "overrides.yaml").read_text() == recorded  # (not relabelled)


def test_resume_never_retrains_over_a_damaged_summary(tmp_path):
    sweep = finished_sweep(tmp_path)
    (sweep / "1" / "summary.json").write_text('{"status": "compl')
    metrics = (sweep / "1" / "metrics.jsonl").read_text()
    r = resume(tmp_path, "sw")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert "job 1: its summary.json is damaged" in r.stderr
    assert (sweep / "1" / "metrics.jsonl").read_text() == metrics and (sweep / "1" / "weights").is_dir()


def test_a_damaged_checkpoint_in_a_sweep_is_one_line_and_leaves_the_job_as_it_was(tmp_path):
    sweep = finished_sweep(tmp_path)
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    (sweep / "0" / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    (sweep / "0" / "checkpoints").mkdir(exist_ok=True)
    (sweep / "0" / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    r = resume(tmp_path, "sw")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert "job 0: checkpoints/last.pt is damaged" in r.stderr and "Traceback" not in r.stderr
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "interrupted"


def test_a_second_resume_of_a_sweep_is_one_line(tmp_path):
    from backprop_lab.run.folder_lock import hold, release

    sweep = finished_sweep(tmp_path)
    hold(sweep)  # (this process resumes it)
    try:
        r = resume(tmp_path, "sw")
    finally:
        release(sweep)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is in use by process" in r.stderr, r.stderr


def test_resume_of_a_folder_that_is_no_run_writes_nothing_into_it(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.txt").write_text("mine")
    r = resume(tmp_path, "photos")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "RUN_DIR=photos is not valid" in r.stderr, r.stderr
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["a.txt"]


# ------------------------------------------------------------------ a fault while writing
def test_a_full_disk_mid_run_fails_in_one_line_leaving_the_last_checkpoint_and_no_temporary_file(
    tmp_path, monkeypatch, capsys
):
    """The second checkpoint hits a full disk halfway: the run ends failed with the cause in summary.json,
    no .tmp file is left, the first checkpoint still loads, and resume continues from it once the disk
    has room again."""
    import errno
    import os
    import types

    from conftest import FAST, make_cfg, run_cfg
    from omegaconf import OmegaConf

    from backprop_lab.run import checkpoint
    from backprop_lab.run.training import resume

    calls = []

    def fsync(fd):  # (the second checkpoint's bytes are in its temporary file when the disk is full)
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        os.fsync(fd)

    monkeypatch.setattr(checkpoint, "os", types.SimpleNamespace(fsync=fsync, replace=os.replace))
    run_dir = tmp_path / "run"
    steps = [*FAST, "trainer.max_steps=30", "trainer.eval_every=10", "trainer.checkpoint_every=10"]
    (run_dir / ".hydra").mkdir(parents=True)
    summary = run_cfg(run_dir, *steps)
    err = capsys.readouterr().err
    assert summary["status"] == "failed" and "no space left" in summary["error"]
    assert err.count("error: ") == 1 and "Traceback" not in err and f"backprop-lab resume {run_dir}" in err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    assert checkpoint.load_checkpoint(run_dir)["step"] == 10
    monkeypatch.setattr(checkpoint, "os", os)  # (room again)
    OmegaConf.save(make_cfg(*steps), run_dir / ".hydra" / "config.yaml")  # (what Hydra writes for a run)
    assert resume(run_dir)["status"] == "completed"


def test_a_summary_that_cannot_be_written_ends_the_run_in_one_line(tmp_path, monkeypatch, capsys):
    import errno

    from conftest import FAST, run_cfg

    from backprop_lab.run import runlog

    real = runlog.write_json_atomic

    def write(path, data):
        if isinstance(data, dict) and data.get("status") not in (None, "running"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real(path, data)

    monkeypatch.setattr(runlog, "write_json_atomic", write)
    summary = run_cfg(tmp_path / "run", *FAST)
    err = capsys.readouterr().err
    assert summary["status"] == "failed" and "a read-only file system" in summary["error"]
    assert err.count("error: ") == 1 and "Traceback" not in err


def test_a_real_full_disk_mid_run(tmp_path):
    """The same on a 1.5 MB tmpfs as the run folder (where this machine lets a test mount one): one line,
    status failed with the cause, the first checkpoint intact, no temporary file; with room again,
    resume ends on the numbers of a run that never hit the fault."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(small)], capture_output=True
    ).returncode:
        pytest.skip("mounting a tmpfs needs privileges this machine does not give")
    try:
        steps = ["model.width=256", "trainer.max_steps=200", "trainer.checkpoint_every=50", "trainer.progress=off"]
        r = subprocess.run([EXE, "train", *steps, f"hydra.run.dir={small / 'run'}"], capture_output=True, text=True,
                           cwd=tmp_path, timeout=300)  # fmt: skip
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no space left" in r.stderr, r.stderr[-2000:]
        summary = json.loads((small / "run" / "summary.json").read_text())
        assert summary["status"] == "failed" and "no space left" in summary["error"]
        assert not [p for p in (small / "run").rglob("*") if p.name.endswith(".tmp")]
        subprocess.run(["mount", "-o", "remount,size=30m", str(small)], check=True)
        r = subprocess.run([EXE, "resume", str(small / "run")], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        reference = subprocess.run([EXE, "train", *steps, "hydra.run.dir=ref"], capture_output=True, text=True,
                                   cwd=tmp_path, timeout=300)  # fmt: skip
        assert reference.returncode == 0
        resumed = json.loads((small / "run" / "summary.json").read_text())["metrics"]
        assert resumed == json.loads((tmp_path / "ref" / "summary.json").read_text())["metrics"]
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_resume_refuses_edited_seeds(tmp_path):
    sweep = finished_sweep(tmp_path)
    (sweep / "multirun.yaml").write_text((sweep / "multirun.yaml").read_text().replace("seed=0,1", "seed=5,6"))
    r = resume(tmp_path, "sw")
    assert r.returncode == 2 and "job 0 ran with seed=0, and multirun.yaml now gives it seed=5" in r.stderr, r.stderr


def test_resume_of_an_optuna_sweep_folder_writes_nothing_into_it(tmp_path):
    search = [EXE, "train", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "trainer=smoke"]
    r = subprocess.run([*search, "hydra.sweep.dir=search"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "search").rglob("*"))
    r = resume(tmp_path, "search")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "chooses its jobs as it goes" in r.stderr, r.stderr
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "search").rglob("*")) == before


def test_an_image_folder_of_one_class_is_refused(tmp_path):
    from PIL import Image

    (tmp_path / "photos" / "cats").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.full((4, 4), 10 * i, np.uint8)).save(tmp_path / "photos" / "cats" / f"{i}.png")
    refused(train(tmp_path, "data=images", "data.path=photos"), tmp_path, "data.path=photos", "hold one class")


def test_sixteen_bit_rgb_pngs_are_scaled_by_their_range(tmp_path):
    """A 16-bit RGB PNG (written here byte by byte: Pillow writes none) decodes to 8 bits per channel
    within one level of value * 255 / 65535."""
    import struct
    import zlib

    from backprop_lab.data.formats import decode_images

    pixels = np.full((4, 4, 3), [1000, 30000, 58000], dtype=np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 4, 4, 16, 2, 0, 0, 0)  # 4x4, 16 bits, RGB
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    (tmp_path / "rgb16.png").write_bytes(png)
    decoded = decode_images([tmp_path / "rgb16.png"], None)
    assert decoded.shape == (1, 3, 4, 4) and decoded.dtype == np.uint8
    expected = np.array([1000, 30000, 58000]) * 255 / 65535
    assert np.all(np.abs(decoded[0, :, 0, 0] - expected) <= 1)


def test_resume_never_picks_up_a_target_the_sweep_did_not_have(tmp_path):
    sweep = finished_sweep(tmp_path)
    recorded = (sweep / "multirun.yaml").read_text()
    (sweep / "multirun.yaml").write_text(
        recorded.replace("- trainer=smoke", "- trainer=smoke\n    - +data._target_=os.system")
    )
    assert "+data._target_=os.system" in (sweep / "multirun.yaml").read_text()
    r = resume(tmp_path, "sw")
    assert r.returncode == 2 and "job 0 ran with data._target_=(unset), and multirun.yaml now gives it" in r.stderr


def test_images_that_would_not_fit_in_memory_are_refused_before_decoding(tmp_path, monkeypatch):
    """The decoded size is added up from the files' headers and refused, naming the file where it
    crosses the limit, before the pixels are decoded; TIFF files are read like the others."""
    from PIL import Image

    from backprop_lab.data import formats

    (tmp_path / "a").mkdir()
    for i in range(3):
        Image.fromarray(np.full((64, 64), i, np.uint8)).save(tmp_path / "a" / f"{i}.tif")
    files = sorted(formats.image_files(tmp_path)["a"])
    assert [f.suffix for f in files] == [".tif"] * 3
    monkeypatch.setattr(formats, "_memory_limit", lambda: 64 * 64 * 2.5)
    with pytest.raises(formats.FormatError, match=r"2\.tif: the images up to this one decode to"):
        formats.decode_images(files, None)
    monkeypatch.setattr(formats, "_memory_limit", lambda: 1e9)
    assert formats.decode_images(files, None).shape == (3, 1, 64, 64)
