"""The run package: one training run (trainer loop, one epoch, setup, option checks, CLI parser pieces,
the plain and distillation objectives, validation, run checkpoints, optimizer, autoanchor)."""
