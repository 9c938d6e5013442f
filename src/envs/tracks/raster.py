"""The track on a grid, as the JAX env looks things up: oriented wall segments, the signed distance to the walls
and the lap fraction of the nearest centreline point per cell (NumPy, built once per track).

Grid convention: cell [0, 0]'s corner at `origin`, `res` m square cells, row = y, column = x.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from src.envs.tracks.geometry import Track, loop_segments, point_segment_distance

DEFAULT_RESOLUTION = 0.05  # m: the JAX env's grid (`make_params(grid_resolution=...)`)


def nearest_index_grid(points: np.ndarray, origin: np.ndarray, res: float, shape) -> np.ndarray:
    """For every grid cell, the index (into `points`) of a nearby rasterised point (EDT nearest marked cell)."""
    ij = np.floor((points - origin) / res).astype(np.int64)
    ij = np.clip(ij, 0, np.array(shape[::-1]) - 1)
    owner = np.full(shape, -1, np.int64)
    owner[ij[:, 1], ij[:, 0]] = np.arange(len(points))
    idx = ndimage.distance_transform_edt(owner < 0, return_distances=False, return_indices=True)
    return owner[idx[0], idx[1]]



def inside_grid(walls: np.ndarray, origin: np.ndarray, res: float, shape) -> np.ndarray:
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


def distance_grid(walls, wall_next, wall_prev, origin, res, shape, band: float = 0.5) -> np.ndarray:
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
    nearest = nearest_index_grid(samples, origin, res, shape)
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
    return np.where(inside_grid(walls, origin, res, shape), dist.reshape(shape), -dist.reshape(shape))



def oriented_walls(track: Track) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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



@dataclasses.dataclass(frozen=True)
class TrackRaster:
    """A track's walls as segments with the track on their left (`oriented_walls`) and its grids."""

    walls: np.ndarray  # [M, 4] (x0, y0, x1, y1)
    wall_next: np.ndarray  # [M] index of the segment that starts where this one ends
    wall_prev: np.ndarray  # [M] index of the segment that ends where this one starts
    wall_side: np.ndarray  # [M] 0 = left wall, 1 = right wall
    dist: np.ndarray  # [H, W] signed distance (m, + on the track) from each cell centre to the nearest wall
    progress: np.ndarray  # [H, W] lap fraction of the nearest centreline point
    origin: np.ndarray  # [2] world (x, y) of the corner of cell [0, 0]
    res: float


def rasterize(track: Track, res: float) -> TrackRaster:
    """The walls and grids of `track` on `res` m cells covering its walls with a 1 m margin."""
    walls, wall_next, wall_prev, wall_side = oriented_walls(track)
    lo, hi = track.bounds(margin=1.0)
    shape = tuple(int(v) for v in np.ceil((hi - lo) / res)[::-1])  # (H rows = y, W cols = x)
    dist = distance_grid(walls, wall_next, wall_prev, lo, res, shape)
    # Progress: dense centreline samples carrying their lap fraction.
    c = track.centreline
    closed = np.concatenate([c, c[:1]])
    s_dense = np.arange(0.0, track.length, res / 4)
    s_pts = np.concatenate([track.arc_length, [track.length]])
    dense = np.stack([np.interp(s_dense, s_pts, closed[:, 0]), np.interp(s_dense, s_pts, closed[:, 1])], 1)
    progress = (s_dense / track.length)[nearest_index_grid(dense, lo, res, shape)]
    return TrackRaster(walls, wall_next, wall_prev, wall_side, dist, progress, lo, res)
