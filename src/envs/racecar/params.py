"""The pure-JAX racing env's parameters: the track as arrays (pytree leaves) and the static settings (car,
sensors, task), built by `make_params`, and the state of one car.

- The car is a kinematic bicycle at low speed blended into a dynamic single-track model with linear,
  friction-saturated tyres above `blend_speed` (F1TENTH parameters), integrated at `dt` = 0.01 s with
  `action_repeat` physics steps per control step (`dynamics`). The reported pose is the rear-axle centre (the
  PyBullet env's chassis frame); the lidar and camera sit `lidar_offset` / `camera_offset` metres ahead of it.
- Walls: the track's two wall loops (a map's traced from its image, a procedural track's offset from its
  centreline); `make_params` validates the track first (`check_track`) and raises naming the problem.
- Grids (`tracks.raster`): a signed distance field of the walls (exact point-to-segment distances within 1 m
  of a wall on a `grid_resolution` grid, from a Euclidean distance transform) for collisions, and the lap
  fraction of the nearest centreline point for progress.
- Ray casting (`raycast`) sweeps (ray, wall) pairs in chunks of `ray_depth` x rays, a size `make_params`
  estimates from the track (`_ray_depth`); the size only trades speed, never correctness.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from src.envs import surfaces
from src.envs.tracks.geometry import Track, point_segment_distance
from src.envs.tracks.raster import DEFAULT_RESOLUTION, rasterize
from src.envs.tracks.registry import get_track
from src.envs.tracks.validation import check_track


@struct.dataclass
class EnvParams:
    """Track arrays (pytree leaves) and static settings (part of the jit cache key)."""

    # --- track, built by `make_params` (leaves)
    walls: jax.Array  # [M, 4] wall segments (x0, y0, x1, y1), oriented with the track on their left
    wall_next: jax.Array  # [M] int32 index of the segment that starts where this one ends
    wall_side: jax.Array  # [M] int32: 0 = left wall, 1 = right wall (camera colour)
    dist: jax.Array  # [H, W] signed distance (m) from each cell centre to the nearest wall (+ = on track)
    dist_corners: jax.Array  # [H * W, 4] dist at (r, c), (r, c+1), (r+1, c), (r+1, c+1)
    progress_grid: jax.Array  # [H, W] lap fraction of the nearest centreline point
    grid_origin: jax.Array  # [2] world (x, y) of the corner of cell [0, 0]; row = y, column = x
    centreline: jax.Array  # [N, 2]
    tangent_yaw: jax.Array  # [N] driving direction at each centreline point
    start: jax.Array  # [3] (x, y, yaw) of the rear axle at reset (mode "grid")
    # --- static settings
    track_name: str = struct.field(pytree_node=False, default="default")
    track_length: float = struct.field(pytree_node=False, default=1.0)
    grid_resolution: float = struct.field(pytree_node=False, default=DEFAULT_RESOLUTION)
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
    # (ray, wall) pairs swept per chunk, per lidar ray / camera column; 0 = estimated from the track
    ray_depth: float = struct.field(pytree_node=False, default=0.0)
    camera_ray_depth: float = struct.field(pytree_node=False, default=0.0)
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
    # ground surfaces (src/envs/surfaces.py): grip, rolling resistance, camera floor, ground image; None = off
    terrain: surfaces.TerrainParams | None = None

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
    origin: jax.Array  # [2] (x, y) of the pose point (rear axle) at reset: GPS positions are relative to it


def _corners(grid: np.ndarray) -> np.ndarray:
    """[H * W, 4] values of each cell and its right, lower and lower-right neighbours (edge-padded)."""
    g = np.pad(grid, ((0, 1), (0, 1)), mode="edge")
    return np.stack([g[:-1, :-1], g[:-1, 1:], g[1:, :-1], g[1:, 1:]], -1).reshape(-1, 4)


def _ray_depth(
    walls: np.ndarray, track: Track, max_range: float, windows: tuple[float, ...], max_poses: int = 512
) -> list[float]:
    """Pairs per ray to sweep in one chunk of `cast_rays`, for fans `windows` rad wide: 1.1 x the largest mean
    number of sensor-facing in-range segments over any such fan, seen from poses across the track (centreline
    and +-60 % of the half-widths; at most `max_poses` of them, evenly spread). `walls` are oriented (track on
    the left). Poses that see more take a second chunk."""
    t = np.roll(track.centreline, -1, 0) - np.roll(track.centreline, 1, 0)
    n = np.stack([-t[:, 1], t[:, 0]], 1) / np.linalg.norm(t, axis=1, keepdims=True)
    origins = np.concatenate(
        [
            track.centreline + f * n * np.where(f > 0, track.width_left, track.width_right)[:, None]
            for f in (-0.6, 0.0, 0.6)
        ]
    )
    origins = origins[:: max(3, int(np.ceil(len(origins) / max_poses)))]
    a = walls[None, :, :2] - origins[:, None]
    b = walls[None, :, 2:] - origins[:, None]
    cross = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    rows, cols = np.nonzero(cross > 0)
    near = point_segment_distance(origins[rows], walls[cols]) < max_range
    rows, cols = rows[near], cols[near]
    a, b, cross = a[rows, cols], b[rows, cols], cross[rows, cols]
    bins = 1440
    x = np.mod(np.arctan2(a[:, 1], a[:, 0]), 2 * np.pi) * (bins / (2 * np.pi))
    start = np.ceil(x).astype(int)  # rays of a `bins`-ray circle inside each span, as `cast_rays` counts them
    stop = np.floor(x + np.arctan2(cross, (a * b).sum(-1)) * (bins / (2 * np.pi))).astype(int) + 1
    width = 2 * bins + 2
    size = len(origins) * width
    spans = np.bincount(rows * width + start, minlength=size) - np.bincount(
        rows * width + stop, minlength=size
    )
    depth = np.cumsum(spans.reshape(len(origins), width), 1)
    depth = depth[:, :bins] + depth[:, bins : 2 * bins]  # fold the wrap-around
    out = []
    for window in windows:
        w = max(int(round(window / (2 * np.pi) * bins)), 1)
        sums = np.cumsum(np.concatenate([depth, depth[:, :w]], 1), 1)
        out.append(float(1.1 * ((sums[:, w:] - sums[:, :-w]) / w).max()))
    return out


def make_params(
    track: Track | str = "default",
    *,
    grid_resolution: float = DEFAULT_RESOLUTION,
    terrain: surfaces.SurfaceConfig | None = None,
    **settings: Any,
) -> EnvParams:
    """EnvParams for `track` (a `Track`, bundled name or map path); `settings` override static fields.

    The track is validated first (`check_track`: a clear error naming the track and the problem, e.g. offset
    walls that fold over at a hairpin tighter than the track's half-width). Walls are the track's two wall
    loops (a map's traced from its image, otherwise offset from the centreline), as segments oriented with
    the track on their left, which the polar-sweep `cast_rays` relies on. `terrain` lays surfaces on the
    track (`surfaces.build`: a map's layer PNG or the seed); None leaves them off."""
    source = None if isinstance(track, Track) else track
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
    check_track(track)
    grid = rasterize(track, float(grid_resolution))
    walls, dist, progress_grid, lo, res = grid.walls, grid.dist, grid.progress, grid.origin, grid.res
    c = track.centreline
    t = np.roll(c, -1, 0) - np.roll(c, 1, 0)
    x0, y0, yaw0 = track.start_pose()
    get = {f.name: f.default for f in dataclasses.fields(EnvParams)} | settings
    fans = {"ray_depth": get["lidar_fov"], "camera_ray_depth": np.deg2rad(get["camera_fov"])}
    unset = [key for key in fans if not get[key]]  # the camera's too: `camera()` works without `camera=True`
    if unset:
        depths = _ray_depth(walls, track, get["lidar_range"], tuple(fans[k] for k in unset))
        settings.update(zip(unset, depths))

    f32 = jnp.float32
    params = EnvParams(
        walls=jnp.asarray(walls, f32),
        wall_next=jnp.asarray(grid.wall_next, jnp.int32),
        wall_side=jnp.asarray(grid.wall_side, jnp.int32),
        dist=jnp.asarray(dist, f32),
        dist_corners=jnp.asarray(_corners(dist), f32),
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
    if terrain is None:
        return params
    return params.replace(
        terrain=surfaces.build(terrain, float(track.length), dist, progress_grid, lo, res, source)
    )
