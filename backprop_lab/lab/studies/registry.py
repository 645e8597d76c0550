"""The studies by name (STUDIES) and where each measures its claim (setting_of)."""

from __future__ import annotations

from backprop_lab.lab.studies.activations import activations_sweeps, activations_verdict
from backprop_lab.lab.studies.optimizers import (
    OPTIMIZERS,
    SELF_TUNING,
    default_target,
    optimizers_sweeps,
    optimizers_verdict,
)
from backprop_lab.lab.studies.pretraining import pretraining_sweeps, pretraining_verdict
from backprop_lab.lab.studies.regularization import regularization_sweeps, regularization_verdict
from backprop_lab.lab.studies.study import Setting, Study


def setting_of(name: str, setting: str) -> Setting:
    """Study `name`'s setting: mnist1d (its own preset on MNIST-1D), digits (that protocol on
    scikit-learn's 8x8 digits) or real (STUDIES[name].real)."""
    if setting == "real":
        return STUDIES[name].real
    if setting == "digits":
        return Setting(
            f"study_{name}",
            "scikit-learn's 8x8 digits (1797 images, bundled with scikit-learn), on the MNIST-1D protocol",
            ("data=digits",),
        )
    return Setting(f"study_{name}", "MNIST-1D (generated locally by the mnist1d package)")


STUDIES: dict[str, Study] = {
    "activations": Study(
        "Saturating activations starve early layers of gradient; ReLU-family activations fix it.",
        activations_sweeps,
        activations_verdict,
        "act",
        Setting(
            "study_activations_real",
            "MNIST, a 5 x 100 MLP trained with plain SGD (the deep nets of Glorot & Bengio 2010, narrowed)",
        ),
    ),
    "regularization": Study(
        "Regularizers (L1, L2, dropout, batch norm, combined) reduce overfitting.",
        regularization_sweeps,
        regularization_verdict,
        "regularizer",
        Setting(
            "study_regularization_real",
            "Fashion-MNIST with 1000 labels, a 2 x 256 MLP that overfits them (the few-label regime of "
            "Srivastava et al. 2014)",
        ),
    ),
    "optimizers": Study(
        "Adaptive optimizers (Adam, RMSprop, Adagrad) converge faster than SGD.",
        optimizers_sweeps,
        optimizers_verdict,
        "optimizer",
        Setting(
            "study_optimizers_real",
            "MNIST, the two-hidden-layer ReLU MLP of Kingma & Ba 2015 at batch 128 (narrowed to 256 units)",
            search_steps=500,
        ),
        arms=(*OPTIMIZERS, *SELF_TUNING),
        rulesets=("lr", "oneshot", "budget:N"),
        target=default_target,
    ),
    "pretraining": Study(
        "Pretraining and transfer help when labels are few.",
        pretraining_sweeps,
        pretraining_verdict,
        None,
        Setting(
            "study_pretraining_real",
            "pretrain on Fashion-MNIST (all its labels), fine-tune on MNIST with 100, 300 or 1000 labels",
            ("pretrain.data=fashion_mnist",),
        ),
    ),
}
