"""Point clouds and labels -> bird's-eye-view rasters: LiDAR and radar BEV, radar in the LiDAR frame, box
footprints, a viewable BEV picture.

BEV convention (every BEV image here, LiDAR, radar and label rasters alike): the grid covers
`x_range` x `y_range` metres of the sensor frame (x forward, y left, z up); row 0 is the far-forward edge
(x = x_max) and column 0 the far-left edge (y = y_max), so the image looks like a map with the car heading up.
A point lands in row r = floor((x_max - x) / dx) and column c = floor((y_max - y) / dy) (so x = x_max is in row 0
and x = x_min is outside). Points outside the grid, outside [z_min, z_max), or non-finite are dropped.

The LiDAR projection is shared by real clouds (CMHT PCD) and the simulator's planar scan (turned into points),
so the same encoder sees the same picture of the world from both; it is written once for NumPy and jnp
(`xp`), so the jitted simulator path and the host path are the same code. The grid (`BevGrid`) is defined by the
sensor contract (`src.contract`, `[model.bev]`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from src.contract import BevGrid

INTENSITY_FIELDS = ("intensity", "i", "reflectivity")
RADIAL_VELOCITY_FIELDS = ("velocity", "v_r", "vr", "radial_velocity", "doppler")
RCS_FIELDS = ("rcs", "rcs_dbsm")
DENSITY_SATURATION = 64  # the log-density channel reaches 1 at this many points in a cell (MV3D's convention)
_DENSITY_LUT = np.minimum(
    np.log1p(np.arange(DENSITY_SATURATION + 1)) / math.log(DENSITY_SATURATION), 1.0
).astype(np.float32)


# --------------------------------------------------------------------------------------------- point clouds


def _field(points: Mapping[str, Any], names: tuple[str, ...], xp: Any = np) -> Any:
    lower = {k.lower(): k for k in points}
    for n in names:
        if n in lower:
            return xp.asarray(points[lower[n]], xp.float32).reshape(-1)
    return None


def _xyz(points: Any, what: str, xp: Any = np) -> tuple[dict[str, Any], Any, Any, Any]:
    """Accept a field dict (as `read_pcd` returns) or an array [N, >=3] (x, y, z, then intensity, ...)."""
    if isinstance(points, Mapping):
        fields = dict(points)
    else:
        arr = xp.asarray(points, xp.float32)
        if arr.ndim != 2 or arr.shape[1] < 3:
            raise ValueError(
                f"{what}: expected a field dict or an array [N, >=3] (x, y, z, ...), got {arr.shape}"
            )
        fields = {"x": arr[:, 0], "y": arr[:, 1], "z": arr[:, 2]}
        if arr.shape[1] >= 4:
            fields["intensity"] = arr[:, 3]
    xyz = [_field(fields, (k,), xp) for k in "xyz"]
    if any(v is None for v in xyz):
        raise ValueError(f"{what}: point fields {sorted(fields)} lack one of x, y, z")
    return fields, *xyz


def _cell_sum(flat: Any, n: int, xp: Any, weights: Any = None) -> Any:
    """Per-cell count (`weights` None) or sum of `weights` over cells 0..n-1 (index n: dropped points).
    NumPy sums in float64 (bincount); jnp scatter-adds in float32 (no float64 under default JAX)."""
    if xp is np:
        return np.bincount(flat, weights=weights, minlength=n + 1)[:n]
    if weights is None:
        return xp.zeros(n + 1, xp.int32).at[flat].add(1)[:n]
    return xp.zeros(n + 1, xp.float32).at[flat].add(weights)[:n]


def _cell_max(flat: Any, values: Any, n: int, xp: Any) -> Any:
    """Per-cell max of float32 `values` >= 0 over cells 0..n-1; 0 in empty cells (0 is the identity)."""
    top = xp.zeros(n + 1, xp.float32)
    if xp is np:
        with np.errstate(invalid="ignore"):  # non-finite points only ever reach the overflow bin
            np.maximum.at(top, flat, values)
        return top[:n]
    return top.at[flat].max(values)[:n]


def lidar_bev(
    points: Mapping[str, Any] | Any, grid: BevGrid, keep: Any = None, xp: Any = np
) -> Any:
    """A LiDAR point cloud -> float32 BEV image [grid.height, grid.width, 4], NumPy (`xp=np`) or jnp (jit-able).

    points: {"x", "y", "z", "intensity"} arrays [N] (field names case-insensitive; "i"/"reflectivity" also accepted
    for the intensity), or an array [N, 4] with those columns. `keep` [N] bool drops the points where it is
    False (fixed shapes under jit: a scan's misses). Channels, each 0 in empty cells:
      0 occupancy      1 where the cell holds at least one point
      1 max height     highest z in the cell, mapped from grid.z_range to [0, 1)
      2 mean intensity mean intensity of the cell's points / grid.intensity_max
      3 log density    min(1, log(1 + n) / log(64)) for n points in the cell
    NumPy accumulates the intensity sums in float64, jnp in float32: the mean-intensity channels agree to
    float32 rounding, the others exactly.
    """
    fields, x, y, z = _xyz(points, "lidar_bev", xp)
    intensity = _field(fields, INTENSITY_FIELDS, xp)
    if intensity is None:
        raise ValueError(
            f"lidar_bev: no intensity field among {sorted(fields)} (accepted: {INTENSITY_FIELDS})"
        )
    h, w = grid.height, grid.width
    n = h * w
    flat = grid.cell_index(x, y, z, xp)
    if keep is not None:
        flat = xp.where(keep, flat, n)
    count = _cell_sum(flat, n, xp)
    isum = _cell_sum(flat, n, xp, weights=intensity)
    z0, z1 = grid.z_range
    top = _cell_max(flat, (z - xp.float32(z0)) * xp.float32(1.0 / (z1 - z0)), n, xp)
    # empty cells: isum = 0 over a divisor of 1 gives 0. One stack interleaves the channels far faster than
    # writing four strided columns.
    lut = xp.asarray(_DENSITY_LUT)
    channels = (
        count > 0,
        top,
        isum * (1.0 / grid.intensity_max) / xp.maximum(count, 1),
        lut[xp.minimum(count, lut.shape[0] - 1)],
    )
    out = xp.stack(channels, axis=-1, dtype=xp.float32)
    return out.reshape(h, w, 4)


def radar_in_lidar_frame(
    points: Mapping[str, np.ndarray] | np.ndarray, to_lidar: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Radar detections in the radar's own frame -> float32 {"x", "y", "z", "velocity"?, "rcs"?} in the LiDAR frame.

    The one place the radar extrinsic is applied: p_lidar = to_lidar[:3, :3] @ p_radar + to_lidar[:3, 3]
    (`cmht.radar_to_lidar`; None = the points are in the LiDAR frame already). "velocity" is the radial velocity
    (m/s, + = receding): a scalar field (velocity, v_r, doppler, ...) as measured, or from vx/vy the component along
    the radar's own line of sight, taken before the move (a scalar along a ray does not change with the frame).
    A cloud without velocity (or RCS) fields has no such key: the sensor did not measure it.
    """
    fields, x, y, z = _xyz(points, "radar")
    vel = _field(fields, RADIAL_VELOCITY_FIELDS)
    vx, vy = _field(fields, ("vx",)), _field(fields, ("vy",))
    if vel is None and vx is not None and vy is not None:
        rng = np.hypot(x, y)
        vel = np.divide(vx * x + vy * y, rng, out=np.zeros_like(rng), where=rng > 0)
    out = {"x": x, "y": y, "z": z}
    if to_lidar is not None:
        m = np.asarray(to_lidar, np.float64).reshape(4, 4)
        if not np.all(np.isfinite(m)) or not np.allclose(m[3], [0, 0, 0, 1]):
            raise ValueError(f"radar extrinsic: expected a finite [4, 4] rigid transform, got {m.tolist()}")
        xyz = np.stack([x, y, z], axis=-1) @ m[:3, :3].T.astype(np.float32) + m[:3, 3].astype(np.float32)
        out = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}
    if vel is not None:
        out["velocity"] = vel
    rcs = _field(fields, RCS_FIELDS)
    if rcs is not None:
        out["rcs"] = rcs
    return out


def radar_bev(
    points: Mapping[str, np.ndarray] | np.ndarray,
    grid: BevGrid,
    *,
    to_lidar: np.ndarray | None = None,
    velocity_scale: float = 20.0,
    rcs_scale: float = 20.0,
) -> np.ndarray:
    """Radar detections -> float32 BEV image [grid.height, grid.width, 3] on the LiDAR grid.

    `to_lidar`: the radar -> LiDAR extrinsic [4, 4] that moves the points into the grid's (LiDAR) frame first
    (`radar_in_lidar_frame`); None when they are in it already. Channels: 0 occupancy; 1 mean radial velocity /
    velocity_scale (m/s, + = receding); 2 mean RCS / rcs_scale; a channel the sensor did not measure stays 0.
    """
    fields = radar_in_lidar_frame(points, to_lidar)
    h, w = grid.height, grid.width
    n = h * w
    flat = grid.cell_index(fields["x"], fields["y"], fields["z"])
    count = np.bincount(flat, minlength=n + 1)[:n].astype(np.float32)
    occupied = count > 0
    out = np.zeros((n, 3), np.float32)
    out[:, 0] = occupied
    for ch, name, scale in ((1, "velocity", velocity_scale), (2, "rcs", rcs_scale)):
        if name in fields:
            total = np.bincount(flat, weights=fields[name], minlength=n + 1)[:n].astype(np.float32)
            np.divide(total, count * np.float32(scale), out=out[:, ch], where=occupied)
    return out.reshape(h, w, 3)


# --------------------------------------------------------------------------------------------- labels


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """Boxes [K, 7] (x, y, z, l, w, h, yaw) -> footprint corners [K, 4, 2] (x, y), counter-clockwise."""
    b = np.asarray(boxes, np.float64).reshape(-1, 7)
    half = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], np.float64) * 0.5  # (along l, along w)
    local = half[None] * b[:, None, 3:5]
    cos, sin = np.cos(b[:, 6])[:, None], np.sin(b[:, 6])[:, None]
    x = b[:, None, 0] + cos * local[..., 0] - sin * local[..., 1]
    y = b[:, None, 1] + sin * local[..., 0] + cos * local[..., 1]
    return np.stack([x, y], axis=-1)


def rasterize_boxes(boxes: np.ndarray, grid: BevGrid) -> np.ndarray:
    """Box footprints (rotated by yaw) -> int32 [H, W]: 1 + the index of the box covering each cell centre, 0 = none.

    Where boxes overlap the later box wins. boxes: [K, 7] (x, y, z, l, w, h, yaw), yaw about z from +x, CCW.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 7)
    out = np.zeros((grid.height, grid.width), np.int32)
    if len(b) == 0:
        return out
    cx, cy = grid.cell_centres()
    dx = cx[None] - b[:, 0, None, None]  # [K, H, 1]
    dy = cy[None] - b[:, 1, None, None]  # [K, 1, W]
    cos, sin = np.cos(b[:, 6])[:, None, None], np.sin(b[:, 6])[:, None, None]
    u = cos * dx + sin * dy  # along the box length
    v = -sin * dx + cos * dy  # along the box width
    inside = (np.abs(u) <= b[:, 3, None, None] / 2) & (np.abs(v) <= b[:, 4, None, None] / 2)  # [K, H, W]
    last = len(b) - 1 - np.argmax(inside[::-1], axis=0)
    return np.where(inside.any(axis=0), last + 1, 0).astype(np.int32)


def bev_picture(bev: np.ndarray, boxes: np.ndarray | None, grid: BevGrid, scale: int = 4) -> Image.Image:
    """A viewable RGB picture of a LiDAR BEV (max height on the density) with label footprints outlined."""
    density = bev[..., 3] if bev.shape[-1] > 3 else bev[..., 0]
    height = bev[..., 1] if bev.shape[-1] > 1 else density
    grey = np.clip(255 * density, 0, 255).astype(np.uint8)
    rgb = np.stack([grey, np.clip(255 * height, 0, 255).astype(np.uint8), grey], axis=-1)
    if boxes is not None and len(boxes):
        tint = rasterize_boxes(boxes, grid) > 0
        rgb[tint] = (0.5 * rgb[tint] + np.array([0, 0, 127])).astype(np.uint8)
    pic = Image.fromarray(rgb).resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    if boxes is not None and len(boxes):
        draw = ImageDraw.Draw(pic)
        for corners in box_corners(boxes):
            col, row = grid.to_pixel(corners[:, 0], corners[:, 1])
            draw.polygon([(c * scale, r * scale) for c, r in zip(col, row)], outline=(255, 60, 60), width=2)
    return pic
