"""Track geometry shared by both simulators: a closed centreline with left/right widths.

Everything else derives from it: the wall polylines (what the PyBullet mesh and the JAX distance field are
built from), progress along the centreline (laps, checkpoints, wrong-way detection) and the start pose.
Tracks come from a seeded procedural generator, or from ROS map_server maps (PNG/PGM + YAML) with the
centreline either read from an F1TENTH waypoint CSV (`# x_m, y_m, w_tr_right_m, w_tr_left_m`) or extracted
from the free space (mid-level set between the inner and outer obstacles). The bundled tracks in
`src/envs/tracks/` were written by `python -m src.envs.tracks` from fixed seeds and load through `load_map`.
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

    # ------------------------------------------------------------------------------------ geometry

    @functools.cached_property
    def arc_length(self) -> np.ndarray:
        """[N] arc length at each centreline point (0 at index 0)."""
        seg = np.linalg.norm(np.roll(self.centreline, -1, axis=0) - self.centreline, axis=1)
        return np.concatenate([[0.0], np.cumsum(seg)[:-1]])

    @functools.cached_property
    def length(self) -> float:
        return float(np.linalg.norm(np.roll(self.centreline, -1, axis=0) - self.centreline, axis=1).sum())

    def boundaries(self) -> tuple[np.ndarray, np.ndarray]:
        """Left and right wall vertices [N, 2] each (closed polylines)."""
        t = _tangents(self.centreline)
        n = np.stack([-t[:, 1], t[:, 0]], axis=1)  # left normal
        return (
            self.centreline + n * self.width_left[:, None],
            self.centreline - n * self.width_right[:, None],
        )

    def walls(self) -> np.ndarray:
        """[2N, 4] float32 wall segments (x0, y0, x1, y1): the left boundary, then the right one."""
        segs = [np.concatenate([b, np.roll(b, -1, axis=0)], axis=1) for b in self.boundaries()]
        return np.concatenate(segs).astype(np.float32)

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


def _segments_intersect(segs: np.ndarray, closed_len: np.ndarray) -> bool:
    """Whether any two non-adjacent segments of the polylines properly cross (orientation test, all pairs).

    `closed_len` gives the length of each closed polyline in `segs` (in order), so that consecutive segments
    of one loop, which share an end point, are not counted.
    """
    p, q = segs[:, :2], segs[:, 2:]

    def orient(a, b, c):
        return np.sign(
            (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1])
            - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])
        )

    P1, Q1 = p[:, None], q[:, None]
    P2, Q2 = p[None], q[None]
    cross = (orient(P1, Q1, P2) * orient(P1, Q1, Q2) < 0) & (orient(P2, Q2, P1) * orient(P2, Q2, Q1) < 0)
    loop = np.repeat(np.arange(len(closed_len)), closed_len)
    idx = np.concatenate([np.arange(n) for n in closed_len])
    n_of = np.repeat(closed_len, closed_len)
    same = loop[:, None] == loop[None]
    gap = np.abs(idx[:, None] - idx[None])
    adjacent = same & ((gap <= 1) | (gap >= n_of[:, None] - 1))
    return bool((cross & ~adjacent).any())


def check_track(track: Track, min_width: float = 0.0, min_gap: float = 0.0) -> None:
    """Raise ValueError when the track self-intersects, is narrower than `min_width` (left + right), or when
    a wall comes closer than `min_gap` to another part of the track's corridor."""
    total = track.width_left + track.width_right
    if total.min() < min_width - 1e-9:
        raise ValueError(f"track {track.name!r}: width {total.min():.3f} m < min_width {min_width} m")
    n = len(track.centreline)
    left, right = track.boundaries()
    c = track.centreline
    segs = np.concatenate([np.concatenate([b, np.roll(b, -1, axis=0)], axis=1) for b in (c, left, right)])
    if _segments_intersect(segs, np.array([n, n, n])):
        raise ValueError(f"track {track.name!r}: centreline or walls self-intersect")
    # A wall vertex must stay outside every other part's corridor (+ gap); "other part" = far along the loop.
    s = track.arc_length
    ds = np.abs(s[:, None] - s[None])
    far = np.minimum(ds, track.length - ds) > 3.0 * total.max()
    half = np.maximum(track.width_left, track.width_right)
    for wall in (left, right):
        d = np.linalg.norm(wall[:, None] - c[None], axis=-1)
        if (far & (d < half[None] + min_gap)).any():
            raise ValueError(
                f"track {track.name!r}: a wall comes within {min_gap} m of another part of the track"
            )


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


def _extract_centreline(free: np.ndarray, res: float, origin: np.ndarray, path: Path, spacing: float):
    """Centreline of the largest free region: the zero level set of (distance to the inner obstacle) minus
    (distance to the outer obstacles), which is the loop midway between the walls."""
    import contourpy

    labels, n = ndimage.label(free)
    if n == 0:
        raise ValueError(f"{path}: the map has no free space")
    region = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    blocked_labels, nb = ndimage.label(~region)
    border = np.unique(
        np.concatenate([blocked_labels[0], blocked_labels[-1], blocked_labels[:, 0], blocked_labels[:, -1]])
    )
    inner = [i for i in range(1, nb + 1) if i not in set(border.tolist())]
    if not inner:
        raise ValueError(f"{path}: the free space is not a loop around an obstacle; pass a waypoint CSV")
    sizes = ndimage.sum_labels(np.ones_like(blocked_labels), blocked_labels, inner)
    hole = blocked_labels == inner[int(np.argmax(sizes))]
    d_in = ndimage.distance_transform_edt(~hole)
    d_out = ndimage.distance_transform_edt(region | hole)
    f = np.where(region, d_in - d_out, np.nan)
    lines = contourpy.contour_generator(z=np.ma.masked_invalid(f)).lines(0.0)
    if not lines:
        raise ValueError(f"{path}: could not trace a centreline in the free space")
    line = max(lines, key=len)
    if np.allclose(line[0], line[-1]):
        line = line[:-1]
    cols, rows = line[:, 0], line[:, 1]
    pts = _pixels_to_world(cols, rows, free.shape, res, origin)
    # Widths: distance to the obstacle pixel centres minus half a pixel (the wall is the pixel edge).
    w_in = (ndimage.map_coordinates(d_in, [rows, cols], order=1) - 0.5) * res
    w_out = (ndimage.map_coordinates(d_out, [rows, cols], order=1) - 0.5) * res
    perim = np.linalg.norm(np.diff(np.concatenate([pts, pts[:1]]), axis=0), axis=1).sum()
    n_pts = max(int(perim / spacing), 16)
    sigma = max(1.0, 2.0 * len(pts) / n_pts)
    pts = ndimage.gaussian_filter1d(pts, sigma, axis=0, mode="wrap")
    w_in = ndimage.gaussian_filter1d(w_in, sigma, mode="wrap")
    w_out = ndimage.gaussian_filter1d(w_out, sigma, mode="wrap")
    closed = np.concatenate([pts, pts[:1]])
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
    t = np.linspace(0.0, s[-1], n_pts, endpoint=False)
    centre = np.stack([np.interp(t, s, closed[:, 0]), np.interp(t, s, closed[:, 1])], axis=1)
    w_in = np.interp(t, s, np.concatenate([w_in, w_in[:1]]))
    w_out = np.interp(t, s, np.concatenate([w_out, w_out[:1]]))
    area = 0.5 * np.sum(centre[:, 0] * np.roll(centre[:, 1], -1) - np.roll(centre[:, 0], -1) * centre[:, 1])
    if area < 0:  # counter-clockwise, so the inner obstacle is on the left
        centre, w_in, w_out = centre[::-1], w_in[::-1], w_out[::-1]
    return centre, np.maximum(w_in, res / 2), np.maximum(w_out, res / 2)


def load_map(
    yaml_path: str | Path, waypoints_csv: str | Path | None = None, *, spacing: float = 0.2
) -> Track:
    """A `Track` from a ROS map_server map. With `waypoints_csv` (F1TENTH centreline format) the centreline and
    widths come from it; without, they are extracted from the free space (counter-clockwise, `spacing` m apart;
    s = 0 is wherever the traced loop starts)."""
    yaml_path = Path(yaml_path)
    free, res, origin = read_occupancy(yaml_path)
    name = yaml_path.stem
    if waypoints_csv is not None:
        centre, w_right, w_left = read_waypoints(waypoints_csv)
        return Track(name, centre, w_left, w_right)
    centre, w_left, w_right = _extract_centreline(free, res, origin, yaml_path, spacing)
    return Track(name, centre, w_left, w_right)


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
