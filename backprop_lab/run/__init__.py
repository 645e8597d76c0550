"""One run and one sweep: the Hydra app, checks before a folder exists, stages, the run folder, resume."""
