"""Track geometry shared by both simulators: a closed centreline with left/right widths, and polyline helpers.

Everything else derives from a `Track`: progress along the centreline (laps, checkpoints, wrong-way detection),
the start pose and, unless the track carries its own, the walls (what the PyBullet mesh and the JAX distance
field are built from). A map's walls are given explicitly (traced from its image, `maps.load_map`).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np


def _tangents(points: np.ndarray) -> np.ndarray:
    """Unit tangents of a closed polyline by central differences."""
    d = np.roll(points, -1, axis=0) - np.roll(points, 1, axis=0)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)


@dataclasses.dataclass(frozen=True, eq=False)
class Track:
    """A closed racing line; the driving direction is increasing index, `left` is to the driver's left."""

    name: str
    centreline: np.ndarray  # [N, 2] metres, closed loop, first point not repeated
    width_left: np.ndarray  # [N] metres from the centreline to the left wall
    width_right: np.ndarray  # [N]
    # Walls given explicitly (a map's, traced from its image): closed polylines [K, 2] running in the driving
    # direction, first point not repeated. None: the walls are the centreline offset by the widths.
    left_wall: np.ndarray | None = None
    right_wall: np.ndarray | None = None

    def __post_init__(self) -> None:
        c = np.asarray(self.centreline, np.float64)
        wl = np.asarray(self.width_left, np.float64)
        wr = np.asarray(self.width_right, np.float64)
        if c.ndim != 2 or c.shape[1] != 2 or len(c) < 3:
            raise ValueError(f"track {self.name!r}: centreline must be [N >= 3, 2], got {c.shape}")
        if wl.shape != (len(c),) or wr.shape != (len(c),):
            raise ValueError(f"track {self.name!r}: widths must be [{len(c)}], got {wl.shape} and {wr.shape}")
        if not (np.isfinite(c).all() and np.isfinite(wl).all() and np.isfinite(wr).all()):
            raise ValueError(f"track {self.name!r}: centreline or widths contain NaN/inf")
        if (wl <= 0).any() or (wr <= 0).any():
            raise ValueError(f"track {self.name!r}: widths must be positive")
        seg = np.linalg.norm(np.roll(c, -1, axis=0) - c, axis=1)
        if (seg <= 1e-9).any():
            raise ValueError(f"track {self.name!r}: centreline has repeated consecutive points")
        object.__setattr__(self, "centreline", c)
        object.__setattr__(self, "width_left", wl)
        object.__setattr__(self, "width_right", wr)
        if (self.left_wall is None) != (self.right_wall is None):
            raise ValueError(f"track {self.name!r}: give both left_wall and right_wall, or neither")
        for side in ("left_wall", "right_wall"):
            if getattr(self, side) is None:
                continue
            w = np.asarray(getattr(self, side), np.float64)
            if w.ndim != 2 or w.shape[1] != 2 or len(w) < 3 or not np.isfinite(w).all():
                raise ValueError(f"track {self.name!r}: {side} must be finite [K >= 3, 2], got {w.shape}")
            object.__setattr__(self, side, w)

    # ------------------------------------------------------------------------------------ geometry

    @functools.cached_property
    def arc_length(self) -> np.ndarray:
        """[N] arc length at each centreline point (0 at index 0)."""
        seg = np.linalg.norm(np.roll(self.centreline, -1, axis=0) - self.centreline, axis=1)
        return np.concatenate([[0.0], np.cumsum(seg)[:-1]])

    @functools.cached_property
    def length(self) -> float:
        return float(np.linalg.norm(np.roll(self.centreline, -1, axis=0) - self.centreline, axis=1).sum())

    @property
    def offset_walls(self) -> bool:
        """Whether the walls are the centreline offset by the widths (no explicit walls)."""
        return self.left_wall is None

    def boundaries(self) -> tuple[np.ndarray, np.ndarray]:
        """Left and right wall vertices (closed polylines in the driving direction, first point not repeated)."""
        if not self.offset_walls:
            return self.left_wall, self.right_wall
        t = _tangents(self.centreline)
        n = np.stack([-t[:, 1], t[:, 0]], axis=1)  # left normal
        return (
            self.centreline + n * self.width_left[:, None],
            self.centreline - n * self.width_right[:, None],
        )

    def walls(self) -> np.ndarray:
        """[M, 4] float32 wall segments (x0, y0, x1, y1): the left boundary, then the right one."""
        return np.concatenate([loop_segments(b) for b in self.boundaries()]).astype(np.float32)

    def project(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Arc length (m) of the nearest point on the centreline polyline and the distance to it, for [..., 2]."""
        xy = np.asarray(xy, np.float64)
        pts = xy.reshape(-1, 2)
        a = self.centreline
        d = np.roll(a, -1, axis=0) - a
        seg_len2 = (d**2).sum(1)
        rel = pts[:, None, :] - a[None]  # [K, N, 2]
        u = np.clip((rel * d[None]).sum(-1) / seg_len2[None], 0.0, 1.0)
        dist2 = ((rel - u[..., None] * d[None]) ** 2).sum(-1)
        i = np.argmin(dist2, axis=1)
        k = np.arange(len(pts))
        s = (self.arc_length[i] + u[k, i] * np.sqrt(seg_len2[i])) % self.length
        return s.reshape(xy.shape[:-1]), np.sqrt(dist2[k, i]).reshape(xy.shape[:-1])

    def progress(self, xy: np.ndarray) -> np.ndarray:
        """Arc-length fraction in [0, 1) of the nearest centreline point, for points [..., 2]."""
        s, _ = self.project(xy)
        return np.mod(s / self.length, 1.0)

    def checkpoint(self, xy: np.ndarray, n_checkpoints: int) -> np.ndarray:
        """Index of the lap section (of `n_checkpoints` equal ones) that the nearest centreline point lies in."""
        return np.minimum((self.progress(xy) * n_checkpoints).astype(np.int64), n_checkpoints - 1)

    def start_pose(self) -> tuple[float, float, float]:
        """(x, y, yaw) at s = 0 facing the driving direction."""
        t = _tangents(self.centreline)[0]
        return float(self.centreline[0, 0]), float(self.centreline[0, 1]), float(np.arctan2(t[1], t[0]))

    def curvature(self) -> np.ndarray:
        """[N] signed curvature (1/m, positive = turning left) by periodic finite differences."""
        c = self.centreline
        s = self.arc_length
        h = np.roll(s, -1) - s
        h[-1] += self.length
        hp = np.roll(h, 1)
        d1 = (np.roll(c, -1, 0) - np.roll(c, 1, 0)) / (h + hp)[:, None]
        d2 = (
            2
            * ((np.roll(c, -1, 0) - c) / h[:, None] - (c - np.roll(c, 1, 0)) / hp[:, None])
            / (h + hp)[:, None]
        )
        return (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]) / np.maximum(
            np.linalg.norm(d1, axis=1) ** 3, 1e-12
        )

    def bounds(self, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        w = self.walls()
        pts = np.concatenate([w[:, :2], w[:, 2:]]).astype(np.float64)
        return pts.min(0) - margin, pts.max(0) + margin


def point_segment_distance(px: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Distance from points [..., 2] to segments [..., 4] (x0, y0, x1, y1), broadcast."""
    a, b = seg[..., :2], seg[..., 2:]
    e = b - a
    u = np.clip(((px - a) * e).sum(-1) / np.maximum((e * e).sum(-1), 1e-12), 0.0, 1.0)
    return np.linalg.norm(px - (a + u[..., None] * e), axis=-1)


def loop_segments(loop: np.ndarray) -> np.ndarray:
    """[K, 4] segments of a closed polyline [K, 2] (first point not repeated)."""
    return np.concatenate([loop, np.roll(loop, -1, axis=0)], axis=1)


def distance_to_loop(points: np.ndarray, loop: np.ndarray) -> np.ndarray:
    """[P] distance from points [P, 2] to a closed polyline: a KD-tree over samples along it (at most 5 cm or
    a quarter segment apart) finds each point's nearest sample, whose segment and its two neighbours give the
    exact distance (within half the sample spacing where the nearest segment is farther along the loop)."""
    from scipy.spatial import cKDTree

    segs = loop_segments(loop)
    lengths = np.linalg.norm(segs[:, 2:] - segs[:, :2], axis=1)
    k = np.maximum(np.ceil(lengths / min(0.05, 0.25 * float(np.median(lengths)))).astype(int), 1)
    seg_id = np.repeat(np.arange(len(segs)), k)
    frac = (np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)) / k[seg_id]
    samples = segs[seg_id, :2] + frac[:, None] * (segs[seg_id, 2:] - segs[seg_id, :2])
    seg = seg_id[cKDTree(samples).query(points)[1]]
    return np.min([point_segment_distance(points, segs[(seg + o) % len(segs)]) for o in (-1, 0, 1)], 0)


def signed_area(loop: np.ndarray) -> float:
    """Shoelace area of a closed polyline: positive when it runs counter-clockwise."""
    x, y = loop[:, 0], loop[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def inside_loop(point: np.ndarray, loop: np.ndarray) -> bool:
    """Whether a point [2] lies inside a closed polyline (even-odd rule)."""
    a, b = loop, np.roll(loop, -1, axis=0)
    spans = (a[:, 1] > point[1]) != (b[:, 1] > point[1])
    x = a[spans, 0] + (point[1] - a[spans, 1]) / (b[spans, 1] - a[spans, 1]) * (b[spans, 0] - a[spans, 0])
    return bool((x > point[0]).sum() % 2)


def resample_closed(points: np.ndarray, n: int) -> np.ndarray:
    """n points equally spaced in arc length along a closed polyline."""
    closed = np.concatenate([points, points[:1]])
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
    t = np.linspace(0.0, s[-1], n, endpoint=False)
    return np.stack([np.interp(t, s, closed[:, 0]), np.interp(t, s, closed[:, 1])], axis=1)
