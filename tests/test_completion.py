"""Tab completion: the bash script `backprop-lab train --shell-completion install=bash` prints is
sourced in bash and its completion function called as bash calls it on <TAB>."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent  # the venv's bin/, where the backprop-lab command is installed
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
CALL = r"""
source "$1"
complete_line() {  # what bash sets before calling a completion function
    COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}
    read -ra COMP_WORDS <<< "$COMP_LINE"
    if [[ "$COMP_LINE" == *" " ]]; then COMP_WORDS+=(""); fi
    COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
    _backprop_lab_completion
    echo "${COMPREPLY[*]}"
}
shift
for line in "$@"; do complete_line "$line"; done
"""


@pytest.mark.skipif(shutil.which("bash") is None or not (BIN / "backprop-lab").exists(), reason="needs bash")
def test_bash_completes_subcommands_groups_options_and_keys(tmp_path):
    script = subprocess.run(
        ["backprop-lab", "train", "--shell-completion", "install=bash"], capture_output=True, text=True, env=ENV
    )
    assert script.returncode == 0, script.stderr
    (tmp_path / "completion.sh").write_text(script.stdout)
    (tmp_path / "call.sh").write_text(CALL)
    lines = ["backprop-lab ", "backprop-lab tr", "backprop-lab train act=re", "backprop-lab train optim",
             "backprop-lab train trainer.max_", "backprop-lab train -m seed=0,1 logger=ml",
             "backprop-lab study reg"]  # fmt: skip
    done = subprocess.run(
        ["bash", str(tmp_path / "call.sh"), str(tmp_path / "completion.sh"), *lines],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "train resume compare report study",
        "train",
        "act=relu",
        "optimizer. optimizer=",
        "trainer.max_epochs= trainer.max_steps=",
        "logger=mlflow",
        "regularization",
    ]


def test_each_shell_gets_its_script_and_a_bad_request_is_one_line(capsys):
    from backprop_lab.cli import train_main

    for shell, marker in (("zsh", "bashcompinit"), ("fish", "complete -c backprop-lab")):
        script = subprocess.run(
            [sys.executable, "-m", "backprop_lab", "train", "-sc", f"install={shell}"], capture_output=True, text=True
        )
        assert script.returncode == 0 and marker in script.stdout
    assert train_main(["--shell-completion", "install=tcsh"]) == 2
    assert capsys.readouterr().err == (
        "error: --shell-completion install=tcsh is not valid: use install=SHELL, uninstall=SHELL or query=SHELL "
        "with SHELL one of bash, zsh, fish\n"
    )
