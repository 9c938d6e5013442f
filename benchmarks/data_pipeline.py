"""CMHT data-pipeline speed: BEV projection, then end-to-end Grain samples/s with a per-stage breakdown.

    uv run python benchmarks/data_pipeline.py [--root DIR] [--frames 96 --batch-size 16 --batches 20]

1. BEV: a 120,000-point cloud -> 256x256x4 with `bev.lidar_bev` (median of many runs), against a
   straightforward per-point Python loop timed on a subset and scaled to the full cloud (targets: <= 2 ms, >= 30x).
2. Pipeline: without --root a synthetic sequence (1280x720 JPEG camera, 640x512 IR, 120k-point LiDAR, radar) is
   written to a temp dir; samples/s with 0 and 2 Grain workers at 224x224 rgb/ir and 256x256 BEV, and the mean
   time of each stage measured one sample at a time in this process (target: >= 100 samples/s with 2 workers).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from src.data.bev import lidar_bev, radar_bev

N_POINTS = 120_000
SHAPES = {
    "lidar": (256, 256, 4),
    "rgb": (224, 224, 3),
    "ir": (224, 224, 1),
    "radar": (256, 256, 3),
    "gps": (5,),
    "imu": (6,),
}


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def ring_cloud(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """A Velodyne-like cloud: 32 rings hitting the ground (dense near the car) plus walls and cars."""
    elevation = np.deg2rad(rng.integers(-30, 10, n) * 1.0)
    azimuth = rng.uniform(-np.pi, np.pi, n)
    rng_m = np.where(elevation < 0, 1.8 / np.tan(-np.minimum(elevation, -0.02)), rng.uniform(5, 80, n))
    rng_m = np.minimum(rng_m, rng.uniform(3, 90, n))
    x, y = rng_m * np.cos(azimuth), rng_m * np.sin(azimuth)
    z = -1.8 + np.maximum(rng_m * np.tan(elevation) + 1.8, 0)
    cols = {"x": x, "y": y, "z": z, "intensity": rng.uniform(0, 255, n)}
    return {k: v.astype(np.float32) for k, v in cols.items()}


def loop_bev(points: dict[str, np.ndarray], grid, n: int) -> np.ndarray:
    """The reference: one Python iteration per point (what the vectorised projection replaces)."""
    h, w = grid.height, grid.width
    dx, dy = grid.cell_size
    x1, y1, (z0, z1) = grid.x_range[1], grid.y_range[1], grid.z_range
    count, isum, top = np.zeros((h, w)), np.zeros((h, w)), np.zeros((h, w))
    for k in range(n):
        x, y, z, i = (float(points[f][k]) for f in ("x", "y", "z", "intensity"))
        if not (z0 <= z < z1):
            continue
        r, c = math.floor((x1 - x) / dx), math.floor((y1 - y) / dy)
        if 0 <= r < h and 0 <= c < w:
            count[r, c] += 1
            isum[r, c] += i
            top[r, c] = max(top[r, c], (z - z0) / (z1 - z0))
    occ = count > 0
    mean = np.divide(isum, count * grid.intensity_max, out=np.zeros_like(isum), where=occ)
    return np.stack([occ, top, mean, np.minimum(np.log1p(count) / math.log(64), 1)], axis=-1)


def bench_bev() -> None:
    from src import contract
    from src.config import BevConfig
    from src.data import bev

    points = ring_cloud(np.random.default_rng(0), N_POINTS)
    grid = contract.bev_grid(BevConfig(), (256, 256, 4))
    ms = _median_ms(lambda: bev.lidar_bev(points, grid), 200)
    subset = 20_000
    start = time.perf_counter()
    loop_bev(points, grid, subset)
    loop_ms = (time.perf_counter() - start) * 1e3 * N_POINTS / subset
    sub = {k: v[:subset] for k, v in points.items()}
    assert np.allclose(loop_bev(sub, grid, subset), bev.lidar_bev(sub, grid), atol=1e-5)
    print(f"BEV {N_POINTS} points -> 256x256x4: median {ms:.2f} ms (target <= 2 ms)")
    print(
        f"  per-point Python loop: {loop_ms:.0f} ms (timed on {subset} points, scaled x{N_POINTS / subset:.0f}); "
        f"speed-up {loop_ms / ms:.0f}x (target >= 30x)"
    )


def stage_breakdown(source, samples: int) -> dict[str, float]:
    """Mean ms per sample of each stage, one sample at a time in this process."""
    from src.data import images, pcd

    dec = source.decoder
    totals: dict[str, float] = {}

    def timed(name: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        totals[name] = totals.get(name, 0.0) + (time.perf_counter() - start) * 1e3
        return out

    for i in range(samples):
        files = source.records[i].files
        if "lidar" in files:
            pts = timed("lidar read (PCD)", pcd.read_pcd, files["lidar"])
            timed("lidar BEV", lidar_bev, pts, dec.grids["lidar"])
        if "radar" in files:
            pts = timed("radar read (PCD)", pcd.read_pcd, files["radar"])
            timed("radar BEV", radar_bev, pts, dec.grids["radar"])
        if "rgb" in files:
            img = timed(
                "rgb decode (JPEG draft) + resize", images.decode_image, files["rgb"], (224, 224), "RGB"
            )
            timed("rgb normalise", images.normalize_image, img)
        if "ir" in files:
            img = timed("ir decode + resize", images.decode_image, files["ir"], (224, 224), "F")
            timed("ir normalise", images.normalize_minmax, img)
    import grain

    batch = [source[i % len(source)] for i in range(16)]
    start = time.perf_counter()
    grain.MapDataset.source(batch).batch(16)[0]
    totals["batch (stack 16 samples, per sample)"] = (time.perf_counter() - start) * 1e3 / 16 * samples
    return {k: v / samples for k, v in totals.items()}


def bench_pipeline(root: Path | None, frames: int, batch_size: int, batches: int) -> None:
    from src.config import DataConfig, ModalityConfig, ModelConfig
    from src.data import synthetic
    from src.data.cmht import dataset

    with tempfile.TemporaryDirectory() as tmp:
        if root is None:
            root = Path(tmp) / "cmht"
            synthetic.write_cmht_sequence(root, frames=frames, seed=0, points=N_POINTS)
        data_cfg = DataConfig(root=str(root))
        model_cfg = dataclasses.replace(
            ModelConfig(), modalities={k: ModalityConfig(v) for k, v in SHAPES.items()}
        )
        source = dataset.build_cmht_source(data_cfg, model_cfg)
        print(
            f"pipeline on {root if root.name != 'cmht' else 'a synthetic sequence'}: {len(source)} samples, "
            f"valid after sync {source.valid_counts()}"
        )
        for name, ms in stage_breakdown(source, min(16, len(source))).items():
            print(f"  {name:40s} {ms:7.2f} ms/sample")
        for workers in (0, 2):
            it = dataset.build_pipeline(
                source,
                batch_size=batch_size,
                seed=0,
                num_workers=workers,
                prefetch=2,
                shard_index=0,
                shard_count=1,
            )
            next(it)  # start-up (worker spawn) and the first batch are not counted
            start = time.perf_counter()
            for _ in range(batches):
                next(it)
            rate = batches * batch_size / (time.perf_counter() - start)
            print(
                f"  end-to-end, {workers} worker(s): {rate:7.1f} samples/s (batch {batch_size}; target >= 100 "
                f"with 2 workers)"
            )
            if hasattr(it, "close"):
                it.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", default="", help="an existing CMHT root (default: a temporary synthetic one)"
    )
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    print("(figures are indicative: 2 shared CPU cores)")
    bench_bev()
    bench_pipeline(Path(args.root) if args.root else None, args.frames, args.batch_size, args.batches)


if __name__ == "__main__":
    import absl.flags

    absl.flags.FLAGS.mark_as_parsed()  # Grain's spawned workers read absl flags
    main()
