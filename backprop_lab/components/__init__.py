"""The building blocks a config names: activations, models, optimizers and regularizers, each a registry."""
