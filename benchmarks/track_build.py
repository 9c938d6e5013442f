"""Build time of a race track: loading a map (walls traced from the image, the loop's centreline) and
`make_params` (validation, the signed distance and progress grids, the ray-depth estimate).

Prints figures, asserts nothing. Each figure is the median of `--repeats` runs in this process, after a
warm-up run (JAX's backend start and first imports are not counted): wall-clock seconds and this process's
CPU seconds (the work itself, whatever else the machine runs; the build is single-threaded NumPy/SciPy).
    uv run python benchmarks/track_build.py [--map tests/fixtures/tracks/Spielberg/Spielberg.yaml] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np

from src.envs.racecar.params import make_params
from src.envs.tracks.maps import load_map
from src.envs.tracks.registry import get_track

DEFAULT_MAP = (
    Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tracks" / "Spielberg" / "Spielberg.yaml"
)


def median_seconds(fn, repeats: int) -> tuple[str, object]:
    """'wall s (cpu s)' medians of `repeats` calls of fn after a warm-up call, and fn's result."""
    out = fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return f"{np.median(wall):6.2f} s wall ({np.median(cpu):5.2f} s CPU)", out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--map", default=str(DEFAULT_MAP), help="map YAML (a CSV next to it gives the centreline)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_s, track = median_seconds(lambda: get_track(args.map), args.repeats)
    build_s, params = median_seconds(lambda: jax.block_until_ready(make_params(track)), args.repeats)
    extract_s, extracted = median_seconds(lambda: load_map(args.map), args.repeats)
    h, w = params.dist.shape
    print(f"map {Path(args.map).name}: {track.length:.1f} m, {len(params.walls)} wall segments, grid {h}x{w}")
    print(f"  load (walls traced from the image, centreline from the CSV)   {load_s}")
    print(f"  make_params (validate, distance/progress grids, ray depth)    {build_s}")
    print(f"  load without the CSV (centreline extracted: {extracted.length:.1f} m)   {extract_s}")


if __name__ == "__main__":
    main()
