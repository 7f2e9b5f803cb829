"""Training: the train state and step, the epoch loop, checkpoints, weight averaging and config validation."""
