"""Frames/s of the episode pipeline (PNG decode, normalisation, stacking, masks) with 0 and 2 Grain workers.

    uv run python benchmarks/episodes_pipeline.py [--root DIR] [--batches 40 --batch-size 32 --size 64]

Without --root it writes a throw-away set of noise-textured episodes (3 cameras, 10 % dropped frames) in a temp
directory, so it needs neither the simulator nor a recorded set. Prints one line per worker count.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def write_noise_set(root: Path, episodes: int, frames: int, size: int, seed: int = 0) -> None:
    from src.data.episodes import writer
    from src.envs import recorder

    rng = np.random.default_rng(seed)
    cams = recorder.DEFAULT_CAMERAS
    for e in range(episodes):
        header = {"episode_id": f"bench_{e:03d}", "source": "benchmark", "cameras": list(cams)}
        images = {c: rng.integers(0, 256, (frames, size, size, 3), np.uint8) for c in cams}
        keep = {c: rng.random(frames) >= 0.1 for c in cams}
        ego = {"pose": rng.normal(size=(frames, 3)), "velocity": rng.normal(size=(frames, 3))}
        writer.write_episode(
            root / f"ep{e:03d}", header, images, keep, ego, np.arange(frames) * 0.05, np.zeros((frames, 2))
        )


def measure(root: Path, workers: int, batches: int, batch_size: int, size: int) -> float:
    from src.config import ModalityConfig
    from src.data import loader
    from src.data.episodes import sources
    from src.envs import recorder

    eps, _ = sources.load_episodes(root)
    modalities = {
        "rgb": ModalityConfig((size, size, 3)),
        "gps": ModalityConfig((5,)),
        "imu": ModalityConfig((6,)),
    }
    source = sources.EpisodeFrameSource(eps, recorder.DEFAULT_CAMERAS, modalities)
    it = iter(loader.to_iter(sources.build_dataset(source, batch_size, seed=0), num_workers=workers))
    next(it)  # worker start-up and the first batch are not counted
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    elapsed = time.perf_counter() - start
    assert batch["images_by_cam"]["front"].shape == (batch_size, size, size, 3)
    return batches * batch_size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="", help="an existing episode set (default: write a temporary one)")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp)
        if not args.root:
            write_noise_set(root, episodes=8, frames=64, size=args.size)
        for workers in (0, 2):
            fps = measure(root, workers, args.batches, args.batch_size, args.size)
            print(
                f"episodes pipeline, {workers} worker(s): {fps:8.1f} frames/s "
                f"({fps * 3:8.1f} camera images/s, batch {args.batch_size}, {args.size}x{args.size})"
            )


if __name__ == "__main__":
    import absl.flags

    absl.flags.FLAGS.mark_as_parsed()  # Grain's spawned workers read absl flags
    main()
