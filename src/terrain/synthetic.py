"""A painted ground for tests, the demo and the benchmark: stripes of distinct textures across a straight drive.

The world's ground is a function of (x, y): stripe k covers x in [k * stripe_m, (k + 1) * stripe_m) and carries
texture k % len(TEXTURES). A robot drives along +x; each frame's top-down image is the ground rendered around its
pose (robot at bottom centre, heading up), so the category under a patch is known from where it lies.
"""

from __future__ import annotations

import numpy as np

from src.terrain.extract import GroundGeometry, Trajectory

TEXTURES = ("smooth", "ridged", "checker")


def ground_texture(x: np.ndarray, y: np.ndarray, stripe_m: float, noise: np.ndarray) -> np.ndarray:
    """uint8 ground value at world points (x, y); `noise` (same shape) adds per-pixel grain."""
    kind = np.floor(x / stripe_m).astype(np.int64) % len(TEXTURES)
    smooth = 70.0 + 0.0 * x
    ridged = 128.0 + 90.0 * np.sin(2 * np.pi * x / 0.25)
    checker = np.where((np.floor(x / 0.1) + np.floor(y / 0.1)) % 2 == 0, 30.0, 230.0)
    value = np.choose(kind, [smooth, ridged, checker]) + noise
    return np.clip(np.rint(value), 0, 255).astype(np.uint8)


def stripe_drive(
    frames: int,
    *,
    speed: float = 1.0,
    dt: float = 0.1,
    stripe_m: float = 4.0,
    image_hw: tuple[int, int] = (64, 32),
    px_per_m: float = 20.0,
    noise_std: float = 6.0,
    seed: int = 0,
) -> tuple[Trajectory, GroundGeometry]:
    """A straight drive along +x at `speed`, rendered as top-down frames with the robot at bottom centre."""
    h, w = image_hw
    geom = GroundGeometry(px_per_m, h - 0.5, (w - 1) / 2.0)
    rng = np.random.default_rng(seed)
    t = np.arange(frames) * dt
    poses = np.stack([speed * t, np.zeros(frames), np.zeros(frames)], axis=-1)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    fwd, left = (geom.robot_row - rows) / px_per_m, (geom.robot_col - cols) / px_per_m
    x = poses[:, 0, None, None] + fwd[None]
    y = poses[:, 1, None, None] + left[None]
    images = ground_texture(x, y, stripe_m, rng.normal(0, noise_std, x.shape))[..., None]
    valid = np.ones(images.shape[:3], np.bool_)
    return Trajectory(images, valid, poses, t, np.ones(frames, np.bool_)), geom
