"""Baseline controllers: a pure-pursuit driver that follows a track's centreline.

One implementation for both simulators: pass NumPy arrays for the PyBullet env, or JAX arrays (traced under
jit/vmap) for the JAX env; the array module is picked from the pose's type.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

WHEELBASE = 0.3302  # m, lf + lr of the F1TENTH car
MAX_STEER = 0.42  # rad, full steering action
MAX_SPEED = 5.0  # m/s, full motor action


def pure_pursuit(
    pose_xyyaw,
    speed,
    centreline,
    *,
    lookahead: float = 0.8,
    lookahead_gain: float = 0.25,
    target_speed: float = 3.0,
    max_lateral_accel: float = 4.0,
    wheelbase: float = WHEELBASE,
    max_steer: float = MAX_STEER,
    max_speed: float = MAX_SPEED,
):
    """Action [motor, steering] in [-1, 1] that steers towards the centreline point `lookahead +
    lookahead_gain * speed` metres ahead (along the loop) of the nearest one.

    pose_xyyaw: [3] (x, y, yaw); speed: forward speed (m/s); centreline: [N, 2] closed loop, roughly evenly
    spaced (a `Track.centreline`). The motor action asks for `target_speed`, reduced where the path ahead
    curves so that the lateral acceleration stays under `max_lateral_accel`.
    """
    xp = jnp if isinstance(pose_xyyaw, jax.Array) or isinstance(centreline, jax.Array) else np
    pose = xp.asarray(pose_xyyaw)
    c = xp.asarray(centreline, dtype=pose.dtype)
    n = c.shape[0]
    seg = xp.sqrt(((xp.roll(c, -1, axis=0) - c) ** 2).sum(-1))
    spacing = seg.mean()
    i = xp.argmin(((c - pose[:2]) ** 2).sum(-1))
    ld = lookahead + lookahead_gain * xp.abs(speed)
    j = (i + xp.ceil(ld / spacing).astype(i.dtype)) % n
    dx, dy = c[j, 0] - pose[0], c[j, 1] - pose[1]
    cy, sy = xp.cos(pose[2]), xp.sin(pose[2])
    local_x = cy * dx + sy * dy
    local_y = -sy * dx + cy * dy
    dist2 = xp.maximum(local_x**2 + local_y**2, 1e-6)
    curvature = 2.0 * local_y / dist2
    steer = xp.arctan(wheelbase * curvature)
    v = xp.minimum(target_speed, xp.sqrt(max_lateral_accel / xp.maximum(xp.abs(curvature), 1e-3)))
    return xp.stack([xp.clip(v / max_speed, -1.0, 1.0), xp.clip(steer / max_steer, -1.0, 1.0)])
