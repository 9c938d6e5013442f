"""Terrain preference learning speed: patch extraction throughput and train steps/s for both objectives.

    uv run python benchmarks/terrain.py [--frames 600] [--steps 30]

Extraction runs on a recorded top-down episode (the synthetic stripe drive written and read back in the on-disk
format): once with the reference pipeline's geometry (600 x 300 px frames at 150 px/m, 60 x 60 px patches, 6 m and
90 deg limits) and once with the topdown demo config's (64 x 32 px at 20 px/m, 12 px patches, 2 m). Then an
episode recorded from the JAX racing env with surfaces (`configs/terrain_sim.toml`'s geometry: 140 x 80 px RGB
ground images at 40 px/m, 12 px patches, 2.5 m): recording speed (frames/s, compile excluded) and extraction.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from src import config
from src.terrain import sim, sources, store, training
from src.terrain.config import TerrainConfig
from src.terrain.extract import Extraction, GroundGeometry, ScanConfig, Trajectory, extract_patches
from src.terrain.synthetic import stripe_drive


def timed_extraction(
    traj: Trajectory, geom: GroundGeometry, scan: ScanConfig, frames: int
) -> tuple[Extraction, str]:
    """One timed `extract_patches` run: its patches and "N patches from F frames in T s = R patches/s"."""
    t = time.perf_counter()
    ex = extract_patches(traj, geom, scan)
    dt = time.perf_counter() - t
    return ex, f"{len(ex.frame)} patches from {frames} frames in {dt:.2f} s = {len(ex.frame) / dt:,.0f} patches/s"


def extraction(frames: int, image_hw: tuple[int, int], px_per_m: float, scan: ScanConfig, tmp: Path) -> None:
    traj, geom = stripe_drive(frames, image_hw=image_hw, px_per_m=px_per_m, speed=1.0, dt=0.1)
    folder = sources.write_topdown_episode(tmp / f"ep_{image_hw[0]}", traj, geom)
    traj, geom = sources.read_topdown_episode(folder)
    extract_patches(traj, geom, scan)  # warm caches
    ex, timing = timed_extraction(traj, geom, scan, frames)
    print(
        f"extract {image_hw[0]}x{image_hw[1]} px frames at {px_per_m:g} px/m, {scan.patch_px} px patches, "
        f"{scan.max_path_m:g} m: {timing} ({ex.dropped} sampled and dropped as not fully in view)"
    )


def sim_extraction(frames: int, tmp: Path) -> None:
    cfg = sim.SimRecordConfig(tracks=("default", "default"), steps=2 * frames, record_every=2)
    t = time.perf_counter()
    sim.record(cfg, tmp / "sim", 0.3)
    rec = time.perf_counter() - t
    params = sim.env_params(cfg, 0)
    paths = sim.offset_paths(params, cfg, 4, np.random.default_rng(0))
    t = time.perf_counter()
    sim.drive(params, cfg, paths, jax.random.key(0))  # compiled by `record`
    drive = time.perf_counter() - t
    traj, geom = sources.read_topdown_episode(tmp / "sim" / "ep0")
    _, timing = timed_extraction(traj, geom, ScanConfig(patch_px=12, max_path_m=2.5), frames)
    print(
        f"sim: {frames / drive:,.0f} frames/s driven and rendered (140x80x3 ground image every 2 control steps); "
        f"recording 2 episodes of {frames} frames took {rec:.1f} s (compile and PNG writing included); "
        f"extract 12 px patches: {timing}"
    )


def train_steps(objective: str, steps: int, tmp: Path) -> None:
    cfg = config.replace(
        TerrainConfig(),
        run={"name": objective, "out_dir": str(tmp / "runs")},
        source={"root": str(tmp / "data"), "synthetic_frames": 200},
        scan={"patch_px": 12, "max_path_m": 2.0},
        represent={"objective": objective, "steps": steps + 5, "batch": 32, "checkpoint_every": 10_000},
    )
    ps = store.extract(cfg)
    model = training.make_encoder(cfg, ps.patches.shape[-1])
    optimizer = training.encoder_optimizer(cfg, model)
    rc = cfg.represent
    step = training.representation_step(rc.objective, rc.margin, rc.vicreg_sim, rc.vicreg_std, rc.vicreg_cov)
    ds = training.represent_source(ps, cfg)
    for s in range(5):  # compile + warm up
        float(step(model, optimizer, ds[s]))
    batches = [ds[s] for s in range(5, 5 + steps)]
    t = time.perf_counter()
    for b in batches:
        loss = step(model, optimizer, b)
    float(loss)
    dt = time.perf_counter() - t
    t = time.perf_counter()
    for s in range(5, 5 + steps):
        ds[s]
    load = time.perf_counter() - t
    print(
        f"{objective}: {steps / dt:.1f} train steps/s at batch 32 (12x12x1 patches, encoder only); "
        f"batch assembly from the Grain source {steps / load:.0f} batches/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        extraction(args.frames, (600, 300), 150.0, ScanConfig(), tmp)  # the reference's geometry: 4 m x 2 m view
        extraction(args.frames, (64, 32), 20.0, ScanConfig(patch_px=12, max_path_m=2.0), tmp)
        sim_extraction(args.frames, tmp)
        for objective in ("triplet", "vicreg"):
            train_steps(objective, args.steps, tmp)


if __name__ == "__main__":
    main()
