"""The README as a reader meets it: its bring-your-own files and command run as written from an empty
folder, its layout page lists every module of the package, cites only what the repository holds, carries no dates,
and stays short."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)


def test_the_bring_your_own_files_and_command_run_as_written_from_an_empty_folder(tmp_path):
    files = {}
    for _, body in code_blocks(README):
        first = body.splitlines()[0]
        if first.startswith("# ") and first[2:].endswith((".py", ".yaml")):
            files[first[2:]] = body
    assert set(files) == {"mylab.py", "configs/optimizer/signsgd.yaml"}
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    command = next(
        line.split("#")[0].strip()
        for _, body in code_blocks(README)
        for line in body.splitlines()
        if "--config-dir configs optimizer=signsgd" in line and line.startswith("backprop-lab train")
    )
    args = shlex.split(command)[1:] + ["trainer=smoke"]  # (as written, but a smoke run's length)
    r = subprocess.run([sys.executable, "-m", "backprop_lab", *args], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (summary,) = tmp_path.glob("outputs/*/*/summary.json")
    assert '"optimizer": "signsgd"' in summary.read_text() and '"status": "completed"' in summary.read_text()


def test_the_layout_names_every_module():
    layout = (REPO / "docs" / "layout.md").read_text()
    modules = sorted(p.name for p in (REPO / "backprop_lab").rglob("*.py") if p.name != "__init__.py")
    missing = [m for m in modules if f"`{m}`" not in layout]
    assert missing == [], f"docs/layout.md does not list {missing}"
    assert "](docs/layout.md)" in README


def test_it_is_short_undated_and_cites_only_the_repository():
    assert len(README.encode()) <= 25_000
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", README), "dates belong in BENCHMARKS.md and git, not the README"
    assert "REFERENCES.md" not in README and "../shared" not in README  # (the team's notes, not the product)
    for target in re.findall(r"\]\(([^)#]+)", README):
        if not target.startswith("http"):
            assert (REPO / target).exists(), target


def test_benchmarks_is_one_reference_table():
    text = (REPO / "BENCHMARKS.md").read_text()
    assert not re.search(r"\bpass\b|early morning|midday|afternoon", text), "a reference, not a diary"
    tables = [block for block in re.split(r"\n\n", text) if block.startswith("| figure |")]
    assert len(tables) == 1 and all(row.count("|") >= 7 for row in tables[0].splitlines())
