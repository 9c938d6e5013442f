"""Record multi-camera driving episodes from the JAX simulator (the recorder is `src.envs.recorder`).

    python -m src.training.record_episodes --episodes N --out DIR [--frames F --seed S --size 64 ...]
        [--checkpoint runs/<ppo run>]

An entry point because `--checkpoint` drives with a trained PPO policy, whose loading (model, checkpoint) sits
above the simulator layer: `load_driver` is the loader this command hands to the recorder.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from src.data.episodes.schema import validate_dir
from src.envs import recorder
from src.rl import envs as rl_envs
from src.rl import trainer


def load_driver(run_dir: str) -> recorder.Driver:
    """A jax_racecar PPO run's deterministic policy (latest checkpoint), its env settings and its track."""
    policy, cfg = trainer.load_policy(run_dir)
    return recorder.Driver(policy, rl_envs.env_settings(cfg), cfg.env.track or "default")


def record_episodes(out: str | Path, spec: recorder.RecordSpec) -> list[Path]:
    """`recorder.record_episodes`, with `spec.checkpoint` (when set) loaded as a PPO run's policy."""
    return recorder.record_episodes(out, spec, load_driver)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.training.record_episodes", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--episodes", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--frames", type=int, default=recorder.RecordSpec.frames)
    parser.add_argument("--seed", type=int, default=recorder.RecordSpec.seed)
    parser.add_argument("--size", type=int, default=64, help="square image side in pixels")
    parser.add_argument(
        "--cameras",
        default=",".join(recorder.DEFAULT_CAMERAS),
        help=f"comma-separated, of {list(recorder.CAMERA_YAW_DEG)}",
    )
    parser.add_argument("--drop-prob", type=float, default=recorder.RecordSpec.drop_prob)
    parser.add_argument("--track", default=recorder.RecordSpec.track)
    parser.add_argument(
        "--frame-every", type=int, default=recorder.RecordSpec.frame_every, help="control steps per frame"
    )
    parser.add_argument(
        "--checkpoint", default="", help="drive with this jax_racecar PPO run's policy (runs/<name>)"
    )
    args = parser.parse_args(argv)
    spec = recorder.RecordSpec(
        episodes=args.episodes,
        frames=args.frames,
        size=(args.size, args.size),
        cameras=tuple(c.strip() for c in args.cameras.split(",") if c.strip()),
        drop_prob=args.drop_prob,
        seed=args.seed,
        track=args.track,
        frame_every=args.frame_every,
        checkpoint=args.checkpoint,
    )
    start = time.perf_counter()
    paths = record_episodes(args.out, spec)
    report = validate_dir(args.out)
    print(
        f"recorded {len(paths)} episode(s), {report.frames} frame(s) in {time.perf_counter() - start:.1f} s "
        f"under {args.out}; images per camera: {report.frames_by_camera}"
    )
    for p in report.problems:
        print(f"PROBLEM {p}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
