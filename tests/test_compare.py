"""compare on fabricated run folders with known numbers: pooling, confidence intervals, statuses."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
from test_cli import EXE

from backprop_lab.lab.compare import compare, find_runs, main, pooled

T_975_DF2 = 4.302652729911275  # Student t quantile, 0.975, 2 degrees of freedom (printed tables: 4.303)


def fake_run(
    path: Path, overrides: list[str], status: str = "completed", acc: float | None = None, config: str = ""
) -> None:
    opt = next((o.split("=")[1] for o in overrides if o.startswith("optimizer=")), "adam")
    config = config or f"optimizer:\n  name: {opt}\n  lr: 0.001\nact:\n  name: relu\nseed: 0\n"
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (path / ".hydra" / "config.yaml").write_text(config)
    if status != "unfinished":
        metrics = {} if acc is None else {"test/acc": acc, "test/loss": 1 - acc}
        (path / "summary.json").write_text(
            json.dumps({"status": status, "metrics": metrics, "choices": {"act": "relu"}})
        )


@pytest.fixture
def sweep(tmp_path):
    n = 0
    for opt, accs in (("sgd", [0.5, 0.6, 0.7]), ("adam", [0.8, 0.9, 0.85])):
        for seed, acc in enumerate(accs):
            fake_run(tmp_path / str(n), [f"optimizer={opt}", f"seed={seed}"], acc=acc)
            n += 1
    fake_run(tmp_path / str(n), ["optimizer=sgd", "seed=3"], status="diverged")
    fake_run(tmp_path / str(n + 1), ["optimizer=adam", "seed=3"], status="unfinished")
    fake_run(tmp_path / str(n + 2), ["optimizer=adam", "seed=4"], status="failed")
    (tmp_path / str(n + 3) / ".hydra").mkdir(parents=True)  # a folder with nothing readable at all
    (tmp_path / str(n + 3) / ".hydra" / "config.yaml").write_text("{")
    return tmp_path


def test_pooling_and_t_interval_match_a_hand_computation():
    s = pooled([0.5, 0.6, 0.7])
    half = T_975_DF2 * 0.1 / math.sqrt(3)
    assert s.n == 3 and s.mean == pytest.approx(0.6) and s.std == pytest.approx(0.1)
    assert (s.ci_low, s.ci_high) == (pytest.approx(0.6 - half), pytest.approx(0.6 + half))
    assert pooled([0.4]).ci_low is None and pooled([]).mean is None
    assert (pooled([1.0, 1.0, 1.0]).ci_low, pooled([1.0, 1.0, 1.0]).ci_high) == (1.0, 1.0)


def test_rows_pool_seeds_and_count_statuses(sweep):
    columns, rows = compare(find_runs([sweep]), ["test/acc"])
    assert columns == ["optimizer"]  # seed is pooled; act is equal everywhere and hidden
    by_opt = {r.setting["optimizer"]: r for r in rows}
    assert by_opt["sgd"].stats["test/acc"].mean == pytest.approx(0.6)
    assert by_opt["adam"].stats["test/acc"].mean == pytest.approx(0.85)
    assert by_opt["sgd"].statuses == {"completed": 3, "diverged": 1}
    assert by_opt["adam"].statuses == {"completed": 3, "unfinished": 1, "failed": 1}


def test_cli_formats(sweep, capsys):
    out = subprocess.run(
        [EXE, "compare", str(sweep), "--format", "json", "--sort=-test/acc"], capture_output=True, text=True, check=True
    ).stdout
    recs = json.loads(out)
    assert [r["optimizer"] for r in recs if r["optimizer"] in ("sgd", "adam")] == ["adam", "sgd"]

    def printed(*args: str) -> str:  # the other formats: what `backprop-lab compare` runs, in this process
        assert main([str(sweep), *args]) == 0
        return capsys.readouterr().out

    md = printed("--format", "markdown")
    assert "| optimizer | n | test/acc mean ± std | test/acc 95% CI | status |" in md
    assert "0.6000 ± 0.1000" in md
    csv = printed("--format", "csv", "--filter", "optimizer=sgd")
    assert csv.count("\n") == 2 and "3 completed" in csv
    table = printed()
    assert "0.8500" in table and "diverged" in table


def test_missing_path_is_one_line(tmp_path):
    r = subprocess.run([EXE, "compare", str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_compare_reads_real_runs(real_sweep):
    recs = json.loads(
        subprocess.run(
            [EXE, "compare", str(real_sweep), "--format", "json"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert sorted(r["act"] for r in recs) == ["relu", "sigmoid"] and all(r["test/acc n"] == 2 for r in recs)


def test_values_written_two_ways_pool_into_one_setting(tmp_path):
    """0 / 0.0 / 0e0 and 1e-2 / 0.01 (one of them the config's default) are one setting each: their seeds
    pool into one row, `--filter` matches them however it is written, and the CLI agrees."""
    written = [("0", "1e-2"), ("0.0", "0.01"), ("0e0", None), ("0.05", "1e-2")]
    for seed, (decay, lr) in enumerate(written):
        overrides = [f"optimizer.weight_decay={decay}", f"seed={seed}", *([f"optimizer.lr={lr}"] if lr else [])]
        config = f"optimizer:\n  name: adam\n  lr: 0.01\n  weight_decay: {decay}\nseed: {seed}\n"
        fake_run(tmp_path / str(seed), overrides, acc=0.5 + seed / 10, config=config)
    columns, rows = compare(find_runs([tmp_path]), ["test/acc"])
    assert columns == ["optimizer.weight_decay"]  # the rate is one value, written two ways: not a column
    by_decay = {r.setting["optimizer.weight_decay"]: r.stats["test/acc"].n for r in rows}
    assert by_decay == {"0": 3, "0.05": 1}
    _, rows = compare(find_runs([tmp_path]), ["test/acc"], filters=["optimizer.weight_decay=0.000"])
    assert [r.stats["test/acc"].n for r in rows] == [3]
    out = subprocess.run([EXE, "compare", str(tmp_path), "--format", "json"], capture_output=True, text=True)
    assert [row["test/acc n"] for row in json.loads(out.stdout)] == [3, 1]
