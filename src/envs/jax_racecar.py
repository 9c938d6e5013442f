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
- Lidar and camera rays are cast exactly, per car, by a polar sweep over the walls instead of testing every
  ray against every segment: a ray leaving the track first meets a wall from its track side, so only
  segments that face the sensor and come within range can be hit. Each such segment covers the contiguous
  run of rays between the angles of its two end points; those (ray, segment) pairs (1.1 per ray on average
  on the bundled tracks) are intersected exactly and each ray keeps its nearest hit (a scatter-min). Cost is
  O(walls + rays) per car and ranges equal a brute-force reference to float precision. Pairs are swept in
  chunks of `ray_depth` x rays, a size `make_params` estimates from the track; a pose that sees more pairs
  takes another chunk, so the size only trades speed, never correctness.
- Walls: the track's two wall loops (a map's traced from its image, a procedural track's offset from its
  centreline); `make_params` validates the track first (`check_track`) and raises naming the problem.
- Collisions: three discs along the car's axis against a signed distance field of the walls (exact
  point-to-segment distances within 1 m of a wall on a `grid_resolution` grid, from a Euclidean distance
  transform; bilinear lookup, negative off the track). A
  physics step that would put a disc into a wall is undone and the car stopped (it can reverse out), and
  `wall_collision` is set.
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
from scipy import ndimage

from src import contract
from src.envs import surfaces
from src.envs.tracks import Track, check_track, get_track, loop_segments, point_segment_distance

Obs = dict[str, jax.Array]


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


# ------------------------------------------------------------------------------------------ building


def _nearest_index_grid(points: np.ndarray, origin: np.ndarray, res: float, shape) -> np.ndarray:
    """For every grid cell, the index (into `points`) of a nearby rasterised point (EDT nearest marked cell)."""
    ij = np.floor((points - origin) / res).astype(np.int64)
    ij = np.clip(ij, 0, np.array(shape[::-1]) - 1)
    owner = np.full(shape, -1, np.int64)
    owner[ij[:, 1], ij[:, 0]] = np.arange(len(points))
    idx = ndimage.distance_transform_edt(owner < 0, return_distances=False, return_indices=True)
    return owner[idx[0], idx[1]]


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


def _inside_grid(walls: np.ndarray, origin: np.ndarray, res: float, shape) -> np.ndarray:
    """[H, W] whether each cell centre lies on the track: even-odd rule over all wall loops, by scanlines (each
    segment crossing a row of cell centres toggles the cells right of the crossing)."""
    y0, y1 = walls[:, 1], walls[:, 3]
    row_lo = np.ceil((np.minimum(y0, y1) - origin[1]) / res - 0.5).astype(np.int64)
    row_hi = np.ceil((np.maximum(y0, y1) - origin[1]) / res - 0.5).astype(np.int64)  # half-open [lo, hi)
    count = np.maximum(row_hi - row_lo, 0)
    seg = np.repeat(np.arange(len(walls)), count)
    row = row_lo[seg] + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    yc = origin[1] + (row + 0.5) * res
    x = walls[seg, 0] + (yc - y0[seg]) / (y1[seg] - y0[seg]) * (walls[seg, 2] - walls[seg, 0])
    col = np.clip(np.ceil((x - origin[0]) / res - 0.5).astype(np.int64), 0, shape[1])
    ok = (row >= 0) & (row < shape[0])
    width = shape[1] + 1
    toggles = np.bincount(row[ok] * width + col[ok], minlength=shape[0] * width).reshape(shape[0], width)
    return (np.cumsum(toggles, axis=1)[:, :-1] % 2).astype(bool)


def _distance_grid(walls, wall_next, wall_prev, origin, res, shape, band: float = 0.5) -> np.ndarray:
    """[H, W] signed distance (m, + on the track) from each cell centre to the nearest wall segment.

    A Euclidean distance transform gives each cell a nearby wall sample (samples every res / 2); within
    `band` m of a wall the distance is exact (from the sample's segment, walking along the loop while a
    nearby segment is nearer), beyond it the distance to that sample (within about a cell of exact).
    The sign is the even-odd rule on the loops."""
    lengths = np.linalg.norm(walls[:, 2:] - walls[:, :2], axis=1)
    k = np.maximum(np.ceil(lengths / (res / 2)).astype(int), 1)
    seg_id = np.repeat(np.arange(len(walls)), k)
    frac = np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)
    samples = walls[seg_id, :2] + (frac / k[seg_id])[:, None] * (walls[seg_id, 2:] - walls[seg_id, :2])
    nearest = _nearest_index_grid(samples, origin, res, shape)
    cx = (origin[0] + (np.arange(shape[1]) + 0.5) * res).astype(np.float32)
    cy = (origin[1] + (np.arange(shape[0]) + 0.5) * res).astype(np.float32)
    sample32 = samples.astype(np.float32)
    dist = np.hypot(cx[None, :] - sample32[nearest, 0], cy[:, None] - sample32[nearest, 1]).reshape(-1)
    near = np.flatnonzero(dist < band)
    rows, cols = np.divmod(near, shape[1])
    centres = np.stack([cx[cols], cy[rows]], 1).astype(np.float64)
    seg = seg_id[nearest.reshape(-1)[near]]
    best = point_segment_distance(centres, walls[seg])
    moving = np.arange(len(near))
    while len(moving):  # walk along the loop while one of the 2 segments either side is nearer (2: a vertex
        back, ahead = wall_prev[seg[moving]], wall_next[seg[moving]]  # is shared, so ties come in pairs)
        step = np.stack([wall_prev[back], back, ahead, wall_next[ahead]])
        d = np.stack([point_segment_distance(centres[moving], walls[i]) for i in step])
        k = np.argmin(d, 0)
        lane = np.arange(len(moving))
        better = d[k, lane] < best[moving]
        moving, k, lane = moving[better], k[better], lane[better]
        seg[moving] = step[k, lane]
        best[moving] = d[k, lane]
    dist[near] = best
    return np.where(_inside_grid(walls, origin, res, shape), dist.reshape(shape), -dist.reshape(shape))


def _oriented_walls(track: Track) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(walls [M, 4], wall_next, wall_prev, wall_side): the track's two wall loops as segments with the track
    on their left (the left wall runs against the driving direction), each followed by the segment that
    starts where it ends; side 0 = left wall, 1 = right wall."""
    left, right = track.boundaries()
    walls = np.concatenate([loop_segments(left[::-1]), loop_segments(right)])
    sizes = np.array([len(left), len(right)])
    base = np.repeat(np.cumsum(sizes) - sizes, sizes)
    size = np.repeat(sizes, sizes)
    idx = np.arange(len(walls)) - base
    return walls, base + (idx + 1) % size, base + (idx - 1) % size, np.repeat([0, 1], sizes)


def make_params(
    track: Track | str = "default",
    *,
    grid_resolution: float = 0.05,
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
    walls, wall_next, wall_prev, wall_side = _oriented_walls(track)

    res = float(grid_resolution)
    lo, hi = track.bounds(margin=1.0)
    shape = tuple(int(v) for v in np.ceil((hi - lo) / res)[::-1])  # (H rows = y, W cols = x)
    dist = _distance_grid(walls, wall_next, wall_prev, lo, res, shape)
    # Progress: dense centreline samples carrying their lap fraction.
    c = track.centreline
    closed = np.concatenate([c, c[:1]])
    s_dense = np.arange(0.0, track.length, res / 4)
    s_pts = np.concatenate([track.arc_length, [track.length]])
    dense = np.stack([np.interp(s_dense, s_pts, closed[:, 0]), np.interp(s_dense, s_pts, closed[:, 1])], 1)
    progress_grid = (s_dense / track.length)[_nearest_index_grid(dense, lo, res, shape)]
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
        wall_next=jnp.asarray(wall_next, jnp.int32),
        wall_side=jnp.asarray(wall_side, jnp.int32),
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


# Least-squares fit of atan(u) / u as a polynomial in u**2 on [0, tan(pi/8)] (error < 2e-8 rad).
_ATAN_COEFFS = (0.999999987, -0.333329072, 0.199781389, -0.138909254, 0.0811282565)


def _atan2(y: jax.Array, x: jax.Array) -> jax.Array:
    """atan2 in (-pi, pi] from a polynomial: XLA's CPU atan2 is not vectorised and costs ~16 ns a value."""
    ax, ay = jnp.abs(x), jnp.abs(y)
    steep = ay > ax
    a = jnp.where(steep, ax, ay) / jnp.maximum(jnp.where(steep, ay, ax), 1e-30)  # in [0, 1]
    high = a > np.tan(np.pi / 8)
    u = jnp.where(high, (a - 1) / (a + 1), a)  # atan(a) = pi/4 + atan(u) above tan(pi/8)
    z = u * u
    poly = _ATAN_COEFFS[-1]
    for c in _ATAN_COEFFS[-2::-1]:
        poly = poly * z + c
    r = jnp.where(high, np.pi / 4, 0.0) + u * poly
    r = jnp.where(steep, np.pi / 2 - r, r)
    r = jnp.where(x < 0, np.pi - r, r)
    return jnp.where(y < 0, -r, r)


def _prefix_sum(v: jax.Array, block: int = 32) -> jax.Array:
    """Inclusive prefix sum of a float vector of small integers (exact below 2**24) as two small triangular
    matmuls: XLA lowers `jnp.cumsum` to a reduce-window whose cost grows with the square of the length."""
    n = v.shape[0]
    k = -(-n // block)
    inner = jnp.pad(v, (0, k * block - n)).reshape(k, block) @ jnp.triu(jnp.ones((block, block), v.dtype))
    outer = inner[:, -1] @ jnp.triu(jnp.ones((k, k), v.dtype), 1)  # totals of the blocks before
    return (inner + outer[:, None]).reshape(-1)[:n]


@dataclasses.dataclass(frozen=True)
class Fan:
    """`n` rays from one origin, in increasing angle relative to the sensor heading, spread over `fov` rad:
    evenly in angle (`pinhole=False`, a lidar, first and last ray on the edges) or evenly in tan(angle) through
    pixel centres (`pinhole=True`, one ray per camera column, right to left)."""

    n: int
    fov: float
    pinhole: bool = False
    depth: float = 2.0  # (ray, wall) pairs per ray swept in one chunk (EnvParams.ray_depth)

    def angles(self) -> np.ndarray:
        if self.pinhole:
            return np.arctan((np.arange(self.n) + 0.5 - self.n / 2) / self.focal())
        return np.linspace(-self.fov / 2, self.fov / 2, self.n)

    def index(self, psi: jax.Array) -> jax.Array:
        """Continuous ray index of relative angles `psi` in (-pi, pi]; ray i sits at index i, and the result is
        clipped to [-1, n] (out of the fan)."""
        if self.pinhole:
            tan = jnp.tan(jnp.clip(psi, -1.5, 1.5))  # beyond +-86 deg is outside any pinhole fan
            x = tan * self.focal() + self.n / 2 - 0.5
            x = jnp.where(jnp.abs(psi) < 1.5, x, jnp.where(psi > 0, self.n, -1.0))
        else:
            x = (psi + self.fov / 2) * ((self.n - 1) / self.fov)
        return jnp.clip(x, -1.0, float(self.n))

    def focal(self) -> float:
        return (self.n / 2) / np.tan(self.fov / 2)  # in pixels, for a pinhole fan


def cast_rays(
    params: EnvParams,
    origin: jax.Array,
    heading: jax.Array,
    fan: Fan,
    max_range: float,
    segments: bool = True,
) -> tuple[jax.Array, jax.Array | None]:
    """Distance (capped at `max_range`) and, if `segments`, the hit wall segment (-1 = none) of the rays of
    `fan` from `origin` [2], the fan's centre pointing at world angle `heading`.

    Polar sweep: a ray from a point on the track leaves it through a segment that faces the point (the point
    is on the segment's left), so only facing segments within range are candidates. A facing segment covers
    the rays between the angles of its end points (counter-clockwise; a span over the +-pi cut is split in
    two). Those (ray, segment) pairs are intersected exactly, `fan.depth * n` at a time, and each ray keeps
    its nearest hit; a rare second chunk runs when a pose sees more pairs. End points shared by two segments
    map to one index, so no ray slips between them."""
    c, s = jnp.cos(heading), jnp.sin(heading)
    x0, y0, x1, y1 = params.walls.T
    ax, ay = x0 - origin[0], y0 - origin[1]
    ax, ay = c * ax + s * ay, c * ay - s * ax  # start point, sensor frame
    ex, ey = x1 - x0, y1 - y0
    ex, ey = c * ex + s * ey, c * ey - s * ex
    cross = ax * ey - ay * ex  # > 0: the origin is on the segment's (track) side
    closest = jnp.clip(-(ax * ex + ay * ey) / jnp.maximum(ex * ex + ey * ey, 1e-12), 0.0, 1.0)
    keep = (cross > 0) & ((ax + closest * ex) ** 2 + (ay + closest * ey) ** 2 < max_range**2)
    psi = _atan2(ay, ax)  # start point's angle relative to the heading
    x = fan.index(psi)
    x_end, psi_end = x[params.wall_next], psi[params.wall_next]
    wraps = psi - psi_end > np.pi  # the span crosses the +-pi cut
    n = fan.n
    lo = jnp.maximum(jnp.ceil(x), 0.0)
    hi = jnp.minimum(jnp.floor(x_end), n - 1.0)
    # rays of each span: [lo, hi], or [lo, n - 1] then [0, hi] for a span over the cut
    head = jnp.maximum(jnp.where(wraps, n - lo, hi - lo + 1), 0.0)
    count = jnp.where(keep, head + jnp.where(wraps, jnp.maximum(hi + 1, 0.0), 0.0), 0.0)
    ends = _prefix_sum(count)
    starts = ends - count
    # per wall: t = cross / (d x e); pair p of the wall's span is ray p + lo - start before p = start + head,
    # and ray p - start - head after it (all small integers, exact in float32)
    table = jnp.stack([ex, ey, cross, lo - starts, starts + head], 1)
    starts, total = starts.astype(jnp.int32), ends[-1].astype(jnp.int32)
    rays = fan.angles()
    directions = jnp.asarray(np.stack([np.cos(rays), np.sin(rays)], 1), jnp.float32)
    size = int(np.ceil(fan.depth * n)) + 32

    def chunk(carry):
        k, r, hit = carry
        base = k * size
        pair = base + jnp.arange(size)
        first = jnp.where(starts > base, starts - base, size)  # walls whose span starts in this chunk
        marks = jnp.zeros(size, jnp.float32).at[first].add(1.0, mode="drop")
        seg = (starts <= base).sum() - 1 + _prefix_sum(marks).astype(jnp.int32)
        row = table[seg]
        p = pair.astype(jnp.float32)
        ray = jnp.clip(jnp.where(p < row[:, 4], row[:, 3] + p, p - row[:, 4]).astype(jnp.int32), 0, n - 1)
        d = directions[ray]
        t = row[:, 2] / (d[:, 0] * row[:, 1] - d[:, 1] * row[:, 0])
        valid = pair < total
        target = jnp.where(valid, ray, n)
        t = jnp.where(valid & (t > 0), t, jnp.inf)
        new_r = r.at[target].min(t, mode="drop")
        if segments:
            hit = jnp.where(new_r < r, -1, hit)
            hit = hit.at[target].max(jnp.where(t == new_r[ray], seg, -1), mode="drop")
        return k + 1, new_r, hit

    _, r, hit = jax.lax.while_loop(
        lambda carry: carry[0] * size < total,
        chunk,
        (jnp.zeros((), jnp.int32), jnp.full(n, jnp.inf), jnp.full(n, -1, jnp.int32)),
    )
    missed = r >= max_range
    return jnp.where(missed, max_range, r), (jnp.where(missed, -1, hit) if segments else None)


def lidar_fan(params: EnvParams) -> Fan:
    """The lidar's beams: `lidar_rays` evenly spaced from -fov/2 to +fov/2 relative to the heading."""
    return Fan(params.lidar_rays, params.lidar_fov, depth=params.ray_depth)


def camera_fan(params: EnvParams) -> Fan:
    """One ray per camera column, right to left."""
    return Fan(
        params.camera_width, float(np.deg2rad(params.camera_fov)), pinhole=True, depth=params.camera_ray_depth
    )


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
    g = 9.81
    fz_f, fz_r = p.mass * g * p.lr / wheelbase, p.mass * g * p.lf / wheelbase
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
    r, _ = cast_rays(params, origin, state.yaw, lidar_fan(params), params.lidar_range, segments=False)
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
    h = params.camera_height
    fan = camera_fan(params)
    focal = fan.focal()
    origin = _sensor_origin(params, state, params.camera_offset)
    r, seg = cast_rays(params, origin, state.yaw, fan, params.lidar_range)
    r, seg = r[::-1], seg[::-1]  # the fan runs right to left, image columns left to right
    depth = r * np.cos(fan.angles()[::-1])  # distance along the optical axis
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
    if params.terrain is not None:  # the surfaces' texture where each floor pixel's ray meets the ground
        floor = ~is_wall & (elev < 0)[:, None]
        img = jnp.where(floor[..., None], _floor_texture(params, state, fan, floor_dist), img)
    return jnp.clip(jnp.round(img), 0, 255).astype(jnp.uint8)


def _floor_texture(params: EnvParams, state: EnvState, fan: Fan, floor_dist: np.ndarray) -> jax.Array:
    """[H, W, 3] surface colours where each camera pixel's ray meets the ground (`floor_dist` along the optical
    axis per row), dimmed with distance like the flat floor."""
    ahead = np.minimum(floor_dist, 2 * params.lidar_range)[:, None]  # rows at or above the horizon: unused
    across = ahead * np.tan(fan.angles()[::-1])[None, :]  # image columns left to right: the fan reversed
    origin = _sensor_origin(params, state, params.camera_offset)
    c, sn = jnp.cos(state.yaw), jnp.sin(state.yaw)
    xy = jnp.stack([origin[0] + c * ahead - sn * across, origin[1] + sn * ahead + c * across], -1)
    return surfaces.texture(params.terrain, xy) / (1.0 + 0.15 * ahead[..., None])


def imu(state: EnvState, accel: jax.Array) -> jax.Array:
    """The sensor contract's IMU at the centre of gravity: yaw rate and specific force (centripetal, longitudinal,
    the ground's support against gravity), from the state and the body-frame velocity derivative `accel`."""
    return contract.planar_imu(state.omega, state.vx, state.vy, accel[0], accel[1], jnp)


def observe(params: EnvParams, state: EnvState, accel: jax.Array, key: jax.Array) -> Obs:
    """racecar_gym's observation plus `imu` (the sensor contract's IMU) and `origin` (the episode's start)."""
    k_pose, k_lidar = jax.random.split(key)
    pose = _pose(params, state)
    if params.pose_noise > 0:
        pose = pose + params.pose_noise * jax.random.normal(k_pose, (6,))
    obs = {
        "pose": pose,
        "velocity": _velocity(state),
        "acceleration": accel,
        "lidar": lidar(params, state, k_lidar),
        "imu": imu(state, accel),
        "origin": state.origin,
    }
    if params.camera:
        obs["rgb_camera"] = camera(params, state)
    if params.terrain is not None and params.terrain.ground_image:
        obs["ground_image"] = surfaces.ground_image(
            params.terrain, _pose(params, state)[jnp.array([0, 1, 5])]
        )
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
        origin=jnp.stack([xr, yr]).astype(f),
    )
    p = _progress(params, state)
    return state.replace(lap_progress=p, total_progress=jnp.where(p < 0.5, p, p - 1.0))


def reset(key: jax.Array, params: EnvParams) -> tuple[Obs, EnvState]:
    k_state, k_obs = jax.random.split(key)
    state = _initial_state(k_state, params)
    return observe(params, state, jnp.zeros(6, jnp.float32), k_obs), state


def reset_at(key: jax.Array, params: EnvParams, progress: jax.Array) -> tuple[Obs, EnvState]:
    """Reset with the rear axle on the centreline point nearest to arc-length fraction `progress` of the lap,
    facing the driving direction. Laps count from there (total_progress starts at 0), so an episode from any
    start drives one whole loop per lap; evaluation uses it to start from poses spread around the track."""
    k_state, k_obs = jax.random.split(key)
    c = params.centreline
    seg = jnp.linalg.norm(jnp.roll(c, -1, 0) - c, axis=1)
    frac = jnp.concatenate([jnp.zeros(1), jnp.cumsum(seg)[:-1]]) / jnp.sum(seg)
    i = jnp.argmin(jnp.abs(jnp.mod(frac - progress + 0.5, 1.0) - 0.5))  # nearest, across the start line
    yaw = params.tangent_yaw[i]
    state = _initial_state(k_state, params)
    state = state.replace(x=c[i, 0] + params.lr * jnp.cos(yaw), y=c[i, 1] + params.lr * jnp.sin(yaw), yaw=yaw)
    state = state.replace(lap_progress=_progress(params, state), total_progress=jnp.zeros((), jnp.float32))
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
