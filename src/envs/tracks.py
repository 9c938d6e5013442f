"""Track geometry shared by both simulators: a closed centreline with left/right widths.

Everything else derives from it: progress along the centreline (laps, checkpoints, wrong-way detection), the
start pose and, unless the track carries its own, the walls (what the PyBullet mesh and the JAX distance field
are built from). Tracks come from a seeded procedural generator (walls offset from the centreline by the
widths), or from ROS map_server maps (PNG/PGM + YAML). A map's walls are traced from its image, which is the
ground truth: the two boundaries of the free region that forms the loop (the connected free component with
one enclosed obstacle; maps that draw walls as thin lines have free space outside them too). Its centreline is
read from an F1TENTH waypoint CSV (`# x_m, y_m, w_tr_right_m, w_tr_left_m`; the CSV's widths are replaced by
the measured distances to the traced walls) or extracted as the mid-line of that loop. `check_track` validates
every track the simulators are built from. The bundled tracks in `src/envs/tracks/` were written by
`python -m src.envs.tracks` from fixed seeds and load through `load_map`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from scipy import ndimage

BUNDLED_DIR = Path(__file__).parent / "tracks"


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


# ---------------------------------------------------------------------------------------- validation


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


def _crossing_pairs(segs: np.ndarray, closed_len: np.ndarray) -> np.ndarray:
    """[K, 2] pairs of non-adjacent segments that properly cross (orientation test).

    `closed_len` gives the number of segments of each closed polyline in `segs` (in order), so that
    consecutive segments of one loop, which share an end point, are not counted. Segments are bucketed on a
    grid of cells about two median segment lengths wide and only segments that share a cell are tested, so
    the cost grows with the number of segments, not its square.
    """
    p, q = segs[:, :2], segs[:, 2:]
    lo, hi = np.minimum(p, q), np.maximum(p, q)
    corner = lo.min(0)
    extent = float((hi.max(0) - corner).max())
    cell = max(2.0 * float(np.median(np.linalg.norm(q - p, axis=1))), extent / 2048, 1e-9)
    c0 = np.floor((lo - corner) / cell).astype(np.int64)
    c1 = np.floor((hi - corner) / cell).astype(np.int64)
    nx, ny = c1[:, 0] - c0[:, 0] + 1, c1[:, 1] - c0[:, 1] + 1
    count = nx * ny
    seg = np.repeat(np.arange(len(segs)), count)
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    key = (c0[seg, 0] + k % nx[seg]) * (int(c1[:, 1].max()) + 1) + c0[seg, 1] + k // nx[seg]
    order = np.lexsort((seg, key))
    key, seg = key[order], seg[order]
    pairs = [np.zeros((0, 2), np.int64)]
    for off in range(1, len(key)):  # the members of a cell are consecutive after sorting
        same = key[off:] == key[:-off]
        if not same.any():
            break
        pairs.append(np.stack([seg[:-off][same], seg[off:][same]], 1))
    pairs = np.unique(np.concatenate(pairs), axis=0)
    i, j = pairs[:, 0], pairs[:, 1]

    def orient(a, b, c):
        return np.sign((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))

    cross = (orient(p[i], q[i], p[j]) * orient(p[i], q[i], q[j]) < 0) & (
        orient(p[j], q[j], p[i]) * orient(p[j], q[j], q[i]) < 0
    )
    loop = np.repeat(np.arange(len(closed_len)), closed_len)
    idx = np.concatenate([np.arange(n) for n in closed_len])
    gap = np.abs(idx[i] - idx[j])
    adjacent = (loop[i] == loop[j]) & ((gap <= 1) | (gap >= closed_len[loop[i]] - 1))
    return pairs[cross & ~adjacent]


def check_track(track: Track, min_width: float = 0.0, min_gap: float = 0.0) -> None:
    """Raise ValueError, naming the track and where, when it cannot be driven as built: narrower than
    `min_width` (left + right), offset walls that fold over at a turn tighter than the width on its inside,
    a centreline or wall that crosses itself or another, explicit walls that do not run on either side of the
    centreline in the driving direction, or (offset walls, the procedural generator's clearance rule) a wall
    within `min_gap` of another part of the corridor. The simulators call it on every track they build."""
    name = track.name
    s = track.arc_length
    total = track.width_left + track.width_right
    if total.min() < min_width - 1e-9:
        i = int(np.argmin(total))
        raise ValueError(
            f"track {name!r}: width {total[i]:.3f} m at s = {s[i]:.1f} m < min_width {min_width} m"
        )
    c = track.centreline
    if track.offset_walls:
        k = track.curvature()
        inside = np.where(k > 0, track.width_left, track.width_right)
        fold = np.abs(k) * inside
        if fold.max() >= 1.0:
            i = int(np.argmax(fold))
            raise ValueError(
                f"track {name!r}: at s = {s[i]:.1f} m ({c[i, 0]:.2f}, {c[i, 1]:.2f}) the centreline turns with "
                f"radius {1.0 / abs(k[i]):.2f} m, tighter than the {inside[i]:.2f} m width on the inside of the "
                "turn, so the walls offset from it fold over (self-intersect); ease the turn, narrow the track "
                "there, or give the track its walls (a map, traced from its image by load_map)"
            )
    left, right = track.boundaries()
    loops = (c, left, right)
    what = np.repeat(np.array(["centreline", "left wall", "right wall"]), [len(b) for b in loops])
    segs = np.concatenate([loop_segments(b) for b in loops])
    crossing = _crossing_pairs(segs, np.array([len(b) for b in loops]))
    if len(crossing):
        i, j = crossing[0]
        x, y = segs[i, :2]
        raise ValueError(
            f"track {name!r}: centreline or walls self-intersect ({len(crossing)} crossing(s); the first between "
            f"the {what[i]} and the {what[j]} near ({x:.2f}, {y:.2f}))"
        )
    if not track.offset_walls:
        direction = np.sign(signed_area(c))
        inner, outer = (left, right) if direction > 0 else (right, left)
        if np.sign(signed_area(left)) != direction or np.sign(signed_area(right)) != direction:
            raise ValueError(f"track {name!r}: the walls do not run in the centreline's driving direction")
        if not (inside_loop(c[0], outer) and not inside_loop(c[0], inner) and inside_loop(inner[0], outer)):
            raise ValueError(
                f"track {name!r}: the centreline does not run between its walls (left wall on its left, right "
                "wall on its right)"
            )
        return
    # A wall vertex must stay outside every other part's corridor (+ gap); "other part" = far along the loop.
    ds = np.abs(s[:, None] - s[None])
    far = np.minimum(ds, track.length - ds) > 3.0 * total.max()
    half = np.maximum(track.width_left, track.width_right)
    for wall in (left, right):
        d = np.linalg.norm(wall[:, None] - c[None], axis=-1)
        if (far & (d < half[None] + min_gap)).any():
            raise ValueError(f"track {name!r}: a wall comes within {min_gap} m of another part of the track")


# ---------------------------------------------------------------------------------------- procedural


def _resample_closed(points: np.ndarray, n: int) -> np.ndarray:
    """n points equally spaced in arc length along a closed polyline."""
    closed = np.concatenate([points, points[:1]])
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
    t = np.linspace(0.0, s[-1], n, endpoint=False)
    return np.stack([np.interp(t, s, closed[:, 0]), np.interp(t, s, closed[:, 1])], axis=1)


def procedural_track(
    seed: int,
    *,
    n_points: int = 400,
    mean_radius: float = 10.0,
    n_harmonics: int = 4,
    amplitude: float = 0.3,
    min_width: float = 2.0,
    max_width: float = 3.0,
    min_curvature_radius: float = 2.5,
    min_gap: float = 0.5,
    name: str | None = None,
    max_tries: int = 200,
) -> Track:
    """A smooth random closed circuit, counter-clockwise, from a seed.

    Polar form r(theta) = R (1 + sum_k a_k cos(k theta + phi_k)) for k = 2 .. n_harmonics + 1 (a periodic
    Fourier series, so the curve is smooth and closed by construction), resampled to `n_points` equally spaced
    points. The total width varies smoothly in [min_width, max_width]. Candidates that self-intersect, turn
    tighter than `min_curvature_radius`, or bring a wall within `min_gap` of another part are rejected and
    the next candidate from the same generator is tried (so a seed always gives the same track).
    """
    rng = np.random.default_rng(seed)
    theta = np.linspace(0.0, 2 * np.pi, 4096, endpoint=False)
    k = np.arange(2, n_harmonics + 2)
    for _ in range(max_tries):
        a = rng.uniform(0.0, amplitude, len(k)) / np.sqrt(k - 1)
        phi = rng.uniform(0.0, 2 * np.pi, len(k))
        wk = rng.integers(1, 4)
        wphi = rng.uniform(0.0, 2 * np.pi)
        r = mean_radius * (1.0 + (a[:, None] * np.cos(k[:, None] * theta + phi[:, None])).sum(0))
        if r.min() <= 0.2 * mean_radius:
            continue
        dense = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
        centre = _resample_closed(dense, n_points)
        ang = np.arctan2(centre[:, 1], centre[:, 0])
        width = min_width + (max_width - min_width) * 0.5 * (1.0 + np.cos(wk * ang + wphi))
        track = Track(name or f"procedural_{seed}", centre, width / 2, width / 2)
        if np.abs(track.curvature()).max() > 1.0 / min_curvature_radius:
            continue
        try:
            check_track(track, min_width=min_width, min_gap=min_gap)
        except ValueError:
            continue
        return track
    raise ValueError(
        f"procedural_track(seed={seed}): no valid track in {max_tries} tries; relax the constraints"
    )


# ---------------------------------------------------------------------------------------- map files

_FREE, _OCCUPIED, _UNKNOWN = 254, 0, 205


def write_map(track: Track, directory: str | Path, resolution: float = 0.05, margin: float = 1.0) -> Path:
    """Write `track` as a ROS map_server map (`<name>.png` + `<name>.yaml`) and an F1TENTH centreline CSV
    (`<name>.csv`). Free space is the corridor between the walls; everything else is occupied."""
    from matplotlib.path import Path as MplPath

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lo, hi = track.bounds(margin)
    w, h = (np.ceil((hi - lo) / resolution)).astype(int)
    cols, rows = np.meshgrid(np.arange(w), np.arange(h))
    px = np.stack([lo[0] + (cols + 0.5) * resolution, lo[1] + (h - 1 - rows + 0.5) * resolution], -1).reshape(
        -1, 2
    )
    left, right = track.boundaries()
    inside = MplPath(left).contains_points(px) ^ MplPath(right).contains_points(px)
    img = np.where(inside.reshape(h, w), _FREE, _OCCUPIED).astype(np.uint8)
    Image.fromarray(img, mode="L").save(directory / f"{track.name}.png")
    meta = {
        "image": f"{track.name}.png",
        "resolution": float(resolution),
        "origin": [float(lo[0]), float(lo[1]), 0.0],
        "negate": 0,
        "occupied_thresh": 0.65,
        "free_thresh": 0.196,
        "mode": "trinary",
    }
    yaml_path = directory / f"{track.name}.yaml"
    yaml_path.write_text(yaml.safe_dump(meta, sort_keys=False))
    table = np.column_stack([track.centreline, track.width_right, track.width_left])
    np.savetxt(
        directory / f"{track.name}.csv",
        table,
        fmt="%.6f",
        delimiter=",",
        header="x_m, y_m, w_tr_right_m, w_tr_left_m",
    )
    return yaml_path


def read_occupancy(yaml_path: str | Path) -> tuple[np.ndarray, float, np.ndarray]:
    """A map_server map as (free mask [H, W] bool, resolution m/px, origin [x, y, yaw]); row 0 is the top."""
    yaml_path = Path(yaml_path)
    if not yaml_path.is_file():
        raise FileNotFoundError(f"map YAML {yaml_path} does not exist")
    try:
        meta = yaml.safe_load(yaml_path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{yaml_path}: invalid YAML: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{yaml_path}: expected a mapping with image/resolution/origin")
    missing = [k for k in ("image", "resolution", "origin") if k not in meta]
    if missing:
        raise ValueError(f"{yaml_path}: missing key(s) {missing}")
    image = (yaml_path.parent / str(meta["image"])).resolve()
    if not image.is_file():
        raise FileNotFoundError(f"{yaml_path}: image {meta['image']!r} not found (looked for {image})")
    res = meta["resolution"]
    origin = meta["origin"]
    if not isinstance(res, int | float) or res <= 0:
        raise ValueError(f"{yaml_path}: resolution must be a positive number, got {res!r}")
    if not (
        isinstance(origin, list) and len(origin) == 3 and all(isinstance(v, int | float) for v in origin)
    ):
        raise ValueError(f"{yaml_path}: origin must be [x, y, yaw], got {origin!r}")
    mode = meta.get("mode", "trinary")
    if mode not in ("trinary", "scale", "raw"):
        raise ValueError(f"{yaml_path}: mode {mode!r} is not one of trinary/scale/raw")
    try:
        with Image.open(image) as im:
            pixels = np.asarray(im.convert("L"), np.float64)
    except OSError as e:
        raise ValueError(f"{image}: cannot read map image: {e}") from e
    if mode == "raw":  # raw: pixel values are occupancy percentages (0 free .. 100 occupied)
        occ = pixels / 100.0
    else:
        occ = pixels / 255.0 if meta.get("negate", 0) else (255.0 - pixels) / 255.0
    free = occ < float(meta.get("free_thresh", 0.196))
    return free, float(res), np.asarray(origin, np.float64)


def _pixels_to_world(cols: np.ndarray, rows: np.ndarray, shape, res: float, origin: np.ndarray) -> np.ndarray:
    x = (cols + 0.5) * res
    y = (shape[0] - 1 - rows + 0.5) * res
    c, s = np.cos(origin[2]), np.sin(origin[2])
    return np.stack([origin[0] + c * x - s * y, origin[1] + s * x + c * y], axis=-1)


def read_waypoints(csv_path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F1TENTH centreline CSV (`x_m, y_m, w_tr_right_m, w_tr_left_m`) -> centreline, width_right, width_left."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"waypoint CSV {csv_path} does not exist")
    try:
        table = np.loadtxt(csv_path, delimiter=",", comments="#", ndmin=2)
    except ValueError as e:
        raise ValueError(
            f"{csv_path}: not a numeric CSV with columns x_m, y_m, w_tr_right_m, w_tr_left_m: {e}"
        ) from e
    if table.shape[1] != 4:
        raise ValueError(
            f"{csv_path}: expected 4 columns (x_m, y_m, w_tr_right_m, w_tr_left_m), got {table.shape[1]}"
        )
    if len(table) < 3 or not np.isfinite(table).all() or (table[:, 2:] <= 0).any():
        raise ValueError(f"{csv_path}: need >= 3 rows of finite values with positive widths")
    if np.allclose(table[0, :2], table[-1, :2]):
        table = table[:-1]
    return table[:, :2], table[:, 2], table[:, 3]


def _world_to_pixels(
    points: np.ndarray, shape, res: float, origin: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `_pixels_to_world`: continuous (cols, rows) of world points [..., 2]."""
    c, s = np.cos(origin[2]), np.sin(origin[2])
    dx, dy = points[..., 0] - origin[0], points[..., 1] - origin[1]
    x, y = c * dx + s * dy, -s * dx + c * dy
    return x / res - 0.5, shape[0] - 1 - (y / res - 0.5)


def _free_loop(free: np.ndarray, path: Path, seeds: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(loop, infield) masks: the free component that forms the track's loop and the obstacle it encloses.

    With `seeds` ([K, 2] (row, col) pixels, e.g. the waypoints), the component most of them lie in. Without,
    the loop is found by topology: a free component that does not touch the image border and encloses an
    obstacle, and whose enclosed region holds no other such component (maps that draw the walls as thin lines
    have free space outside the track, which encloses the track, and inside it, which encloses nothing)."""
    labels, n = ndimage.label(free)  # 4-connected free space; the obstacles are 8-connected
    if n == 0:
        raise ValueError(f"{path}: the map has no free space")
    if seeds is not None:
        r, c = np.round(seeds).astype(np.int64).T
        ok = (r >= 0) & (r < free.shape[0]) & (c >= 0) & (c < free.shape[1])
        hits = np.bincount(labels[r[ok], c[ok]], minlength=n + 1)[1:]
        if hits.sum() == 0:
            raise ValueError(f"{path}: none of the waypoints lies in the map's free space")
        candidates = [int(np.argmax(hits)) + 1]
    else:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        on_border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        candidates = [
            i + 1 for i in np.flatnonzero(sizes >= 0.01 * sizes.max()) if i + 1 not in set(on_border.tolist())
        ]
    rings = {}
    for lab in candidates:
        region = labels == lab
        others, m = ndimage.label(~region, structure=np.ones((3, 3), bool))
        border = set(np.unique(np.concatenate([others[0], others[-1], others[:, 0], others[:, -1]])).tolist())
        holes = [i for i in range(1, m + 1) if i not in border]
        if holes:
            rings[lab] = (region, others, holes)
    if not rings:
        where = "around the waypoints" if seeds is not None else "of the map"
        raise ValueError(
            f"{path}: no free region {where} forms a loop around an obstacle (the track must be a closed "
            "corridor with walls on both sides)"
        )
    innermost = [
        lab
        for lab, (_, others, holes) in rings.items()
        if not any(np.isin(others[labels == other], holes).any() for other in rings if other != lab)
    ]
    if len(innermost) != 1:
        raise ValueError(
            f"{path}: {len(innermost)} separate free loops; pass a waypoint CSV to pick the track"
        )
    region, others, holes = rings[innermost[0]]
    if len(holes) > 1:
        sizes = ndimage.sum_labels(np.ones_like(others), others, holes)
        small = holes[int(np.argmin(sizes))]
        r, c = np.argwhere(others == small)[0]
        raise ValueError(
            f"{path}: the track's free loop encloses {len(holes)} separate obstacles (one at pixel row {r}, "
            f"column {c}); a track has one infield, so remove obstacles and specks inside the track from the image"
        )
    return region, others == holes[0]


def _simplify(points: np.ndarray, tol: float) -> np.ndarray:
    """Keep-mask of an open polyline's vertices such that every dropped vertex lies within `tol` of the
    segment that replaces it (Douglas-Peucker); the end points are kept."""
    keep = np.zeros(len(points), bool)
    keep[[0, -1]] = True
    stack = [(0, len(points) - 1)]
    while stack:
        i, j = stack.pop()
        if j <= i + 1:
            continue
        a, e = points[i], points[j] - points[i]
        rel = points[i + 1 : j] - a
        norm = np.hypot(*e)
        d = np.abs(e[0] * rel[:, 1] - e[1] * rel[:, 0]) / norm if norm > 0 else np.hypot(rel[:, 0], rel[:, 1])
        k = int(np.argmax(d))
        if d[k] > tol:
            keep[i + 1 + k] = True
            stack += [(i, i + 1 + k), (i + 1 + k, j)]
    return keep


def _simplify_closed(loop: np.ndarray, tol: float) -> np.ndarray:
    """A closed polyline with vertices dropped while every dropped one stays within `tol` of the result
    (vertices on a straight run first, then Douglas-Peucker on each half of the loop)."""
    turn = np.roll(loop, -1, 0) - loop
    back = loop - np.roll(loop, 1, 0)
    straight = (np.abs(back[:, 0] * turn[:, 1] - back[:, 1] * turn[:, 0]) < 1e-9) & ((back * turn).sum(1) > 0)
    loop = loop[~straight]
    far = int(np.argmax(np.linalg.norm(loop - loop[0], axis=1)))
    head = _simplify(loop[: far + 1], tol)
    tail = _simplify(np.concatenate([loop[far:], loop[:1]]), tol)
    return loop[np.concatenate([head[:-1], tail[:-1]])]


def _trace_walls(region: np.ndarray, path: Path, tol_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(outer, inner) boundaries of the loop mask as closed polylines in pixel (col, row) coordinates: the
    0.5 level of the mask, which runs along the pixel edges between the loop and the obstacles and cuts their
    corners (within 0.36 px of the edges), simplified to within `tol_px`."""
    import contourpy

    lines = contourpy.contour_generator(z=np.pad(region, 1).astype(np.float32)).lines(0.5)
    loops = [line[:-1] - 1.0 if np.allclose(line[0], line[-1]) else line - 1.0 for line in lines]
    if len(loops) != 2:
        raise ValueError(
            f"{path}: the track's free loop has {len(loops)} boundary curves, expected 2 (outer and inner wall); "
            "thin the walls' diagonal pinches or clear specks at the track's edges in the image"
        )
    outer, inner = sorted(loops, key=lambda loop: -abs(signed_area(loop)))
    return _simplify_closed(outer, tol_px), _simplify_closed(inner, tol_px)


def _extract_centreline(region: np.ndarray, infield: np.ndarray, path: Path, spacing_px: float) -> np.ndarray:
    """Mid-line of the loop in pixel (col, row) coordinates, `spacing_px` apart: the zero level set of
    (distance to the infield) minus (distance to the outer obstacles) inside the loop."""
    import contourpy

    padded, padded_infield = np.pad(region, 1), np.pad(infield, 1)
    rows, cols = np.nonzero(padded)
    r0, r1, c0, c1 = rows.min() - 1, rows.max() + 2, cols.min() - 1, cols.max() + 2  # keep an obstacle rim
    crop, hole = padded[r0:r1, c0:c1], padded_infield[r0:r1, c0:c1]
    d_in = ndimage.distance_transform_edt(~hole)
    d_out = ndimage.distance_transform_edt(crop | hole)
    f = np.where(crop, d_in - d_out, np.nan)
    lines = contourpy.contour_generator(z=np.ma.masked_invalid(f)).lines(0.0)
    if not lines:
        raise ValueError(f"{path}: could not trace a centreline in the free loop")
    line = max(lines, key=len)
    if np.allclose(line[0], line[-1]):
        line = line[:-1]
    line = line + np.array([c0 - 1, r0 - 1])
    step = np.linalg.norm(np.diff(line, axis=0), axis=1).mean()
    line = ndimage.gaussian_filter1d(line, max(1.0, 2.0 / step), axis=0, mode="wrap")  # ~2 px: pixel noise
    perim = np.linalg.norm(np.diff(np.concatenate([line, line[:1]]), axis=0), axis=1).sum()
    return _resample_closed(line, max(int(perim / spacing_px), 16))


def load_map(
    yaml_path: str | Path,
    waypoints_csv: str | Path | None = None,
    *,
    spacing: float = 0.2,
    wall_tol: float = 0.5,
) -> Track:
    """A `Track` from a ROS map_server map. The walls are the boundaries of the free loop traced from the
    image (simplified to within `wall_tol` pixels). With `waypoints_csv` (F1TENTH centreline format) the
    centreline comes from it (and picks the free region it lies in); without, it is the loop's mid-line,
    `spacing` m apart, counter-clockwise, with s = 0 wherever the traced loop starts. The widths are the
    distances from the centreline to the traced walls."""
    yaml_path = Path(yaml_path)
    free, res, origin = read_occupancy(yaml_path)
    seeds = centre = None
    if waypoints_csv is not None:
        centre, _, _ = read_waypoints(waypoints_csv)
        cols, rows = _world_to_pixels(centre, free.shape, res, origin)
        seeds = np.stack([rows, cols], 1)
    region, infield = _free_loop(free, yaml_path, seeds)
    outer, inner = (
        _pixels_to_world(w[:, 0], w[:, 1], free.shape, res, origin)
        for w in _trace_walls(region, yaml_path, wall_tol)
    )
    if centre is None:
        line = _extract_centreline(region, infield, yaml_path, spacing / res)
        centre = _pixels_to_world(line[:, 0], line[:, 1], free.shape, res, origin)
        if signed_area(centre) < 0:
            centre = centre[::-1]
    direction = np.sign(signed_area(centre))
    left, right = (inner, outer) if direction > 0 else (outer, inner)
    left, right = (w if np.sign(signed_area(w)) == direction else w[::-1] for w in (left, right))
    width_left, width_right = distance_to_loop(centre, left), distance_to_loop(centre, right)
    return Track(yaml_path.stem, centre, width_left, width_right, left_wall=left, right_wall=right)


# ---------------------------------------------------------------------------------------- registry

# name -> procedural_track kwargs; the files in src/envs/tracks/ are generated from exactly these.
BUNDLED_SPECS: dict[str, dict] = {
    "default": {"seed": 3},
    "wide_loop": {"seed": 11, "mean_radius": 12.0, "min_width": 2.5, "max_width": 3.5},
    "twisty": {"seed": 5, "n_harmonics": 6, "amplitude": 0.35, "min_curvature_radius": 2.0},
}


@functools.cache
def bundled_tracks() -> dict[str, Track]:
    """The tracks shipped in src/envs/tracks/ (map PNG + YAML + centreline CSV), by name."""
    out = {}
    for name in BUNDLED_SPECS:
        yaml_path = BUNDLED_DIR / f"{name}.yaml"
        out[name] = load_map(yaml_path, BUNDLED_DIR / f"{name}.csv")
    return out


def get_track(name_or_path: str | Path) -> Track:
    """A bundled track by name ("default" is the default), or a map YAML path (a CSV next to it named
    `<stem>.csv` or `<stem minus _map>_centerline.csv` supplies the centreline when present)."""
    key = str(name_or_path)
    if key in BUNDLED_SPECS:
        return bundled_tracks()[key]
    path = Path(key)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"unknown track {key!r}; bundled: {sorted(BUNDLED_SPECS)} or a map .yaml path")
    stem = path.stem
    for cand in (path.with_suffix(".csv"), path.with_name(stem.removesuffix("_map") + "_centerline.csv")):
        if cand.is_file():
            return load_map(path, cand)
    return load_map(path)


def main(argv: list[str] | None = None) -> None:
    """Regenerate the bundled track files from BUNDLED_SPECS."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", default=str(BUNDLED_DIR))
    args = parser.parse_args(argv)
    for name, spec in BUNDLED_SPECS.items():
        track = procedural_track(name=name, **spec)
        print(f"{name}: length {track.length:.1f} m -> {write_map(track, args.out)}")


if __name__ == "__main__":
    main()
