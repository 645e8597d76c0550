"""Many runs as one batched model: stacked members, their kernels and their optimizers."""
