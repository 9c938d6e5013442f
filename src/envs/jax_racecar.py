"""Pure-JAX racing env with racecar_gym's observations, actions, reward and info (docs/RACECAR_GYM.md).

Functional API, jit/vmap/scan-able:
    params = make_params("default", lidar_rays=1080, camera=True, ...)
    obs, state = reset(key, params)
    obs, state, reward, terminated, truncated, info = step(key, state, action, params)
`action` is [motor, steering] in [-1, 1] (racecar_gym's Dict action flattened in that order).

Design choices (why):
- The car is a kinematic bicycle at low speed blended into a dynamic single-track model with linear,
  friction-saturated tyres above `blend_speed` (F1TENTH parameters), integrated at `dt` = 0.01 s with
  `action_repeat` physics steps per control step. The reported pose is the rear-axle centre (the PyBullet
  env's chassis frame); the lidar and camera sit `lidar_offset` / `camera_offset` metres ahead of it.
- Lidar and camera rays are sphere-traced through a precomputed distance field of the walls (exact
  point-to-segment distances sampled on a `grid_resolution` grid, bilinear lookup), then refined by an exact
  ray/segment intersection with the wall segments nearest to where the march stopped (+- 2 neighbours), so
  converged rays are exact to float precision without testing every wall. The field is signed (negative off
  the track), steps are over-relaxed and at least `march_min_step`, and rays that stop at a silhouette are
  marched again: on the bundled tracks ~0.005-0.03 % of rays (grazing ones) end short of the exact range.
- Collisions: three discs along the car's axis against the same distance field. A physics step that would put
  a disc into a wall is undone and the car stopped (it can reverse out), and `wall_collision` is set.
- Progress: a grid of nearest-centreline arc fraction; progress is unwrapped step to step (a jump over 0.5
  crosses the start line), so a lap only counts when the whole loop is driven in the right direction;
  reversing subtracts. `checkpoint` is the index of the lap section (of `n_checkpoints`) the car is in.
- Invalid actions: inside jit a NaN/inf action component is replaced by 0 and info["invalid_action"] is True;
  `check_action` is the host-side check that raises (`RacecarEnv.step` calls it).
- Auto-reset (`auto_reset=True`): when an episode ends, the returned obs/state are those of a fresh episode
  (reset with the step's key); `info` still describes the step that ended the old one (its progress, lap,
  `episode_return`, `episode_length`) and, when `final_obs=True`, info["final_obs"] holds its last obs
  (off by default: it doubles the sensor cost of every step under vmap).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from matplotlib.path import Path as MplPath
from scipy import ndimage

from src.envs.tracks import Track, get_track

Obs = dict[str, jax.Array]


@struct.dataclass
class EnvParams:
    """Track arrays (pytree leaves) and static settings (part of the jit cache key)."""

    # --- track, built by `make_params` (leaves)
    walls: jax.Array  # [M, 4] wall segments (x0, y0, x1, y1)
    wall_prev: jax.Array  # [M] int32 index of the previous segment of the same polyline
    wall_next: jax.Array  # [M] int32
    wall_side: jax.Array  # [M] int32: 0 = left wall, 1 = right wall (camera colour)
    dist: jax.Array  # [H, W] signed distance (m) from each cell centre to the nearest wall (+ = on track)
    dist_corners: jax.Array  # [H * W, 4] dist at (r, c), (r, c+1), (r+1, c), (r+1, c+1)
    dist_seg: jax.Array  # [H, W] int32 index of that wall segment
    progress_grid: jax.Array  # [H, W] lap fraction of the nearest centreline point
    grid_origin: jax.Array  # [2] world (x, y) of the corner of cell [0, 0]; row = y, column = x
    centreline: jax.Array  # [N, 2]
    tangent_yaw: jax.Array  # [N] driving direction at each centreline point
    start: jax.Array  # [3] (x, y, yaw) of the rear axle at reset (mode "grid")
    # --- static settings
    track_name: str = struct.field(pytree_node=False, default="default")
    track_length: float = struct.field(pytree_node=False, default=1.0)
    grid_resolution: float = struct.field(pytree_node=False, default=0.05)
    dt: float = struct.field(pytree_node=False, default=0.01)
    action_repeat: int = struct.field(pytree_node=False, default=4)
    # vehicle (F1TENTH / racecar_gym's vehicle file)
    mass: float = struct.field(pytree_node=False, default=3.47)
    lf: float = struct.field(pytree_node=False, default=0.15875)
    lr: float = struct.field(pytree_node=False, default=0.17145)
    iz: float = struct.field(pytree_node=False, default=0.04712)
    cornering_stiffness: float = struct.field(pytree_node=False, default=4.718)  # per rad, times mu * Fz
    mu: float = struct.field(pytree_node=False, default=1.0489)
    max_steer: float = struct.field(pytree_node=False, default=0.42)
    max_steer_rate: float = struct.field(pytree_node=False, default=3.2)
    max_speed: float = struct.field(pytree_node=False, default=5.0)
    max_accel: float = struct.field(pytree_node=False, default=7.5)
    speed_gain: float = struct.field(pytree_node=False, default=8.0)  # 1/s, motor target-speed tracking
    blend_speed: tuple[float, float] = struct.field(pytree_node=False, default=(0.5, 1.5))
    body_discs: tuple[float, ...] = struct.field(
        pytree_node=False, default=(0.0, 0.16, 0.32)
    )  # ahead of rear axle
    body_radius: float = struct.field(pytree_node=False, default=0.15)
    # sensors
    lidar_rays: int = struct.field(pytree_node=False, default=1080)
    lidar_range: float = struct.field(pytree_node=False, default=15.0)
    lidar_min_range: float = struct.field(pytree_node=False, default=0.25)
    lidar_fov: float = struct.field(pytree_node=False, default=4.71)
    lidar_accuracy: float = struct.field(pytree_node=False, default=0.03)  # range * U(1 - a, 1 + a)
    lidar_offset: float = struct.field(pytree_node=False, default=0.265)
    march_steps: int = struct.field(pytree_node=False, default=32)
    march_relax: float = struct.field(pytree_node=False, default=1.6)  # over-relaxation of the early steps
    march_min_step: float = struct.field(pytree_node=False, default=0.07)  # m
    pose_noise: float = struct.field(pytree_node=False, default=0.01)
    camera: bool = struct.field(pytree_node=False, default=False)
    camera_height: int = struct.field(pytree_node=False, default=64)
    camera_width: int = struct.field(pytree_node=False, default=64)
    camera_fov: float = struct.field(pytree_node=False, default=90.0)  # deg, horizontal
    camera_offset: float = struct.field(pytree_node=False, default=0.39)
    camera_z: float = struct.field(pytree_node=False, default=0.15)
    wall_height: float = struct.field(pytree_node=False, default=0.5)
    # task (racecar_gym maximize_progress)
    laps: int = struct.field(pytree_node=False, default=1)
    time_limit: float = struct.field(pytree_node=False, default=120.0)
    progress_reward: float = struct.field(pytree_node=False, default=100.0)
    signed_progress: bool = struct.field(pytree_node=False, default=False)  # racecar_gym rewards |d progress|
    collision_reward: float = struct.field(pytree_node=False, default=0.0)
    frame_reward: float = struct.field(pytree_node=False, default=0.0)
    terminate_on_collision: bool = struct.field(pytree_node=False, default=False)
    n_checkpoints: int = struct.field(pytree_node=False, default=10)
    reset_mode: str = struct.field(pytree_node=False, default="grid")  # "grid" (start line) | "random"
    auto_reset: bool = struct.field(pytree_node=False, default=False)
    final_obs: bool = struct.field(pytree_node=False, default=False)

    @property
    def control_dt(self) -> float:
        return self.dt * self.action_repeat


@struct.dataclass
class EnvState:
    """One car. (x, y, yaw) is the centre of gravity; velocities are in the body frame."""

    x: jax.Array
    y: jax.Array
    yaw: jax.Array
    vx: jax.Array
    vy: jax.Array
    omega: jax.Array
    steer: jax.Array
    prev_velocity: jax.Array  # [6]
    time: jax.Array
    steps: jax.Array
    lap_progress: jax.Array  # [0, 1)
    total_progress: jax.Array  # unwrapped laps (+ fraction), from the start line
    episode_return: jax.Array


# ------------------------------------------------------------------------------------------ building


def _segment_distance(px: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Distance from points [..., 2] to segments [..., 4] (broadcast)."""
    a, b = seg[..., :2], seg[..., 2:]
    e = b - a
    u = np.clip(((px - a) * e).sum(-1) / np.maximum((e * e).sum(-1), 1e-12), 0.0, 1.0)
    return np.linalg.norm(px - (a + u[..., None] * e), axis=-1)


def _nearest_index_grid(points: np.ndarray, origin: np.ndarray, res: float, shape) -> np.ndarray:
    """For every grid cell, the index (into `points`) of a nearby rasterised point (EDT nearest marked cell)."""
    ij = np.floor((points - origin) / res).astype(np.int64)
    ij = np.clip(ij, 0, np.array(shape[::-1]) - 1)
    owner = np.full(shape, -1, np.int64)
    owner[ij[:, 1], ij[:, 0]] = np.arange(len(points))
    _, idx = ndimage.distance_transform_edt(owner < 0, return_indices=True)
    return owner[idx[0], idx[1]]


def _corners(grid: np.ndarray) -> np.ndarray:
    """[H * W, 4] values of each cell and its right, lower and lower-right neighbours (edge-padded)."""
    g = np.pad(grid, ((0, 1), (0, 1)), mode="edge")
    return np.stack([g[:-1, :-1], g[:-1, 1:], g[1:, :-1], g[1:, 1:]], -1).reshape(-1, 4)


def make_params(
    track: Track | str = "default", *, grid_resolution: float = 0.05, **settings: Any
) -> EnvParams:
    """EnvParams for `track` (a `Track`, bundled name or map path); `settings` override static fields."""
    if not isinstance(track, Track):
        track = get_track(track)
    static = {f.name for f in dataclasses.fields(EnvParams) if not f.metadata.get("pytree_node", True)}
    unknown = sorted(set(settings) - static)
    if unknown:
        raise TypeError(
            f"make_params: unknown setting(s) {unknown}; valid: {sorted(static - {'track_name'})}"
        )
    if settings.get("reset_mode", "grid") not in ("grid", "random"):
        raise ValueError(f"make_params: reset_mode {settings['reset_mode']!r} is not 'grid' or 'random'")
    walls = track.walls().astype(np.float64)
    m = len(walls)
    n_left = len(track.centreline)
    idx = np.arange(m)
    base = np.where(idx < n_left, 0, n_left)
    size = np.where(idx < n_left, n_left, m - n_left)
    wall_prev = base + (idx - base - 1) % size
    wall_next = base + (idx - base + 1) % size

    res = float(grid_resolution)
    lo, hi = track.bounds(margin=1.0)
    shape = tuple(int(v) for v in np.ceil((hi - lo) / res)[::-1])  # (H rows = y, W cols = x)
    cy, cx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    centres = lo + (np.stack([cx, cy], -1) + 0.5) * res
    # Wall samples every res/2 with their segment id; the nearest sample's segment and its neighbours give
    # the exact distance at each cell centre.
    lengths = np.linalg.norm(walls[:, 2:] - walls[:, :2], axis=1)
    k = np.maximum(np.ceil(lengths / (res / 2)).astype(int), 1)
    seg_id = np.repeat(idx, k)
    frac = np.concatenate([np.arange(n) / n for n in k])
    samples = walls[seg_id, :2] + frac[:, None] * (walls[seg_id, 2:] - walls[seg_id, :2])
    near = seg_id[_nearest_index_grid(samples, lo, res, shape)]
    cands = np.stack(
        [wall_prev[wall_prev[near]], wall_prev[near], near, wall_next[near], wall_next[wall_next[near]]], -1
    )
    d = _segment_distance(centres[..., None, :], walls[cands])
    best = np.argmin(d, axis=-1)
    dist = np.take_along_axis(d, best[..., None], -1)[..., 0]
    dist_seg = np.take_along_axis(cands, best[..., None], -1)[..., 0]
    left, right = track.boundaries()
    flat = centres.reshape(-1, 2)
    inside = MplPath(left).contains_points(flat) ^ MplPath(right).contains_points(flat)
    dist = np.where(inside.reshape(shape), dist, -dist)  # signed: rays marching past a wall come back
    # Progress: dense centreline samples carrying their lap fraction.
    c = track.centreline
    closed = np.concatenate([c, c[:1]])
    s_dense = np.arange(0.0, track.length, res / 4)
    s_pts = np.concatenate([track.arc_length, [track.length]])
    dense = np.stack([np.interp(s_dense, s_pts, closed[:, 0]), np.interp(s_dense, s_pts, closed[:, 1])], 1)
    progress_grid = (s_dense / track.length)[_nearest_index_grid(dense, lo, res, shape)]
    t = np.roll(c, -1, 0) - np.roll(c, 1, 0)
    x0, y0, yaw0 = track.start_pose()

    f32 = jnp.float32
    return EnvParams(
        walls=jnp.asarray(walls, f32),
        wall_prev=jnp.asarray(wall_prev, jnp.int32),
        wall_next=jnp.asarray(wall_next, jnp.int32),
        wall_side=jnp.asarray(idx >= n_left, jnp.int32),
        dist=jnp.asarray(dist, f32),
        dist_corners=jnp.asarray(_corners(dist), f32),
        dist_seg=jnp.asarray(dist_seg, jnp.int32),
        progress_grid=jnp.asarray(progress_grid, f32),
        grid_origin=jnp.asarray(lo, f32),
        centreline=jnp.asarray(c, f32),
        tangent_yaw=jnp.asarray(np.arctan2(t[:, 1], t[:, 0]), f32),
        start=jnp.asarray([x0, y0, yaw0], f32),
        track_name=track.name,
        track_length=float(track.length),
        grid_resolution=res,
        **settings,
    )


# ------------------------------------------------------------------------------------------ geometry


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


def _nearest_cell_value(params: EnvParams, grid: jax.Array, xy: jax.Array) -> jax.Array:
    h, w = grid.shape
    gx, gy = _cell(params, xy)
    col = jnp.clip(jnp.round(gx), 0, w - 1).astype(jnp.int32)
    row = jnp.clip(jnp.round(gy), 0, h - 1).astype(jnp.int32)
    return grid.reshape(-1)[row * w + col]


def _ray_segment(origin: jax.Array, direction: jax.Array, seg: jax.Array) -> jax.Array:
    """Distance along rays [..., 2] to segments [..., 4]; inf where the ray misses."""
    a, e = seg[..., :2], seg[..., 2:] - seg[..., :2]
    ao = a - origin
    denom = direction[..., 0] * e[..., 1] - direction[..., 1] * e[..., 0]
    safe = jnp.where(jnp.abs(denom) > 1e-9, denom, 1.0)
    t = (ao[..., 0] * e[..., 1] - ao[..., 1] * e[..., 0]) / safe
    u = (ao[..., 0] * direction[..., 1] - ao[..., 1] * direction[..., 0]) / safe
    ok = (jnp.abs(denom) > 1e-9) & (u >= -1e-4) & (u <= 1 + 1e-4) & (t > 0)
    return jnp.where(ok, t, jnp.inf)


def cast_rays(
    params: EnvParams, origin: jax.Array, angles: jax.Array, max_range: float
) -> tuple[jax.Array, jax.Array]:
    """Distance (capped at `max_range`) and hit wall segment (-1 = none) of rays from `origin` [2] at world
    `angles` [R]: sphere tracing through the signed distance field + exact refinement on the segments nearest
    to where the march stopped. A ray that stopped at a silhouette (grazing a convex wall without hitting it)
    is marched again from just past that point (`march_steps // 2` more steps)."""
    direction = jnp.stack([jnp.cos(angles), jnp.sin(angles)], -1)
    cap = max_range + 1.0

    def march(t, steps):
        def body(i, t):
            # Over-relaxed steps first (the signed field pulls an overshoot back), plain ones to settle.
            # A minimum forward step carries rays past silhouettes (where d -> 0 without a hit); a ray that
            # overshoots into a wall sees a negative distance and steps back.
            w = jnp.where(i < steps - 6, params.march_relax, 1.0)
            d = distance(params, origin + t[:, None] * direction)
            step = jnp.where(d > 0, jnp.maximum(w * d, params.march_min_step), d)
            return jnp.clip(t + step, 0.0, cap)

        return jax.lax.fori_loop(0, steps, body, t)

    def refine(t):
        seg = _nearest_cell_value(params, params.dist_seg, origin + t[:, None] * direction)
        prev, nxt = params.wall_prev[seg], params.wall_next[seg]
        cands = jnp.stack([params.wall_prev[prev], prev, seg, nxt, params.wall_next[nxt]], -1)
        hits = _ray_segment(origin[None, None], direction[:, None], params.walls[cands])
        k = jnp.argmin(hits, -1)
        t_hit = jnp.take_along_axis(hits, k[:, None], -1)[:, 0]
        exact = jnp.isfinite(t_hit) & (t_hit >= t - 0.1) & (t_hit <= t + 0.5)
        return exact, t_hit, jnp.take_along_axis(cands, k[:, None], -1)[:, 0]

    t = march(jnp.zeros_like(angles), params.march_steps)
    exact, t_hit, hit_seg = refine(t)
    retry = ~exact & (t < max_range)
    t2 = march(jnp.where(retry, t + 4 * params.grid_resolution, cap), params.march_steps // 2)
    exact2, t_hit2, hit_seg2 = refine(t2)
    r = jnp.where(exact, t_hit, jnp.where(retry & exact2, t_hit2, jnp.where(retry, t2, t)))
    seg = jnp.where(exact, hit_seg, jnp.where(retry & exact2, hit_seg2, -1))
    missed = r >= max_range
    return jnp.minimum(r, max_range), jnp.where(missed, -1, seg)


def lidar_angles(params: EnvParams) -> jax.Array:
    """Beam angles relative to the heading, evenly spaced from -fov/2 to +fov/2 inclusive."""
    return jnp.linspace(-params.lidar_fov / 2, params.lidar_fov / 2, params.lidar_rays)


# ------------------------------------------------------------------------------------------ dynamics


def _rear_axle(params: EnvParams, state: EnvState) -> jax.Array:
    return jnp.stack([state.x - params.lr * jnp.cos(state.yaw), state.y - params.lr * jnp.sin(state.yaw)])


def _collides(params: EnvParams, x, y, yaw) -> jax.Array:
    """Any body disc (centres `body_discs` m ahead of the rear axle) overlapping a wall."""
    off = jnp.asarray(params.body_discs) - params.lr
    pts = jnp.stack([x + off * jnp.cos(yaw), y + off * jnp.sin(yaw)], -1)
    return jnp.any(distance(params, pts) < params.body_radius)  # signed: off-track counts as a hit


def _physics_step(params: EnvParams, s: EnvState, motor: jax.Array, steering: jax.Array):
    """One `dt` step of the blended kinematic / dynamic single-track model; returns (state, collided)."""
    dt, p = params.dt, params
    wheelbase = p.lf + p.lr
    target = jnp.clip(steering * p.max_steer, -p.max_steer, p.max_steer)
    steer = s.steer + jnp.clip(target - s.steer, -p.max_steer_rate * dt, p.max_steer_rate * dt)
    accel = jnp.clip(p.speed_gain * (motor * p.max_speed - s.vx), -p.max_accel, p.max_accel)

    # kinematic bicycle (velocity state at the CG)
    vx_k = s.vx + accel * dt
    tan_d = jnp.tan(steer)
    omega_k = vx_k * tan_d / wheelbase
    vy_k = omega_k * p.lr
    # dynamic single track, linear tyres saturated at mu * Fz
    g = 9.81
    fz_f, fz_r = p.mass * g * p.lr / wheelbase, p.mass * g * p.lf / wheelbase
    vx_safe = jnp.maximum(s.vx, 0.1)
    alpha_f = steer - jnp.arctan2(s.vy + p.lf * s.omega, vx_safe)
    alpha_r = -jnp.arctan2(s.vy - p.lr * s.omega, vx_safe)
    fy_f = jnp.clip(p.mu * p.cornering_stiffness * fz_f * alpha_f, -p.mu * fz_f, p.mu * fz_f)
    fy_r = jnp.clip(p.mu * p.cornering_stiffness * fz_r * alpha_r, -p.mu * fz_r, p.mu * fz_r)
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


# ------------------------------------------------------------------------------------------ sensors


def _velocity(state: EnvState) -> jax.Array:
    z = jnp.zeros_like(state.vx)
    return jnp.stack([state.vx, state.vy, z, z, z, state.omega])


def _pose(params: EnvParams, state: EnvState) -> jax.Array:
    rear = _rear_axle(params, state)
    z = jnp.zeros_like(state.x)
    return jnp.stack([rear[0], rear[1], z, z, z, state.yaw])


def _sensor_origin(params: EnvParams, state: EnvState, offset: float) -> jax.Array:
    rear = _rear_axle(params, state)
    return rear + offset * jnp.stack([jnp.cos(state.yaw), jnp.sin(state.yaw)])


def lidar(params: EnvParams, state: EnvState, key: jax.Array | None = None) -> jax.Array:
    """Ranges [lidar_rays] in [lidar_min_range, lidar_range]; multiplicative noise when `key` is given."""
    origin = _sensor_origin(params, state, params.lidar_offset)
    r, _ = cast_rays(params, origin, state.yaw + lidar_angles(params), params.lidar_range)
    if key is not None and params.lidar_accuracy > 0:
        a = params.lidar_accuracy
        r = r * jax.random.uniform(key, r.shape, minval=1 - a, maxval=1 + a)
    return jnp.clip(r, params.lidar_min_range, params.lidar_range)


SKY = (135.0, 190.0, 235.0)
FLOOR = (95.0, 95.0, 100.0)
WALL_COLOURS = ((210.0, 60.0, 50.0), (225.0, 225.0, 225.0))  # left wall, right wall


def camera(params: EnvParams, state: EnvState) -> jax.Array:
    """Forward camera [H, W, 3] uint8: one ray per column; the wall spans the rows between the projections of
    its bottom and top edge at the hit depth; colours dim with distance."""
    h, w = params.camera_height, params.camera_width
    focal = (w / 2) / np.tan(np.deg2rad(params.camera_fov) / 2)
    col = (np.arange(w) + 0.5 - w / 2) / focal  # tan of the column angle (right is negative yaw)
    origin = _sensor_origin(params, state, params.camera_offset)
    r, seg = cast_rays(params, origin, state.yaw - jnp.arctan(jnp.asarray(col)), params.lidar_range)
    depth = r * np.cos(np.arctan(col))  # distance along the optical axis
    elev = (h / 2 - (np.arange(h) + 0.5)) / focal  # tan of each row's elevation
    height = params.camera_z + elev[:, None] * depth[None, :]  # where each pixel's ray meets the wall plane
    is_wall = (seg[None, :] >= 0) & (height >= 0) & (height <= params.wall_height)
    side = params.wall_side[jnp.maximum(seg, 0)]
    wall_rgb = jnp.where(side[:, None] == 0, jnp.asarray(WALL_COLOURS[0]), jnp.asarray(WALL_COLOURS[1]))
    wall_rgb = wall_rgb / (1.0 + 0.15 * depth[:, None])
    floor_dist = params.camera_z / np.maximum(-elev, 1e-3)
    floor_rgb = np.asarray(FLOOR)[None] / (1.0 + 0.15 * floor_dist[:, None])  # [H, 3]
    background = np.where((elev >= 0)[:, None], np.asarray(SKY)[None], floor_rgb)  # [H, 3]
    img = jnp.where(is_wall[..., None], wall_rgb[None], jnp.asarray(background, jnp.float32)[:, None])
    return jnp.clip(jnp.round(img), 0, 255).astype(jnp.uint8)


def observe(params: EnvParams, state: EnvState, accel: jax.Array, key: jax.Array) -> Obs:
    k_pose, k_lidar = jax.random.split(key)
    pose = _pose(params, state)
    if params.pose_noise > 0:
        pose = pose + params.pose_noise * jax.random.normal(k_pose, (6,))
    obs = {
        "pose": pose,
        "velocity": _velocity(state),
        "acceleration": accel,
        "lidar": lidar(params, state, k_lidar),
    }
    if params.camera:
        obs["rgb_camera"] = camera(params, state)
    obs["time"] = state.time[None]
    return obs


# ------------------------------------------------------------------------------------------ env API


def _progress(params: EnvParams, state: EnvState) -> jax.Array:
    return _nearest_cell_value(params, params.progress_grid, _rear_axle(params, state))


def _initial_state(key: jax.Array, params: EnvParams) -> EnvState:
    if params.reset_mode == "random":
        i = jax.random.randint(key, (), 0, params.centreline.shape[0])
        xr, yr, yaw = params.centreline[i, 0], params.centreline[i, 1], params.tangent_yaw[i]
    else:
        xr, yr, yaw = params.start[0], params.start[1], params.start[2]
    f = jnp.float32
    zero = jnp.zeros((), f)
    state = EnvState(
        x=xr + params.lr * jnp.cos(yaw),
        y=yr + params.lr * jnp.sin(yaw),
        yaw=yaw,
        vx=zero,
        vy=zero,
        omega=zero,
        steer=zero,
        prev_velocity=jnp.zeros(6, f),
        time=zero,
        steps=jnp.zeros((), jnp.int32),
        lap_progress=zero,
        total_progress=zero,
        episode_return=zero,
    )
    p = _progress(params, state)
    return state.replace(lap_progress=p, total_progress=jnp.where(p < 0.5, p, p - 1.0))


def reset(key: jax.Array, params: EnvParams) -> tuple[Obs, EnvState]:
    k_state, k_obs = jax.random.split(key)
    state = _initial_state(k_state, params)
    return observe(params, state, jnp.zeros(6, jnp.float32), k_obs), state


def step(
    key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams
) -> tuple[Obs, EnvState, jax.Array, jax.Array, jax.Array, dict[str, Any]]:
    """One control step (`action_repeat` physics steps). action = [motor, steering]."""
    action = jnp.asarray(action, jnp.float32).reshape(2)
    finite = jnp.isfinite(action)
    action = jnp.where(finite, jnp.clip(action, -1.0, 1.0), 0.0)

    def sub(carry, _):
        s, hit = carry
        s, h = _physics_step(params, s, action[0], action[1])
        return (s, hit | h), None

    (new, collided), _ = jax.lax.scan(sub, (state, jnp.zeros((), bool)), None, length=params.action_repeat)
    vel = _velocity(new)
    accel = (vel - state.prev_velocity) / params.control_dt
    p = _progress(params, new)
    delta = p - state.lap_progress
    delta = jnp.where(delta > 0.5, delta - 1.0, jnp.where(delta < -0.5, delta + 1.0, delta))
    total = state.total_progress + delta
    progress_term = delta if params.signed_progress else jnp.abs(delta)
    reward = params.frame_reward + params.progress_reward * progress_term
    reward = reward + jnp.where(collided, params.collision_reward, 0.0)
    new = new.replace(
        prev_velocity=vel,
        time=state.time + params.control_dt,
        steps=state.steps + 1,
        lap_progress=p,
        total_progress=total,
        episode_return=state.episode_return + reward,
    )
    terminated = total >= params.laps
    if params.terminate_on_collision:
        terminated = terminated | collided
    truncated = (new.time >= params.time_limit - 1e-6) & ~terminated
    frac = total - jnp.floor(total)
    info = {
        "wall_collision": collided,
        "progress": frac,
        "total_progress": total,
        "lap": jnp.floor(jnp.maximum(total, 0.0)).astype(jnp.int32) + 1,
        "checkpoint": jnp.minimum((frac * params.n_checkpoints).astype(jnp.int32), params.n_checkpoints - 1),
        "wrong_way": delta * params.track_length < -1e-3,
        "time": new.time,
        "invalid_action": ~jnp.all(finite),
        "pose": _pose(params, new),
        "velocity": vel,
        "acceleration": accel,
        "episode_return": new.episode_return,
        "episode_length": new.steps,
    }
    k_obs, k_reset = jax.random.split(key)
    if not params.auto_reset:
        return observe(params, new, accel, k_obs), new, reward, terminated, truncated, info
    done = terminated | truncated
    fresh = _initial_state(k_reset, params)
    nxt = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, new)
    obs = observe(params, nxt, jnp.where(done, jnp.zeros_like(accel), accel), k_obs)
    if params.final_obs:
        info["final_obs"] = observe(params, new, accel, k_obs)
    return obs, nxt, reward, terminated, truncated, info


def check_action(action: Any) -> np.ndarray:
    """Host-side action check: an array [2] (or [B, 2]) of finite numbers, else ValueError."""
    a = np.asarray(action, np.float32)
    if a.shape[-1:] != (2,):
        raise ValueError(f"action: expected [..., 2] = [motor, steering], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"action contains NaN or inf: {a}")
    return a


class RacecarEnv:
    """Host-side convenience: `make_params` + jitted, vmapped reset/step over `num_envs` cars, with the
    host-side action check (NaN/inf actions raise here instead of being zeroed)."""

    def __init__(self, track: Track | str = "default", num_envs: int = 1, **settings: Any):
        self.params = make_params(track, **settings)
        self.num_envs = num_envs
        self._reset = jax.jit(jax.vmap(reset, in_axes=(0, None)))
        self._step = jax.jit(jax.vmap(step, in_axes=(0, 0, 0, None)))

    def reset(self, key: jax.Array) -> tuple[Obs, EnvState]:
        return self._reset(jax.random.split(key, self.num_envs), self.params)

    def step(self, key: jax.Array, state: EnvState, action: Any):
        a = check_action(action).reshape(self.num_envs, 2)
        return self._step(jax.random.split(key, self.num_envs), state, jnp.asarray(a), self.params)
