"""Pretraining runs: `python -m src.training.pretrainer --config configs/pretrain_cmht.toml [--set k=v ...]`.

One jitted train step (AdamW with warmup + cosine decay and global-norm clipping) over a (data, fsdp) device
mesh, fed by a per-process Grain pipeline. A run lives in `runs/<name>/` (Contract 3): the resolved
`config.toml`, Orbax checkpoints in `ckpt/` (model, optimizer, RNG key, step and the data iterator's position,
so a restarted run continues exactly), `metrics.jsonl` + TensorBoard events, and at the end `encoder/`, the
encoder + fusion weights a PPO run imports. A non-finite loss stops the run and leaves the last good
checkpoint; SIGTERM (SLURM pre-emption or time-limit warning) and Ctrl-C save a checkpoint before exiting, and
the CLI then exits with EXIT_STOPPED_EARLY (75) so that a job script can requeue itself. Shared files (synthetic
data, converted bags) are written by process 0 while the others wait at a barrier.
"""

from __future__ import annotations

import argparse
import signal

import jax
import numpy as np

from src import config
from src.config import PretrainConfig
from src.pretraining.loop import EXIT_STOPPED_EARLY, NonFiniteLossError, StopFlag, train


def main(argv: list[str] | None = None) -> int:
    """The CLI; exits 0 when the run is complete, EXIT_STOPPED_EARLY after a signal stopped it with a checkpoint."""
    # SIGTERM from the start: one during start-up (data synthesis, compiling) is kept, not fatal; Ctrl-C still
    # aborts the start-up and saves once training runs.
    flag = StopFlag().install((signal.SIGTERM,))
    parser = config.add_config_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    cfg = config.load_from_args(PretrainConfig, args)
    try:
        result = train(cfg, stop_flag=flag)
    except NonFiniteLossError as e:
        print(f"error: {e}")
        return 1
    if jax.process_index() == 0:
        first = [result.losses[k] for k in sorted(result.losses)[:5]]
        last = [result.losses[k] for k in sorted(result.losses)[-5:]]
        summary = f"{result.stopped_by} at step {result.step} in {result.wall_s:.1f} s"
        if first:
            summary += f"; loss {np.mean(first):.4f} (first steps) -> {np.mean(last):.4f} (last steps)"
        print(f"{summary}; run dir {result.run_dir}")
    if result.stopped_by not in ("completed", "stop_after") and result.step < cfg.training.steps:
        return EXIT_STOPPED_EARLY
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
