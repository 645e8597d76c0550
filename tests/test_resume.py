"""Fault injection: runs killed with SIGTERM and SIGKILL mid-run, then resumed to the numbers of a
run that was never interrupted; damaged and code-carrying checkpoints; same-seed determinism."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, run_cfg, sweep_here

from backprop_lab.errors import RefusedError
from backprop_lab.lab.compare import compare, find_runs
from backprop_lab.run.training import resume as resume_run

CLI = [sys.executable, "-m", "backprop_lab"]
# dropout and a schedule, so resuming must restore the RNG and the scheduler too
LONG = [
    "data=synthetic",
    "regularizer=dropout",
    "scheduler=cosine",
    "trainer.max_steps=600",
    "trainer.log_every=20",
    "trainer.eval_every=100",
    "trainer.checkpoint_every=50",
    "trainer.progress=off",
]
STAGED = [
    "pretrain=supervised",
    "data.source_classes=[0,1]",
    "data.target_classes=[2,3]",
    "pretrain.steps=600",
    "pretrain.finetune=gradual",
    "pretrain.unfreeze_every=100",
]


def comparable(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timings, which differ from run to run."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "target/seconds")} for r in rows]


def kill_mid_run(run_dir: Path, sig: int, overrides: list[str], after_rows: int) -> subprocess.Popen:
    p = subprocess.Popen(
        [*CLI, "train", *overrides, f"hydra.run.dir={run_dir}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline and (not metrics.is_file() or metrics.read_text().count("\n") < after_rows):
        time.sleep(0.02)
    p.send_signal(sig)
    p.wait(timeout=60)
    return p


@pytest.mark.parametrize(
    "sig,extra",
    [(signal.SIGTERM, []), (signal.SIGKILL, []), (signal.SIGTERM, STAGED)],
    ids=["SIGTERM", "SIGKILL", "SIGTERM-staged"],
)
def test_a_killed_run_resumes_to_the_numbers_of_an_uninterrupted_one(tmp_path, sig, extra):
    overrides = [*LONG, *extra]
    reference = run_cfg(tmp_path / "reference", *overrides)
    assert reference["status"] == "completed"

    run_dir = tmp_path / "killed"
    p = kill_mid_run(run_dir, sig, overrides, after_rows=12)
    summary = json.loads((run_dir / "summary.json").read_text())
    if sig == signal.SIGKILL:
        assert p.returncode == -signal.SIGKILL and summary["status"] == "running"  # nothing could record it
    else:
        assert p.returncode == 130 and summary["status"] == "interrupted" and "Traceback" not in p.stderr.read()
    assert (run_dir / "checkpoints" / "last.pt").is_file()

    if sig == signal.SIGKILL:  # `backprop-lab resume` end to end; the others call what it runs, in this process
        done = subprocess.run([*CLI, "resume", str(run_dir)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    else:
        resume_run(run_dir)
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["status"] == "completed" and len(resumed["resumed"]) == 1
    assert resumed["metrics"] == reference["metrics"]  # exactly, not approximately
    assert [s["stage"] for s in resumed["stages"]] == [s["stage"] for s in reference["stages"]]
    assert comparable(run_dir) == comparable(tmp_path / "reference")
    assert not (run_dir / "checkpoints").exists()  # a finished run keeps weights/, not the checkpoint
    for name in ("best.pt", "last.pt"):
        a = torch.load(run_dir / "weights" / name, weights_only=True)
        b = torch.load(tmp_path / "reference" / "weights" / name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in b)


def resume(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "resume", str(run_dir)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A run stopped by SIGTERM after its first checkpoint, made once for the tests that copy it."""
    run_dir = tmp_path_factory.mktemp("interrupted") / "run"
    kill_mid_run(run_dir, signal.SIGTERM, LONG, after_rows=10)
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    return run_dir


def interrupted_run(tmp_path: Path, interrupted: Path) -> Path:
    """A copy of the interrupted run, in this test's folder."""
    return Path(shutil.copytree(interrupted, tmp_path / "run"))


def test_resume_refuses_a_damaged_or_code_carrying_checkpoint(tmp_path, interrupted, capfd):
    from backprop_lab.cli import resume_main

    run_dir = interrupted_run(tmp_path, interrupted)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    good = checkpoint.read_bytes()
    checkpoint.write_bytes(good[: len(good) // 2])  # truncated, as by a full disk
    assert resume_main([str(run_dir)]) == 2  # (`backprop-lab resume` from the shell: the tests below)
    err = capfd.readouterr().err
    assert "damaged" in err and "Traceback" not in err
    torch.save({"step": 1, "model": {}, "hook": os.system}, checkpoint)  # unpickling would import code
    with pytest.raises(RefusedError, match="refused"):  # (what the CLI prints as one line, as above)
        resume_run(run_dir)
    checkpoint.write_bytes(good)
    assert resume_run(run_dir)["status"] == "completed"


def test_a_checkpoint_of_another_optimizer_layout_is_refused_in_one_line_and_kept(tmp_path, interrupted, capfd):
    """Before 2026-11-29 a run without weight decay had two optimizer groups (weights, biases); resuming
    such a checkpoint now names the mismatch instead of failing in torch's load_state_dict."""
    run_dir = interrupted_run(tmp_path, interrupted)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    saved = torch.load(checkpoint, weights_only=True)
    (group,) = saved["optimizer"]["param_groups"]
    weights, biases = group["params"][0::2], group["params"][1::2]  # (Linear layers: weight, bias, ...)
    saved["optimizer"]["param_groups"] = [{**group, "params": weights}, {**group, "params": biases}]
    torch.save(saved, checkpoint)
    summary = resume_run(run_dir)
    assert summary["status"] == "failed" and summary["refused"]  # bad input, not a crash
    assert summary["error"].startswith("the checkpoint's optimizer has 2 parameter groups and this version")
    printed = capfd.readouterr().err
    assert f"error: {summary['error']}\n" in printed and "Traceback" not in printed and "ValueError" not in printed
    assert checkpoint.is_file()  # still there, for the version that can resume it


def test_resume_refuses_what_it_cannot_continue(tmp_path, train):
    summary, finished = train()
    r = resume(finished)
    assert r.returncode == 2 and "already finished (completed)" in r.stderr
    r = resume(tmp_path / "nowhere")
    assert r.returncode == 2 and r.stderr.startswith("error: RUN_DIR=")


def test_a_torn_metrics_line_is_ignored_by_resume_and_compare(tmp_path, interrupted):
    run_dir = interrupted_run(tmp_path, interrupted)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"stage": "train", "split": "tr')  # a write cut off by SIGKILL
    assert resume_run(run_dir)["status"] == "completed"
    rows = [
        json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]  # every line parses again
    assert rows[-1]["split"] == "test"
    _, table = compare(find_runs([run_dir]), ["test/acc"])
    assert table[0].statuses == {"completed": 1}


def test_same_seed_and_deterministic_means_identical_metrics(tmp_path):
    overrides = [*FAST, "regularizer=dropout", "trainer.deterministic=true", "trainer.max_steps=40", "seed=3"]
    run_cfg(tmp_path / "a", *overrides)
    run_cfg(tmp_path / "b", *overrides)
    assert comparable(tmp_path / "a") == comparable(tmp_path / "b")


def test_a_sweep_with_an_invalid_job_is_refused_whole_and_a_diverging_job_lets_the_rest_finish(tmp_path):
    sweep = ["train", "-m", *FAST, "optimizer=sgd", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    r = subprocess.run([*CLI, *sweep, "optimizer.lr=0.01,1e30,-1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and not (tmp_path / "sweep").exists()  # refused before Hydra made a folder
    assert r.stderr.startswith("error: optimizer.lr=-1 is not valid: must be a number in (0, inf]")
    assert len(r.stderr.strip().splitlines()) == 1

    r = subprocess.run([*CLI, *sweep, "optimizer.lr=0.01,1e30"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "1 run(s) did not complete" in r.stderr
    statuses = [json.loads((tmp_path / "sweep" / str(i) / "summary.json").read_text())["status"] for i in range(2)]
    assert statuses == ["completed", "diverged"]
    table = subprocess.run(
        [*CLI, "compare", str(tmp_path / "sweep"), "--by", "optimizer.lr", "--format", "json"],
        capture_output=True,
        text=True,
    ).stdout
    assert "1 diverged" in table and "1 completed" in table


def test_an_interrupted_vectorized_group_resumes_member_by_member(tmp_path):
    """Each member of a batched group checkpoints as an ordinary run, and resumed alone ends where the
    uninterrupted group's member ends: exactly for the train and validation numbers of members that had
    stopped early before the signal (their tests run anew, on a single model's kernels: to 1e-6), to
    float precision for one still training (batched and single kernels round differently)."""
    # with these seeds the members stop early at steps 300, 350, 750 and 500: kill after step 600
    sweep = [
        "hydra/launcher=vectorized",
        "seed=0,1,2,3",
        "data=synthetic",
        "trainer.max_steps=3000",
        "trainer.eval_every=50",
        "trainer.log_every=50",
        "trainer.early_stopping=3",
        "trainer.monitor=val/loss",
        "trainer.checkpoint_every=0",
        "trainer.progress=off",
    ]
    sweep_here(tmp_path / "reference", *sweep)  # in this process; the one killed below is a child
    expected = {k: json.loads((tmp_path / "reference" / k / "summary.json").read_text()) for k in "0123"}
    assert sorted(s["steps"] for s in expected.values()) == [300, 350, 500, 750]

    p = subprocess.Popen(
        [*CLI, "train", "-m", *sweep, f"hydra.sweep.dir={tmp_path / 'killed'}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = max(expected, key=lambda k: expected[k]["steps"])
    metrics, deadline = tmp_path / "killed" / last / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and not any(r.get("step", 0) >= 600 for r in read_rows(metrics)):
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    assert p.returncode == 130
    for k, reference_summary in expected.items():
        run_dir = tmp_path / "killed" / k
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
        resume_run(run_dir)  # what `backprop-lab resume` runs (end to end in the tests above), in this process
        resumed = json.loads((run_dir / "summary.json").read_text())
        assert resumed["status"] == "completed" and resumed["vectorized"]["member"] == int(k)
        assert (resumed["steps"], resumed["best_step"]) == (reference_summary["steps"], reference_summary["best_step"])
        if k != last:  # it had stopped before the signal: nothing left to train, its numbers are kept
            kept = {key: v for key, v in resumed["metrics"].items() if not key.startswith("test/")}
            assert kept == {key: v for key, v in reference_summary["metrics"].items() if not key.startswith("test/")}
            for key in ("test/acc", "test/loss"):  # tested anew by one model, not the batched group: another kernel
                assert resumed["metrics"][key] == pytest.approx(reference_summary["metrics"][key], rel=1e-6)
        for key, value in reference_summary["metrics"].items():
            assert resumed["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
        assert [(r["split"], r["step"]) for r in comparable(run_dir)] == [
            (r["split"], r["step"]) for r in comparable(tmp_path / "reference" / k)
        ]


def read_rows(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    except (OSError, ValueError):
        return []


def test_a_run_folder_takes_one_process_at_a_time(tmp_path):
    """While a run trains, a second `resume` or `train` into its folder is refused in one line naming the
    process that holds it, and changes nothing: the first run ends with the numbers it would have had.
    (A killed run's lock goes with its process: the SIGKILL test above resumes its folder.)"""
    overrides = [*LONG, "trainer.max_steps=400"]
    reference = run_cfg(tmp_path / "reference", *overrides)
    run_dir = tmp_path / "busy"
    first = subprocess.Popen(
        [*CLI, "train", *overrides, f"hydra.run.dir={run_dir}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "metrics.jsonl").is_file():
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # holds its lock, mid-run, while the others try
    try:
        before = {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
        for argv in (["resume", str(run_dir)], ["train", *overrides, f"hydra.run.dir={run_dir}"]):
            r = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=120)
            assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
            assert r.stderr.startswith(f"error: {run_dir} is in use by process {first.pid} on ")
            assert len(r.stderr.strip().splitlines()) == 1
            assert "(nothing was changed)" in r.stderr
        assert {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["metrics"] == reference["metrics"]
    assert comparable(run_dir) == comparable(tmp_path / "reference")


SWEEP = ["data=synthetic", "trainer.max_steps=400", "trainer.log_every=20", "trainer.eval_every=40",
         "trainer.checkpoint_every=20", "trainer.progress=off"]  # fmt: skip
SWEEP_JOBS = [[f"act={act}", f"seed={seed}"] for act in ("relu", "tanh") for seed in (0, 1)]  # Hydra's job order


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[tuple[dict, Path]]:
    """Each job of the sweep below run alone, uninterrupted: (summary, run folder); made once per worker."""
    folder = tmp_path_factory.mktemp("alone")
    return [(run_cfg(folder / str(k), *SWEEP, *job), folder / str(k)) for k, job in enumerate(SWEEP_JOBS)]


@pytest.mark.parametrize("launcher", ["basic", "vectorized"])
def test_an_interrupted_sweep_is_finished_by_one_resume(tmp_path, launcher, capsys, uninterrupted):
    """SIGTERM in the middle of a sweep of 4 jobs (basic: job 0 done, job 1 mid-run, 2 and 3 never started;
    vectorized: the relu group mid-run, the tanh group never started). One `backprop-lab resume SWEEP_DIR`
    keeps, resumes and starts, and every job ends with the numbers of an uninterrupted sweep."""
    sweep_dir = tmp_path / "sweep"
    p = subprocess.Popen(
        [*CLI, "train", "-m", f"hydra/launcher={launcher}", "act=relu,tanh", "seed=0,1", *SWEEP,
         f"hydra.sweep.dir={sweep_dir}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    watched = sweep_dir / ("1" if launcher == "basic" else "0") / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and len(read_rows(watched)) < 4:
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 130
    said = p.stderr.read() if p.stderr else ""
    assert re.search(r"interrupted at step \d+ of 400 \(stage train\); resume with: backprop-lab resume ", said)
    assert said.rstrip().endswith(f"backprop-lab resume {sweep_dir}"), said[-500:]
    statuses = {d.name: json.loads((d / "summary.json").read_text())["status"] for d in sweep_dir.glob("[0-9]")}
    first = {"0": "completed", "1": "interrupted"} if launcher == "basic" else {"0": "interrupted", "1": "interrupted"}
    assert statuses == first  # jobs 2 and 3 never started

    if launcher == "basic":  # `backprop-lab resume SWEEP_DIR` end to end
        done = subprocess.run([*CLI, "resume", str(sweep_dir)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        printed = done.stdout
    else:  # what it runs, in this process
        from backprop_lab.cli import resume_main

        capsys.readouterr()
        assert resume_main([str(sweep_dir)]) == 0
        printed = capsys.readouterr().out
    kept, resumed = (1, 1) if launcher == "basic" else (0, 2)
    assert len(re.findall(r"resumed from step \d+ \(stage train\)", printed)) == resumed
    assert "sweep: 4 jobs in " in printed  # the whole sweep, kept jobs too, side by side
    assert f"kept {kept}, resumed {resumed}, started {4 - kept - resumed}; now 4 completed" in printed
    for k, (reference, alone) in enumerate(uninterrupted):
        summary = json.loads((sweep_dir / str(k) / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["seed"] == reference["seed"]
        if launcher == "basic":  # one process after another: exactly an uninterrupted run's numbers
            assert summary["metrics"] == reference["metrics"]
            assert comparable(sweep_dir / str(k)) == comparable(alone)
        else:  # batched members: a separate run's numbers to float precision. Their matmuls sum in
            # another order, which moved a loss by 1.5e-4 over 1000 steps (relu, seed 1, measured
            # uninterrupted); where the signal lands decides how much of that a member accrues
            for key, value in reference["metrics"].items():
                assert summary["metrics"][key] == pytest.approx(value, rel=1e-3, abs=1e-5), (k, key)


def test_a_sweep_folder_that_cannot_be_read_is_one_line(tmp_path, capsys):
    from backprop_lab.cli import resume_main

    (tmp_path / "multirun.yaml").write_text("{")  # a sweep folder whose record was cut off
    assert resume_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: SWEEP_DIR={tmp_path} is not valid: its multirun.yaml cannot be read (")
    assert len(err.strip().splitlines()) == 1
