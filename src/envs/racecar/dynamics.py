"""The car's motion: the blended kinematic / dynamic single-track model, wall collisions, grid lookups.

- Collisions: three discs along the car's axis against the signed distance field of the walls (bilinear
  lookup, negative off the track). A physics step that would put a disc into a wall is undone and the car
  stopped (it can reverse out).
- Surfaces (`EnvParams.terrain`): the surface under each axle scales the tyres' friction and adds rolling
  resistance (`src.envs.surfaces`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from src.envs import surfaces
from src.envs.racecar.params import EnvParams, EnvState


def _cell(params: EnvParams, xy: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Continuous (col, row) coordinates of points [..., 2] in cell units, relative to cell centres."""
    g = (xy - params.grid_origin) / params.grid_resolution - 0.5
    return g[..., 0], g[..., 1]


def distance(params: EnvParams, xy: jax.Array) -> jax.Array:
    """Bilinear signed distance-to-wall (m, negative off the track) at points [..., 2]; clamped at the border."""
    h, w = params.dist.shape
    gx, gy = _cell(params, xy)
    gx = jnp.clip(gx, 0.0, w - 1.001)
    gy = jnp.clip(gy, 0.0, h - 1.001)
    x0 = jnp.floor(gx)
    y0 = jnp.floor(gy)
    fx, fy = gx - x0, gy - y0
    c = params.dist_corners[y0.astype(jnp.int32) * w + x0.astype(jnp.int32)]  # one gather of 4 values
    d00, d01, d10, d11 = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
    return (d00 * (1 - fx) + d01 * fx) * (1 - fy) + (d10 * (1 - fx) + d11 * fx) * fy


def nearest_cell_value(params: EnvParams, grid: jax.Array, xy: jax.Array) -> jax.Array:
    """The value of `grid` (on the env grid, e.g. `progress_grid`) in the cell nearest to each point [..., 2]."""
    h, w = grid.shape
    gx, gy = _cell(params, xy)
    col = jnp.clip(jnp.round(gx), 0, w - 1).astype(jnp.int32)
    row = jnp.clip(jnp.round(gy), 0, h - 1).astype(jnp.int32)
    return grid.reshape(-1)[row * w + col]


def rear_axle(params: EnvParams, state: EnvState) -> jax.Array:
    """World (x, y) of the rear-axle centre, the pose the env reports; the state holds the centre of gravity."""
    return jnp.stack([state.x - params.lr * jnp.cos(state.yaw), state.y - params.lr * jnp.sin(state.yaw)])


def _collides(params: EnvParams, x, y, yaw) -> jax.Array:
    """Any body disc (centres `body_discs` m ahead of the rear axle) overlapping a wall."""
    off = jnp.asarray(params.body_discs) - params.lr
    pts = jnp.stack([x + off * jnp.cos(yaw), y + off * jnp.sin(yaw)], -1)
    return jnp.any(distance(params, pts) < params.body_radius)  # signed: off-track counts as a hit


def physics_step(params: EnvParams, s: EnvState, motor: jax.Array, steering: jax.Array):
    """One `dt` step of the blended kinematic / dynamic single-track model; returns (state, collided)."""
    dt, p = params.dt, params
    wheelbase = p.lf + p.lr
    target = jnp.clip(steering * p.max_steer, -p.max_steer, p.max_steer)
    steer = s.steer + jnp.clip(target - s.steer, -p.max_steer_rate * dt, p.max_steer_rate * dt)
    accel = jnp.clip(p.speed_gain * (motor * p.max_speed - s.vx), -p.max_accel, p.max_accel)
    mu_f = mu_r = p.mu
    if p.terrain is not None:  # the surface under each axle: tyre friction and rolling resistance
        axis = jnp.stack([jnp.cos(s.yaw), jnp.sin(s.yaw)])
        cg = jnp.stack([s.x, s.y])
        grip_f, grip_r, rolling = surfaces.axle_forces(p.terrain, cg + p.lf * axis, cg - p.lr * axis)
        mu_f, mu_r = p.mu * grip_f, p.mu * grip_r
        limit = jnp.minimum(p.max_accel, 0.5 * (mu_f + mu_r) * surfaces.G)  # the friction circle's length
        accel = jnp.clip(p.speed_gain * (motor * p.max_speed - s.vx), -limit, limit)
        accel = accel - rolling * surfaces.G * jnp.clip(s.vx / 0.05, -1.0, 1.0)  # against the motion

    # kinematic bicycle (velocity state at the CG)
    vx_k = s.vx + accel * dt
    tan_d = jnp.tan(steer)
    omega_k = vx_k * tan_d / wheelbase
    vy_k = omega_k * p.lr
    # dynamic single track, linear tyres saturated at mu * Fz
    fz_f, fz_r = p.mass * surfaces.G * p.lr / wheelbase, p.mass * surfaces.G * p.lf / wheelbase
    vx_safe = jnp.maximum(s.vx, 0.1)
    alpha_f = steer - jnp.arctan2(s.vy + p.lf * s.omega, vx_safe)
    alpha_r = -jnp.arctan2(s.vy - p.lr * s.omega, vx_safe)
    fy_f = jnp.clip(mu_f * p.cornering_stiffness * fz_f * alpha_f, -mu_f * fz_f, mu_f * fz_f)
    fy_r = jnp.clip(mu_r * p.cornering_stiffness * fz_r * alpha_r, -mu_r * fz_r, mu_r * fz_r)
    vx_d = s.vx + (accel + s.omega * s.vy - fy_f * jnp.sin(steer) / p.mass) * dt
    vy_d = s.vy + ((fy_r + fy_f * jnp.cos(steer)) / p.mass - s.omega * s.vx) * dt
    omega_d = s.omega + (p.lf * fy_f * jnp.cos(steer) - p.lr * fy_r) / p.iz * dt

    lo, hi = p.blend_speed
    w = jnp.clip((s.vx - lo) / (hi - lo), 0.0, 1.0)
    vx = w * vx_d + (1 - w) * vx_k
    vy = w * vy_d + (1 - w) * vy_k
    omega = w * omega_d + (1 - w) * omega_k
    c, sn = jnp.cos(s.yaw), jnp.sin(s.yaw)
    x = s.x + (vx * c - vy * sn) * dt
    y = s.y + (vx * sn + vy * c) * dt
    yaw = jnp.arctan2(jnp.sin(s.yaw + omega * dt), jnp.cos(s.yaw + omega * dt))
    hit = _collides(params, x, y, yaw)
    zero = jnp.zeros_like(vx)
    new = s.replace(
        x=jnp.where(hit, s.x, x),
        y=jnp.where(hit, s.y, y),
        yaw=jnp.where(hit, s.yaw, yaw),
        vx=jnp.where(hit, zero, vx),
        vy=jnp.where(hit, zero, vy),
        omega=jnp.where(hit, zero, omega),
        steer=steer,
    )
    return new, hit
