"""Pretraining: its data, its model + optimiser + jitted step, and the checkpointed loop (`src.training.pretrainer` is the command)."""
