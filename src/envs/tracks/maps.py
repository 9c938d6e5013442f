"""ROS map_server maps (PNG/PGM + YAML) and F1TENTH centreline CSVs: reading, writing, and a `Track` from them.

A map's walls are traced from its image, which is the ground truth (`tracing`): the two boundaries of the free
region that forms the loop. Its centreline is read from an F1TENTH waypoint CSV (`# x_m, y_m, w_tr_right_m,
w_tr_left_m`; the CSV's widths are replaced by the measured distances to the traced walls) or extracted as the
mid-line of that loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from src.envs.tracks.geometry import Track, distance_to_loop, signed_area
from src.envs.tracks.tracing import extract_centreline, free_loop, trace_walls

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


def pixels_to_world(cols: np.ndarray, rows: np.ndarray, shape, res: float, origin: np.ndarray) -> np.ndarray:
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


def world_to_pixels(
    points: np.ndarray, shape, res: float, origin: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `pixels_to_world`: continuous (cols, rows) of world points [..., 2]."""
    c, s = np.cos(origin[2]), np.sin(origin[2])
    dx, dy = points[..., 0] - origin[0], points[..., 1] - origin[1]
    x, y = c * dx + s * dy, -s * dx + c * dy
    return x / res - 0.5, shape[0] - 1 - (y / res - 0.5)


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
        cols, rows = world_to_pixels(centre, free.shape, res, origin)
        seeds = np.stack([rows, cols], 1)
    region, infield = free_loop(free, yaml_path, seeds)
    outer, inner = (
        pixels_to_world(w[:, 0], w[:, 1], free.shape, res, origin)
        for w in trace_walls(region, yaml_path, wall_tol)
    )
    if centre is None:
        line = extract_centreline(region, infield, yaml_path, spacing / res)
        centre = pixels_to_world(line[:, 0], line[:, 1], free.shape, res, origin)
        if signed_area(centre) < 0:
            centre = centre[::-1]
    direction = np.sign(signed_area(centre))
    left, right = (inner, outer) if direction > 0 else (outer, inner)
    left, right = (w if np.sign(signed_area(w)) == direction else w[::-1] for w in (left, right))
    width_left, width_right = distance_to_loop(centre, left), distance_to_loop(centre, right)
    return Track(yaml_path.stem, centre, width_left, width_right, left_wall=left, right_wall=right)
