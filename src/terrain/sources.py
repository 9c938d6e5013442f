"""Trajectories of top-down ground images from disk: a simple top-down episode format and CMHT sequences.

Top-down episode directory (what any recorder, e.g. the simulator, writes with `write_topdown_episode`):
    ground.json            {"px_per_m": float, "robot_pixel": [row, col]}
    poses.csv              header `t,x,y,yaw,valid`, one row per frame (s, m, m, rad, 0/1)
    frames/NNNNNN.png      the top-down image (8-bit grey or RGB)
    valid/NNNNNN.png       optional 8-bit mask, 0 where nothing was seen (absent: every pixel valid)

CMHT sequence: each LiDAR sweep becomes a BEV image (channels picked from `bev.lidar_bev`, scaled to
uint8) at the pose GPS gives it after sync (east, north, heading of motion); sweeps without a GPS pose are
odometry gaps. A LiDAR's ground returns lie on rings that leave empty cells between them, so a cell within
`fill_cells` of a return is filled with the largest value around it and counts as seen; cells farther from any
return stay invalid (a patch over them is not fully in view).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from src import contract
from src.contract import BevGrid
from src.data import sync
from src.data.bev import lidar_bev
from src.data.cmht.index import Sequence
from src.data.errors import CMHTFormatError
from src.data.pcd import read_pcd
from src.terrain.extract import GroundGeometry, Trajectory

BEV_CHANNELS = {"occupancy": 0, "height": 1, "intensity": 2, "density": 3}


class TrajectoryFormatError(ValueError):
    """A trajectory on disk does not fit its format; the message names the file."""


def write_topdown_episode(
    out: str | Path, traj: Trajectory, geom: GroundGeometry
) -> Path:
    """Write `traj` as a top-down episode directory (module docstring)."""
    out = Path(out)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    (out / "valid").mkdir(exist_ok=True)
    (out / "ground.json").write_text(
        json.dumps({"px_per_m": geom.px_per_m, "robot_pixel": [geom.robot_row, geom.robot_col]})
    )
    with open(out / "poses.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t", "x", "y", "yaw", "valid"])
        for t, (x, y, yaw), ok in zip(traj.times, traj.poses, traj.pose_valid):
            writer.writerow([repr(float(t)), repr(float(x)), repr(float(y)), repr(float(yaw)), int(ok)])
    for k, (image, valid) in enumerate(zip(traj.images, traj.valid)):
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(out / "frames" / f"{k:06d}.png")
        Image.fromarray(valid.astype(np.uint8) * 255).save(out / "valid" / f"{k:06d}.png")
    return out


def read_topdown_episode(folder: str | Path) -> tuple[Trajectory, GroundGeometry]:
    """A top-down episode directory -> (trajectory, geometry); a malformed file raises naming it."""
    folder = Path(folder)
    ground = folder / "ground.json"
    try:
        spec = json.loads(ground.read_text())
        geom = GroundGeometry(float(spec["px_per_m"]), float(spec["robot_pixel"][0]), float(spec["robot_pixel"][1]))
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise TrajectoryFormatError(f"{ground}: expected {{px_per_m, robot_pixel: [row, col]}}: {e}") from e
    poses_csv = folder / "poses.csv"
    try:
        with open(poses_csv, newline="") as f:
            rows = list(csv.DictReader(f))
        table = np.array([[float(r[k]) for k in ("t", "x", "y", "yaw", "valid")] for r in rows], np.float64)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TrajectoryFormatError(f"{poses_csv}: expected columns t,x,y,yaw,valid with numbers: {e}") from e
    frames = sorted((folder / "frames").glob("*.png"))
    if len(frames) != len(table) or not frames:
        raise TrajectoryFormatError(f"{folder}: {len(frames)} frames/*.png for {len(table)} rows of poses.csv")
    images, valid = [], []
    for path in frames:
        image = np.asarray(Image.open(path))
        if image.dtype != np.uint8:
            raise TrajectoryFormatError(f"{path}: expected an 8-bit image, got {image.dtype}")
        images.append(image[..., None] if image.ndim == 2 else image[..., :3])
        mask_path = folder / "valid" / path.name
        valid.append(np.asarray(Image.open(mask_path)) > 0 if mask_path.exists() else np.ones(image.shape[:2], bool))
    try:
        traj = Trajectory(np.stack(images), np.stack(valid), table[:, 1:4], table[:, 0], table[:, 4] > 0)
    except ValueError as e:
        raise TrajectoryFormatError(f"{folder}: {e}") from e
    return traj, geom


def cmht_geometry(grid: contract.BevGrid) -> GroundGeometry:
    """The BEV grid's scale and the LiDAR's pixel (BEV convention; square cells required)."""
    dx, dy = grid.cell_size
    if abs(dx - dy) > 1e-9:
        raise ValueError(f"terrain patches need square BEV cells, got {dx} x {dy} m")
    return GroundGeometry(1.0 / dx, grid.x_range[1] / dx - 0.5, grid.y_range[1] / dy - 0.5)


def cmht_poses(seq: Sequence, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SE(2) poses [S, 3] (east, north, heading of motion) and their validity [S] at `times`, from GPS via sync."""
    table = sync.sync_sequence(times, {}, seq.gps_imu())
    return contract.gps_pose(table.gps), table.valid["gps"]


def fill_gaps(image: np.ndarray, occupied: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """(image with empty cells near returns filled by the neighbourhood maximum, seen mask) (module docstring)."""
    if cells == 0:
        return image, occupied
    size = 2 * cells + 1
    seen = ndimage.maximum_filter(occupied, size=size, mode="constant", cval=False)
    grown = ndimage.maximum_filter(image, size=(size, size, 1), mode="constant", cval=0)
    return np.where(occupied[..., None], image, grown), seen


def cmht_trajectory(
    seq: Sequence,
    grid: BevGrid,
    channels: tuple[str, ...] = ("intensity", "height"),
    fill_cells: int = 1,
) -> Trajectory:
    """One CMHT sequence's LiDAR sweeps as BEV images along the GPS trajectory (module docstring)."""
    unknown = [c for c in channels if c not in BEV_CHANNELS]
    if unknown or not channels:
        raise ValueError(f"BEV channels {unknown or channels}: choose from {sorted(BEV_CHANNELS)}")
    if "lidar" not in seq.streams:
        raise CMHTFormatError(f"{seq.path}: no lidar stream to draw top-down images from")
    stream = seq.streams["lidar"]
    pick = [BEV_CHANNELS[c] for c in channels]
    images = np.zeros((len(stream), grid.height, grid.width, len(pick)), np.uint8)
    valid = np.zeros((len(stream), grid.height, grid.width), np.bool_)
    for k, path in enumerate(stream.files):
        bev = lidar_bev(read_pcd(path), grid)
        image = np.clip(np.rint(bev[..., pick] * 255.0), 0, 255).astype(np.uint8)
        images[k], valid[k] = fill_gaps(image, bev[..., 0] > 0, fill_cells)
    poses, ok = cmht_poses(seq, stream.timestamps)
    return Trajectory(images, valid, poses, np.asarray(stream.timestamps, np.float64), ok)
