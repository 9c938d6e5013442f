"""Terrain patches by scanning forward along a trajectory of top-down ground images (source-agnostic).

A trajectory is N top-down images (H x W x C uint8, each with a validity mask: False where nothing was seen),
SE(2) poses (x, y, yaw in a fixed world frame) and times. The image frame follows the BEV convention of
`src.data.bev`: the robot's x (forward) points up (decreasing row), its y (left) points left (decreasing
column); pixel centres sit at integer (row, col); the robot stands at the continuous pixel `robot_row, robot_col`.

For each frame i, later frames j >= i are scanned: the pose of j relative to i gives where the robot will be in
image i, and a patch (patch_px x patch_px, aligned with the robot's heading at j) is sampled there with a bilinear
grid. The scan stops at `max_path_m` of path length, `max_yaw_deg` of accumulated yaw, or an odometry gap (a time
step over `max_time_gap_s`, a position jump over `max_jump_m`, or an invalid pose), whichever comes first; a patch
is kept only if every sample it needs is inside the image and valid. Each location j thus has one view per
earlier viewpoint i; the one with the shortest path from i to j (the latest viewpoint) is the clearest.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

_SNAP = 1e-6  # sample coordinates this close to a pixel centre are snapped to it (exact crops stay exact)


@dataclasses.dataclass(frozen=True)
class GroundGeometry:
    """Where the robot stands in its top-down images and their scale."""

    px_per_m: float
    robot_row: float
    robot_col: float

    def __post_init__(self) -> None:
        if not self.px_per_m > 0:
            raise ValueError(f"GroundGeometry.px_per_m must be > 0, got {self.px_per_m}")


@dataclasses.dataclass(frozen=True)
class ScanConfig:
    """Forward-scan limits and patch size (defaults: the reference pipeline's 60 px at 150 px/m, 6 m, 90 deg).

    patch_m: the patch's side in metres; 0 means patch_px image pixels (no resampling of scale).
    """

    patch_px: int = 60
    patch_m: float = 0.0
    max_path_m: float = 6.0
    max_yaw_deg: float = 90.0
    max_time_gap_s: float = 0.5
    max_jump_m: float = 2.0
    chunk: int = 256  # (viewpoint, location) pairs sampled at once; bounds the gather's memory

    def __post_init__(self) -> None:
        if self.patch_px < 1 or self.patch_m < 0 or self.chunk < 1:
            raise ValueError(f"ScanConfig: patch_px/chunk must be >= 1 and patch_m >= 0, got {self}")
        if not (self.max_path_m > 0 and self.max_yaw_deg > 0 and self.max_time_gap_s > 0 and self.max_jump_m > 0):
            raise ValueError(f"ScanConfig: every limit must be > 0, got {self}")


@dataclasses.dataclass(frozen=True, eq=False)
class Trajectory:
    """images uint8 [N, H, W, C]; valid bool [N, H, W]; poses float64 [N, 3] (x, y, yaw); times float64 [N] s;
    pose_valid bool [N] (False: the odometry has no pose there, a gap)."""

    images: np.ndarray
    valid: np.ndarray
    poses: np.ndarray
    times: np.ndarray
    pose_valid: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"Trajectory.images must be uint8 [N, H, W, C], got {self.images.dtype} {self.images.shape}")
        if self.valid.shape != self.images.shape[:3] or self.valid.dtype != np.bool_:
            raise ValueError(f"Trajectory.valid must be bool {self.images.shape[:3]}, got {self.valid.shape}")
        if self.poses.shape != (n, 3) or self.times.shape != (n,) or self.pose_valid.shape != (n,):
            raise ValueError(
                f"Trajectory: poses {self.poses.shape}, times {self.times.shape}, pose_valid "
                f"{self.pose_valid.shape} do not fit {n} images"
            )
        if n > 1 and np.any(np.diff(self.times) <= 0):
            raise ValueError("Trajectory.times must increase strictly")


@dataclasses.dataclass(frozen=True, eq=False)
class Extraction:
    """Kept patches of one trajectory, sorted by location frame then path distance (clearest view first).

    patches uint8 [M, P, P, C]; frame int32 [M] (location j); viewpoint int32 [M] (i); distance float32 [M]
    (path length from i to j, m); gaps: odometry gaps in the trajectory; stopped_by_gap: scans a gap cut short;
    dropped: sampled patches not fully in view.
    """

    patches: np.ndarray
    frame: np.ndarray
    viewpoint: np.ndarray
    distance: np.ndarray
    gaps: int
    stopped_by_gap: int
    dropped: int


def gap_after(traj: Trajectory, scan: ScanConfig) -> np.ndarray:
    """bool [N - 1]: an odometry gap between frame k and k + 1 (time step, position jump or invalid pose)."""
    dt = np.diff(traj.times)
    step = np.hypot(*np.diff(traj.poses[:, :2], axis=0).T)
    ok = traj.pose_valid[:-1] & traj.pose_valid[1:]
    return ~ok | (dt > scan.max_time_gap_s) | (step > scan.max_jump_m)


def scan_ends(traj: Trajectory, scan: ScanConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(last scanned frame [N] (-1: no scan), path length from frame 0 [N], stopped by a gap [N])."""
    n = len(traj.times)
    gaps = gap_after(traj, scan)
    step = np.hypot(*np.diff(traj.poses[:, :2], axis=0).T)
    # scans never cross a gap, so the steps across one only have to be finite here
    path = np.concatenate([[0.0], np.cumsum(np.where(traj.pose_valid[1:] & traj.pose_valid[:-1], step, 0.0))])
    yaw = np.concatenate([[0.0], np.cumsum(np.where(gaps, 0.0, _wrap(np.diff(traj.poses[:, 2]))))])
    # the first gap at or after k (frame k + 1 is then unreachable from k): n - 1 when there is none
    idx = np.where(gaps, np.arange(n - 1), n - 1)
    next_gap = np.minimum.accumulate(idx[::-1])[::-1] if n > 1 else np.zeros(0, np.int64)
    next_gap = np.concatenate([next_gap, [n - 1]])
    end_gap = next_gap  # frames up to and including next_gap[i] are reachable
    end_path = np.searchsorted(path, path + scan.max_path_m + 1e-9, side="right") - 1
    limit = math.radians(scan.max_yaw_deg)
    end = np.minimum(end_gap, end_path)
    for i in range(n):  # the first frame past the yaw limit, within the (short) window left
        over = np.flatnonzero(np.abs(yaw[i : end[i] + 1] - yaw[i]) > limit + 1e-9)
        if len(over):
            end[i] = i + over[0] - 1
    stopped = (end == end_gap) & (end_gap < n - 1) & (end < np.minimum(end_path, n - 1))
    end = np.where(traj.pose_valid, end, -1)
    return end, path, stopped & traj.pose_valid


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def patch_side_m(scan: ScanConfig, px_per_m: float) -> float:
    """The patch's side in metres on ground images of `px_per_m`: `scan.patch_m`, or `patch_px` image pixels."""
    return scan.patch_m if scan.patch_m > 0 else scan.patch_px / px_per_m


def patch_offsets(geom: GroundGeometry, scan: ScanConfig) -> tuple[np.ndarray, np.ndarray]:
    """(forward [P, 1], left [1, P]) metres of each patch pixel centre from the patch centre, robot frame at j."""
    p = scan.patch_px
    m = (scan.patch_m / p) if scan.patch_m > 0 else 1.0 / geom.px_per_m
    k = (np.arange(p) - (p - 1) / 2.0) * m
    return -k[:, None], -k[None, :]


def _sample_coords(
    traj: Trajectory, view: np.ndarray, loc: np.ndarray, geom: GroundGeometry, f: np.ndarray, left: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Continuous (row, col) in image `view` of points (forward f, left) in the robot frame at `loc`."""
    ti = traj.poses[view, 2]
    dx, dy = (traj.poses[loc, :2] - traj.poses[view, :2]).T
    c, s = np.cos(ti), np.sin(ti)
    rx, ry = c * dx + s * dy, -s * dx + c * dy
    dyaw = traj.poses[loc, 2] - ti
    cd, sd = np.cos(dyaw)[:, None, None], np.sin(dyaw)[:, None, None]
    x = rx[:, None, None] + cd * f - sd * left
    y = ry[:, None, None] + sd * f + cd * left
    row = geom.robot_row - x * geom.px_per_m
    col = geom.robot_col - y * geom.px_per_m
    row = np.where(np.abs(row - np.rint(row)) < _SNAP, np.rint(row), row)
    col = np.where(np.abs(col - np.rint(col)) < _SNAP, np.rint(col), col)
    return row, col


def inside_image(
    traj: Trajectory, view: np.ndarray, loc: np.ndarray, geom: GroundGeometry, scan: ScanConfig
) -> np.ndarray:
    """bool [K]: the patch's four corner samples lie inside the image (a square: then all its samples do)."""
    _, h, w, _ = traj.images.shape
    f, left = patch_offsets(geom, scan)
    row, col = _sample_coords(traj, view, loc, geom, f[[0, -1]], left[:, [0, -1]])
    ok = (row >= 0) & (row <= h - 1) & (col >= 0) & (col <= w - 1)
    return ok.reshape(len(view), -1).all(axis=1)


def sample_patches(
    traj: Trajectory, view: np.ndarray, loc: np.ndarray, geom: GroundGeometry, scan: ScanConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear patches [K, P, P, C] uint8 of locations `loc` seen from frames `view`, and fully-in-view [K]."""
    _, h, w, _ = traj.images.shape
    row, col = _sample_coords(traj, view, loc, geom, *patch_offsets(geom, scan))
    r0, c0 = np.floor(row).astype(np.int64), np.floor(col).astype(np.int64)
    ar, ac = (row - r0).astype(np.float32), (col - c0).astype(np.float32)
    frame = view[:, None, None]
    value = np.zeros((*row.shape, traj.images.shape[-1]), np.float32)
    ok = np.ones(row.shape, np.bool_)
    for dr, wr in ((0, 1.0 - ar), (1, ar)):
        for dc, wc in ((0, 1.0 - ac), (1, ac)):
            r, cc, wgt = r0 + dr, c0 + dc, wr * wc
            inside = (r >= 0) & (r < h) & (cc >= 0) & (cc < w)
            r, cc = np.clip(r, 0, h - 1), np.clip(cc, 0, w - 1)
            ok &= (wgt == 0) | (inside & traj.valid[frame, r, cc])
            value += wgt[..., None] * traj.images[frame, r, cc]
    patches = np.clip(np.rint(value), 0, 255).astype(np.uint8)
    return patches, ok.reshape(len(view), -1).all(axis=1)


def extract_patches(traj: Trajectory, geom: GroundGeometry, scan: ScanConfig = ScanConfig()) -> Extraction:
    """Scan forward from every frame (module docstring); vectorised over (viewpoint, location) pairs."""
    n = len(traj.times)
    end, path, stopped = scan_ends(traj, scan)
    counts = np.maximum(end - np.arange(n) + 1, 0)
    view = np.repeat(np.arange(n), counts)
    loc = view + (np.arange(len(view)) - np.repeat(np.cumsum(counts) - counts, counts))
    candidates = len(view)
    inside = inside_image(traj, view, loc, geom, scan)  # cheap: only the corners, before the full gather
    view, loc = view[inside], loc[inside]
    kept_p, kept_v, kept_l = [], [], []
    for a in range(0, len(view), scan.chunk):
        v, lo = view[a : a + scan.chunk], loc[a : a + scan.chunk]
        patches, ok = sample_patches(traj, v, lo, geom, scan)
        kept_p.append(patches[ok])
        kept_v.append(v[ok])
        kept_l.append(lo[ok])
    c = traj.images.shape[-1]
    patches = np.concatenate(kept_p) if kept_p else np.zeros((0, scan.patch_px, scan.patch_px, c), np.uint8)
    v = np.concatenate(kept_v) if kept_v else np.zeros(0, np.int64)
    lo = np.concatenate(kept_l) if kept_l else np.zeros(0, np.int64)
    dist = (path[lo] - path[v]).astype(np.float32)
    order = np.lexsort((dist, lo))
    return Extraction(
        patches=patches[order],
        frame=lo[order].astype(np.int32),
        viewpoint=v[order].astype(np.int32),
        distance=dist[order],
        gaps=int(gap_after(traj, scan).sum()) if n > 1 else 0,
        stopped_by_gap=int(stopped.sum()),
        dropped=int(candidates - len(v)),
    )
