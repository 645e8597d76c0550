"""Version safety: torch's private names are reached only with a fallback, so a torch release that
moves one does not break the lab (pyproject's torch floor is the oldest torch the suite ran on)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*ROOT.glob("backprop_lab/**/*.py"), *ROOT.glob("hydra_plugins/**/*.py")])


def _private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def _guarded_imports(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside `try: ... except ImportError`."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in node.handlers
        ):
            lines |= {n.lineno for stmt in node.body for n in ast.walk(stmt) if isinstance(n, ast.ImportFrom)}
    return lines


def test_torch_private_names_have_a_fallback():
    assert SOURCES, "the package's sources are next to the tests"
    unguarded = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        guarded = _guarded_imports(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
                names = [node.module or "", *(a.name for a in node.names)]
                if any(_private(n) for n in names) and node.lineno not in guarded:
                    unguarded.append(f"{path.name}:{node.lineno} from {node.module} import ...")
            name = node.value.id if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) else None
            if name == "torch" and _private(node.attr):  # type: ignore[attr-defined]  # torch._name, no fallback
                unguarded.append(f"{path.name}:{node.lineno} torch.{node.attr}")  # type: ignore[attr-defined]
    assert unguarded == []


def test_optimizers_keep_no_config_objects_in_their_state():
    """Every shipped optimizer's param groups hold plain values: a torch that keeps what it is given
    (torch 2.9 keeps OmegaConf's lists) would otherwise write checkpoints that torch.load(weights_only=True)
    refuses."""
    from conftest import make_cfg
    from omegaconf import OmegaConf

    from backprop_lab.components.models import build_model
    from backprop_lab.components.optimizers import OPTIMIZERS, build_optimizer

    cfg = make_cfg("data=synthetic")
    model = build_model(cfg, (20,), 3)

    for name in OPTIMIZERS:
        cfg = make_cfg(f"optimizer={name}", "data=synthetic")
        optimizer = build_optimizer(model, cfg.optimizer, decay_all=False)
        values = [v for group in optimizer.param_groups for k, v in group.items() if k != "params"]
        assert not any(OmegaConf.is_config(v) for v in values), name
