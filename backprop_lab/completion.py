"""Tab completion for bash, zsh and fish: `backprop-lab <TAB>` offers the subcommands, `backprop-lab
study <TAB>` the studies, and after `backprop-lab train` Hydra's own completion offers groups, options
and keys (`act=re<TAB>` -> act=relu, `trainer.max_<TAB>` -> trainer.max_steps=).

    eval "$(backprop-lab train --shell-completion install=bash)"    # bash (zsh: install=zsh)
    backprop-lab train --shell-completion install=fish | source     # fish

The installed script asks `backprop-lab train -sc query=SHELL` with the command line in COMP_LINE;
`query` answers the subcommand level here and hands a train command line to Hydra without `train`.
"""

from __future__ import annotations

import os
import re
import shlex

SUBCOMMANDS = ("train", "resume", "compare", "report", "study")
SHELLS = ("bash", "zsh", "fish")

BASH = r"""_backprop_lab_completion()
{
    local word="${COMP_WORDS[COMP_CWORD]}" choices
    choices=$(COMP_POINT=$COMP_POINT COMP_LINE=$COMP_LINE "${COMP_WORDS[0]}" train -sc query=bash 2>/dev/null)
    if (( COMP_CWORD == 1 )) || [[ "${COMP_WORDS[1]}" == study ]]; then
        compopt +o nospace 2>/dev/null  # a subcommand or a study name is a whole word
    fi
    COMPREPLY=($(compgen -W "$choices" -- "$word"))
}
COMP_WORDBREAKS=${COMP_WORDBREAKS//=}
complete -o nospace -o default -F _backprop_lab_completion backprop-lab
"""
ZSH = "autoload -U +X compinit && compinit\nautoload -U +X bashcompinit && bashcompinit\n" + BASH
FISH = r"""function __backprop_lab_complete
    set -lx COMP_LINE (commandline -cp)
    backprop-lab train -sc query=fish 2>/dev/null
end
complete -c backprop-lab -f -a '(__backprop_lab_complete)'
"""
UNINSTALL = {
    "bash": "complete -r backprop-lab; unset -f _backprop_lab_completion\n",
    "zsh": "complete -r backprop-lab; unset -f _backprop_lab_completion\n",
    "fish": "complete -c backprop-lab -e; functions -e __backprop_lab_complete\n",
}


def handle(request: str) -> tuple[str | None, list[str] | None]:
    """`--shell-completion REQUEST` (install=SHELL, uninstall=SHELL or query=SHELL) -> (text to print,
    or the command line Hydra's query should complete for train). A bad request raises ValueError."""
    action, _, shell = request.partition("=")
    if action not in ("install", "uninstall", "query") or shell not in SHELLS:
        raise ValueError(
            f"--shell-completion {request} is not valid: use install=SHELL, uninstall=SHELL or query=SHELL "
            f"with SHELL one of {', '.join(SHELLS)}"
        )
    if action == "install":
        return {"bash": BASH, "zsh": ZSH, "fish": FISH}[shell], None
    if action == "uninstall":
        return UNINSTALL[shell], None
    line = os.environ.get("COMP_LINE", "")
    words = shlex.split(line, posix=True) if line.count('"') % 2 == 0 and line.count("'") % 2 == 0 else line.split()
    if line.endswith(" "):
        words.append("")  # the cursor starts a new word
    separator = "\n" if shell == "fish" else " "
    if len(words) <= 2:  # the subcommand itself
        prefix = words[1] if len(words) == 2 else ""
        return separator.join(c for c in SUBCOMMANDS if c.startswith(prefix)) + "\n", None
    if words[1] == "study":
        from backprop_lab.lab.studies.registry import STUDIES

        names = [name for name in STUDIES if name.startswith(words[-1])] if len(words) == 3 else []
        return separator.join(names) + "\n", None
    if words[1] != "train":
        return "", None  # resume, compare, report: paths, which the shell completes by itself
    rest = re.split(r"(?:^|\s)train(?:\s|$)", line, maxsplit=1)[-1]
    os.environ["COMP_LINE"] = f"backprop-lab {rest}"  # Hydra strips the app's name, not `train`
    return None, ["-sc", f"query={shell}"]
