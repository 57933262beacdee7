"""Training: the step, the parallel wrappers, the run axis, the loop, checkpoints and metrics."""
