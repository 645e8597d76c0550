"""The Python API: `train` is the CLI's run in-process (same numbers, folder and errors), `load_runs`
reads run folders into a DataFrame, and the quickstart notebook runs on a real Jupyter kernel."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from test_cli import EXE, FAST, cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Run in a child process: train() sets up Hydra and logging as the CLI does, which a test process
# should not inherit. The child is an ordinary Python program using the API.
SCRIPT = """
import json, sys
from backprop_lab import train, load_runs
from backprop_lab.errors import RefusedError

fast = sys.argv[1:]
out = {"torch_at_import": "torch" in sys.modules}
out["summary"] = train(*fast, "seed=3", run_dir="api")
out["again"] = train(*fast, "optimizer=sgd", run_dir="api_sgd")["status"]
from backprop_lab import train as imported_again  # a notebook's import cell, run again after a run
out["reimported"] = imported_again is train
for name, bad in (("range", "optimizer.lr=-1"), ("option", "optimizer=nope"), ("key", "optimizer.lrr=1")):
    try:
        train(*fast, bad, run_dir="refused_" + name)
        out[name] = None
    except RefusedError as err:
        out[name] = [str(err), err.run_dir]
frame = load_runs(".")
out["columns"] = list(frame.columns)
out["records"] = json.loads(frame.to_json(orient="records"))
print("RESULT " + json.dumps(out))
"""


def test_train_and_load_runs_from_python(tmp_path):
    child = subprocess.run(
        [sys.executable, "-c", SCRIPT, *FAST], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert child.returncode == 0, child.stderr[-3000:]
    out = json.loads(child.stdout.split("RESULT ", 1)[1])
    assert out["torch_at_import"] is False
    summary = out["summary"]
    assert summary["status"] == "completed" and summary["run_dir"] == str(tmp_path / "api")
    assert (tmp_path / "api" / ".hydra" / "config.yaml").is_file() and out["again"] == "completed"
    assert out["reimported"]  # still the function, not a module of the package that a run imported

    r = cli(tmp_path, "train", *FAST, "seed=3", "hydra.run.dir=by_cli")  # the same run from the shell
    assert r.returncode == 0, r.stderr
    by_cli = json.loads((tmp_path / "by_cli" / "summary.json").read_text())
    for key, value in by_cli["metrics"].items():
        assert math.isclose(summary["metrics"][key], value, rel_tol=1e-6, abs_tol=1e-9), key
    assert summary["overrides"] == by_cli["overrides"] == [*FAST, "seed=3"]

    for name, bad, code in (
        ("range", "optimizer.lr=-1", 2),  # every refusal of the user's input: exit 2, before any folder
        ("option", "optimizer=nope", 2),
        ("key", "optimizer.lrr=1", 2),
    ):  # noqa: E501
        r = cli(tmp_path, "train", *FAST, bad)
        assert r.returncode == code and out[name] is not None
        assert r.stderr.strip().splitlines()[-1] == f"error: {out[name][0]}"  # the CLI's line, as the exception
    for name in ("range", "option"):  # refused before a run: no folder
        assert out[name][1] is None and not (tmp_path / f"refused_{name}").exists()

    assert {"run_dir", "status", "seed", "optimizer", "act", "overrides", "test/acc", "val/loss", "error"} <= set(
        out["columns"]
    )
    records = {Path(r["run_dir"]).name: r for r in out["records"]}
    assert {"api", "api_sgd"} == set(records)
    assert records["api"]["seed"] == 3 and records["api"]["optimizer"] == "adam"
    assert records["api_sgd"]["optimizer"] == "sgd"
    assert math.isclose(records["api"]["test/acc"], summary["metrics"]["test/acc"])


def test_import_needs_no_torch_and_the_api_is_exported():
    probe = "import sys, backprop_lab; from backprop_lab import train, load_runs; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    assert EXE  # (the notebook below uses the installed package, as a user's kernel would)


def test_quickstart_notebook_runs_on_a_jupyter_kernel(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    kernels = tmp_path / "jupyter" / "kernels" / "lab"
    kernels.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "language": "python"}
    (kernels / "kernel.json").write_text(json.dumps({**spec, "display_name": "backprop-lab"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    work = tmp_path / "work"
    work.mkdir()
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="lab", resources={"metadata": {"path": str(work)}}).execute()
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "sgd completed" in printed and "adam completed" in printed
    assert "optimizer.lr=-1 is not valid: must be a number in (0, inf]" in printed
    assert (work / "curves.png").stat().st_size > 5000
    assert json.loads((work / "runs" / "adam" / "summary.json").read_text())["status"] == "completed"
