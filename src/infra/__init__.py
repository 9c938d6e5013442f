"""Run infrastructure shared by every trainer: checkpoints, run directories, sharding, logging, processes."""
