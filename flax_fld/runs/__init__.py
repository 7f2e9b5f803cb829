"""What the launch/ scripts call: the command-line runtime, evaluation of a checkpoint, prediction, the ablation."""
