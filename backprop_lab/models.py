"""`backprop_lab.models`, where a user's own model imports `Classifier` from (docs/bring_your_own.md):
the public names of the model registry, which lives in backprop_lab.components.models."""

from backprop_lab.components.models import MODELS, Classifier, build_model

__all__ = ["MODELS", "Classifier", "build_model"]
