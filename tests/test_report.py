"""report writes report.md and valid PNGs from real run folders."""

from __future__ import annotations

import subprocess

from test_cli import EXE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_of_a_sweep(tmp_path, real_sweep):
    out = tmp_path / "rep"
    r = subprocess.run([EXE, "report", str(real_sweep), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = (out / "report.md").read_text()
    assert "| act | n | test/acc mean ± std |" in text and "| sigmoid | 2 |" in text
    for name in ("curves_steps.png", "curves_seconds.png", "grad_norms.png", "gap.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
        assert f"]({name})" in text


def test_report_of_nothing_is_one_line(tmp_path):
    r = subprocess.run([EXE, "report", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: no run folders") and "Traceback" not in r.stderr
