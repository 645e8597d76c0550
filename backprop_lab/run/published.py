"""What a finished run's test accuracy means next to the published number for its data and model.

Only the data sets whose published figures come from one recipe: MNIST-1D (Greydanus & Kobak, "Scaling
down deep learning with MNIST-1D", ICML 2024: logistic regression 32%, MLP 68%, CNN 94% test accuracy,
with Adam at lr 1e-2, batch 100, 6000 steps on the public 4000/1000 split).
"""

from __future__ import annotations

from typing import Any

MNIST1D = {"mlp": 0.68, "cnn1d": 0.94}  # published test accuracy by model (the paper's MLP and CNN)
MNIST1D_STEPS = 6000
PUBLIC_SET = {"num_samples": 5000, "generation_seed": 42, "n_train": None, "source_classes": None}


def note(cfg: Any, summary: dict[str, Any]) -> str | None:
    """Two lines placing a completed MNIST-1D run beside the published figures, or None."""
    data = cfg.data
    if summary.get("status") != "completed" or data.get("name") != "mnist1d":
        return None
    if any(data.get(key) != value for key, value in PUBLIC_SET.items()):
        return None  # (another draw or a subset of the data: the published figures do not apply)
    acc = summary.get("metrics", {}).get("test/acc")
    if acc is None:
        return None
    steps, best, model = summary.get("steps"), summary.get("best_step"), cfg.model.get("name")
    line = f"MNIST-1D test accuracy {100 * acc:.1f}% (the weights of the best validation step, {best} of {steps})"
    published = "published (Greydanus & Kobak 2024, 6000 steps): MLP 68%, CNN 94%"
    if steps is not None and steps < MNIST1D_STEPS:
        return f"{line}\n{published}; a run of {steps} steps is not comparable with them"
    if model in MNIST1D:
        return f"{line}\n{published}; this {model}: {100 * (acc - MNIST1D[model]):+.1f} points"
    return f"{line}\n{published}"
