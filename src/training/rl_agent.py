"""PPO runs: `python -m src.training.rl_agent --config configs/rl_racecar.toml [--eval] [--no-resume]`.

A run lives in `runs/<name>/` (Contract 3): the resolved `config.toml`, Orbax checkpoints in `ckpt/` (the whole
engine carry, so a resumed JAX-engine run continues exactly; host-engine runs restart their episodes),
`metrics.jsonl` + TensorBoard events (episodic return, lap progress, laps, collision rate, env steps/s, losses,
approximate KL, clip fraction, entropy), periodic deterministic evaluations, `learning_curve.png` and, for the
Raceformer agent, `encoder.json` (the imported encoder's path and sha256: resuming on another encoder is an error).
`--eval` restores the latest checkpoint, drives `eval.episodes` deterministic episodes (from
`eval.start_positions` starts spread around the track), prints the mean and spread of return, lap time and
clean laps, and writes `eval.gif` of the lap from the start line (top-down: walls, the car's trail and pose).
"""

from __future__ import annotations

import argparse
import json
import sys

from src import config
from src.config import RLConfig
from src.rl import trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    config.add_config_args(parser)
    parser.add_argument(
        "--eval", action="store_true", help="evaluate the latest checkpoint instead of training"
    )
    parser.add_argument(
        "--step", type=int, default=None, help="with --eval: the checkpoint step (default latest)"
    )
    parser.add_argument(
        "--no-resume", action="store_true", help="start over (= --set run.resume=false): an existing run is moved aside"
    )
    args = parser.parse_args(argv)
    cfg = config.load_from_args(RLConfig, args)
    if args.eval:
        figures = trainer.evaluate_checkpoint(cfg, args.step)
        print(json.dumps(figures, indent=2))
        return 0
    result = trainer.train(cfg, resume=False if args.no_resume else None)
    returns = [h["episode/return"] for h in result.history if "episode/return" in h]
    evals = [h for h in result.history if "eval/return" in h]
    print(
        f"done: {len(result.history)} iterations in {result.wall_s:.0f} s; "
        f"last episodic return {returns[-1] if returns else float('nan'):.2f}; "
        f"last eval {({k[5:]: round(v, 3) for k, v in evals[-1].items() if k.startswith('eval/')}) if evals else '-'}; "
        f"run dir {result.run_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
