"""The installed `backprop-lab` command, run as a user runs it: a subprocess in an empty folder (and,
where a second subprocess would add nothing, what it runs, in this process)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

import backprop_lab

EXE = shutil.which("backprop-lab")
FAST = ["data=synthetic", "trainer=smoke", "trainer.max_steps=6", "trainer.eval_every=3"]
REPO = Path(__file__).resolve().parents[1]


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    assert EXE, "backprop-lab is not installed (pip install .)"
    return subprocess.run(
        [EXE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "CI": "true"},
    )


def test_single_run_writes_one_folder_and_nothing_else(tmp_path):
    r = cli(tmp_path, "train", *FAST, "seed=7")
    assert r.returncode == 0, r.stderr
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]
    run = runs[0]
    for name in (
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "metrics.jsonl",
        "summary.json",
        "weights/best.pt",
        "weights/last.pt",
    ):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["seed"] == 7
    assert {"test/acc", "test/loss", "val/acc"} <= set(summary["metrics"])
    assert summary["choices"]["act"] == "relu" and summary["choices"]["optimizer"] == "adam"
    assert "torch" in summary["versions"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all({"step", "stage", "split", "elapsed_s"} <= set(r) for r in rows if r["split"] != "test")
    assert "test/acc" in r.stdout


def test_sweep_writes_one_folder_per_job(tmp_path):
    r = cli(tmp_path, "train", "-m", *FAST, "optimizer=sgd,adam", "act=relu,tanh")
    assert r.returncode == 0, r.stderr
    jobs = sorted((tmp_path / "multirun").glob("*/*/[0-9]*"))
    assert len(jobs) == 4
    seen = set()
    for job in jobs:
        s = json.loads((job / "summary.json").read_text())
        assert s["status"] == "completed"
        seen.add((s["choices"]["optimizer"], s["choices"]["act"]))
    assert seen == {("sgd", "relu"), ("sgd", "tanh"), ("adam", "relu"), ("adam", "tanh")}


def test_cfg_job_prints_the_config_and_trains_nothing(tmp_path):
    r = cli(tmp_path, "train", "--cfg", "job", "optimizer=sgd", "regularizer=[l2,dropout]")
    assert r.returncode == 0, r.stderr
    assert "name: sgd" in r.stdout and "dropout: 0.2" in r.stdout and "l2: 0.0001" in r.stdout
    assert not list(tmp_path.iterdir())


def test_help_lists_commands_and_groups(tmp_path):
    r = cli(tmp_path, "--help")
    assert r.returncode == 0 and "train" in r.stdout and "leaky_relu" in r.stdout and "warmup_cosine" in r.stdout


BAD = [
    (["act=swish"], 2, "act=swish is not an option of 'act'; choose one of: celu"),
    (["-m", "optimizer=sgd,adamm"], 2, "optimizer=adamm is not an option"),
    (["optimizer.lr=-1"], 2, "optimizer.lr=-1 is not valid: must be a number in (0, inf]"),
    (["trainer.batch_size=0"], 2, "trainer.batch_size=0 is not valid: must be an integer >= 1"),
    (["regularizer.dropout=1.0"], 2, "regularizer.dropout=1.0 is not valid: must be a number in [0, 1)"),
    (["trainer.device=cuda:3"], 2, "trainer.device=cuda:3 is not valid"),
    (["model=cnn2d"], 2, "cnn2d needs images"),
    (["data.n_train=100000"], 2, "data.n_train=100000 is not valid: must be at most"),
    (["pretrain=supervised"], 2, "data.source_classes=null is not valid: pretrain=supervised needs"),
    (["pretrain=checkpoint"], 2, "pretrain.path=??? is not valid: is required"),
    (["trainer.bacth_size=5"], 2, "trainer.bacth_size is not a key of 'trainer'; its keys: max_steps"),
    (["optimizer=sgd", "optimizer.betas=[0.9,0.99]"], 2, "optimizer.betas is not a key of 'optimizer'"),
    (["trainer.batch_size=abc"], 2, "trainer.batch_size=abc is not valid: must be an integer >= 1"),
    (["optimizer.weight_decay=-1"], 2, "optimizer.weight_decay=-1 is not valid: must be a number in [0, inf]"),
    (["model.depth=0"], 2, "model.depth=0 is not valid: must be an integer >= 1"),
    (["model.width=0"], 2, "model.width=0 is not valid: must be an integer >= 1"),
    (["trainer.max_steps=0"], 2, "trainer.max_steps=0 is not valid: must be an integer >= 1"),
    (["trainer.checkpoint_every=-1"], 2, "trainer.checkpoint_every=-1 is not valid: must be an integer >= 0"),
    (["trainer.compile=maybe"], 2, "trainer.compile=maybe is not valid: must be true or false"),
    (["trainer.precision=fp8"], 2, "trainer.precision=fp8 is not valid: choose one of: fp32, bf16"),
    (["trainer.device=mps"], 2, "trainer.device=mps is not valid: MPS is not available here"),
    (["seed=abc"], 2, "seed=abc is not valid: must be an integer >= 0"),
    (
        ["pretrain=checkpoint", "pretrain.path=/nonexistent"],
        2,
        "pretrain.path=/nonexistent is not valid: no weights there",
    ),
    ([f"hydra.run.dir={REPO / 'pyproject.toml'}/run"], 2, "pyproject.toml is a file, not a folder"),
    (["-m", f"hydra.sweep.dir={REPO / 'README.md'}/sweep/${{now:%H}}", "seed=0,1"], 2, "README.md is a file, not"),
    (["data=npz", "data.path=/nonexistent.npz"], 2, "data.path=/nonexistent.npz is not valid: no such file"),
    (["data=npz", f"data.path={REPO / 'pyproject.toml'}"], 2, "pyproject.toml is not valid: is not an .npz file"),
    (["data=mnist", "data.root=nowhere"], 2, "data.root=nowhere is not valid: has no mnist files: looked in nowhere"),
    (
        ["data=cifar10", "data.augment=[rotate]"],
        2,
        "data.augment=['rotate'] is not valid: must be a list of distinct names",
    ),
]


# Each kind of refusal once through the installed command in a new process (a Hydra composition error,
# a value refused before training, one refused once the data is known); the rest call the same
# entry point, cli.main, in this process, which is what the command runs.
END_TO_END = ("act=swish", "optimizer.lr=-1", "model=cnn2d")


def in_process(cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str):
    """`backprop-lab ARGS` through cli.main in this process, in `cwd`: its exit status and output."""
    from backprop_lab.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("CI", "true")
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


@pytest.mark.parametrize("args,code,message", BAD, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_is_one_clear_line(tmp_path, monkeypatch, capsys, args, code, message):
    flags = [a for a in args if a.startswith("-")]  # Hydra wants -m before the overrides
    argv = ["train", *flags, *FAST, *[a for a in args if a not in flags]]  # args win over FAST
    r = cli(tmp_path, *argv) if args[0] in END_TO_END else in_process(tmp_path, monkeypatch, capsys, *argv)
    assert r.returncode == code
    assert message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert len([line for line in r.stderr.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()  # a refusal leaves no folder


def test_a_refused_value_is_refused_before_torch_starts(tmp_path):
    """Values are checked before the option registries (which hold torch classes) are read, and before
    Hydra makes the run's folder: a run refused for a value says so without torch's start-up."""
    argv = [sys.executable, "-X", "importtime", "-m", "backprop_lab", "train", "optimizer.lr=-1", "hydra.run.dir=run"]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "error: optimizer.lr=-1 is not valid: must be a number in (0, inf]" in r.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "backprop_lab.run.validate" in imported and "torch" not in imported
    assert not (tmp_path / "run").exists()


def test_sweep_with_a_bad_job_finishes_the_others_and_fails(tmp_path, monkeypatch, capfd):
    # in this process (test_resume runs such a sweep from the shell): the default sweep folder, multirun/
    from backprop_lab.cli import train_main

    monkeypatch.chdir(tmp_path)
    assert train_main(["-m", *FAST, "optimizer.lr=0.01,-5"]) == 2  # a job's value: the sweep refused before it runs
    assert not (tmp_path / "multirun").exists()
    assert train_main(["-m", *FAST, "data.n_train=100,100000"]) == 1  # refused once the data is known: the rest run
    statuses = sorted(json.loads(p.read_text())["status"] for p in tmp_path.glob("multirun/*/*/*/summary.json"))
    assert statuses == ["completed", "failed"]
    assert "1 run(s) did not complete" in capfd.readouterr().err


def test_installed_package_carries_its_configs():
    from importlib import resources

    configs = resources.files("backprop_lab.configs")
    assert (configs / "train.yaml").is_file() and (configs / "act" / "relu.yaml").is_file()


def test_wheel_contains_every_config(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if r.returncode != 0 and "setuptools" in r.stderr.lower():
        pytest.skip("setuptools is not installed here to build the wheel")
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for yaml in (REPO / "backprop_lab" / "configs").rglob("*.yaml"):
        assert f"backprop_lab/configs/{yaml.relative_to(REPO / 'backprop_lab' / 'configs').as_posix()}" in names
    modules = [*(REPO / "backprop_lab").rglob("*.py"), *(REPO / "hydra_plugins").rglob("*.py")]
    missing = [m.relative_to(REPO).as_posix() for m in modules if m.relative_to(REPO).as_posix() not in names]
    assert missing == [], "modules the wheel leaves out (pyproject's packages)"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_says_so_and_keeps_its_metrics(tmp_path, sig):
    p = subprocess.Popen(
        [EXE, "train", *FAST, "trainer.max_steps=100000000", "trainer.progress=off"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not any(f.stat().st_size for f in tmp_path.glob("outputs/*/*/metrics.jsonl")):
        time.sleep(0.1)  # until the first metrics line: the loop is running
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err
    (run,) = tmp_path.glob("outputs/*/*")
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert (run / "metrics.jsonl").read_text().count("\n") > 0


def test_user_configs_extend_the_shipped_ones(tmp_path, monkeypatch):
    (tmp_path / "myconf" / "experiment").mkdir(parents=True)
    (tmp_path / "myconf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /act: tanh\noptimizer:\n  lr: 0.005\n"
    )
    # --config-dir from the shell: test_bring_your_own; here what it runs, in this process
    monkeypatch.chdir(tmp_path)
    backprop_lab.train("experiment=mine", *FAST, config_dir="myconf")
    (summary,) = tmp_path.glob("outputs/*/*/summary.json")
    s = json.loads(summary.read_text())
    assert s["choices"]["act"] == "tanh" and s["choices"]["experiment"] == "mine"


def test_mnist_idx_files_train_from_an_empty_folder(tmp_path, monkeypatch):
    """Real handwritten digits in MNIST's gzipped IDX files, as a user has them after a download."""
    from fake_files import digits_as_mnist, write_idx_set

    write_idx_set(tmp_path / "data" / "MNIST" / "raw", *digits_as_mnist())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # in this process: from the shell, test_single_run_writes_one_folder_and_nothing_else
    backprop_lab.train(
        "data=mnist", f"data.root={tmp_path / 'data'}", "trainer.max_steps=300", "trainer.eval_every=100",
        "trainer.progress=off",
    )  # fmt: skip
    (summary,) = [json.loads(p.read_text()) for p in work.glob("outputs/*/*/summary.json")]
    assert summary["sizes"] == {"train": 1347, "val": 150, "test": 300}
    assert summary["metrics"]["test/acc"] > 0.8 and summary["metrics"]["test/loss"] < 1.0, summary["metrics"]


GC_PROBE = """
import gc, sys
import backprop_lab.run.training as training
prepare, train = training._prepare, training._train
def probed_prepare(*args, **kwargs):
    print("start-up, collector on:", gc.isenabled())
    return prepare(*args, **kwargs)
def probed_train(*args, **kwargs):
    print("training, collector on:", gc.isenabled(), "frozen:", gc.get_freeze_count() > 0)
    return train(*args, **kwargs)
training._prepare, training._train = probed_prepare, probed_train
from backprop_lab.cli import main
sys.argv = ["backprop-lab", *sys.argv[1:]]
main()
"""


def test_the_command_pauses_the_garbage_collector_during_start_up_only(tmp_path, monkeypatch, capsys):
    """As its own process, `backprop-lab train` starts with Python's cyclic collector paused and trains
    with it on, the start-up objects frozen (backprop_lab.run.gc_pause); cli.main given its arguments, as
    a caller's process calls it, leaves the collector alone."""
    import gc

    done = subprocess.run([sys.executable, "-c", GC_PROBE, "train", *FAST, f"hydra.run.dir={tmp_path / 'own'}"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "start-up, collector on: False" in done.stdout
    assert "training, collector on: True frozen: True" in done.stdout
    frozen = gc.get_freeze_count()
    r = in_process(tmp_path, monkeypatch, capsys, "train", *FAST, f"hydra.run.dir={tmp_path / 'here'}")
    assert r.returncode == 0 and gc.isenabled() and gc.get_freeze_count() == frozen
