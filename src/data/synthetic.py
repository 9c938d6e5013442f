"""Synthetic CMHT sequences in the real file layout, so that every reader and the pipeline run without the data.

    python -m src.data.synthetic cmht --out DIR --frames N [--seed S] [--points P]

Layout written under `out` (one sequence; SUSTechPOINTS-style sensor folders, KITTI-style Gps_Imu as released):
    lidar/NNNNNNNN.pcd            binary PCD, x y z intensity (float32) ring (uint16) time (float32, s in sweep)
    lidar/timestamp.txt           one integer millisecond count a line, one line per file (same for every sensor)
    camera/front/NNNNNNNN.jpg     1280x720 colour JPEG              + camera/front/timestamp.txt
    camera/ir/NNNNNNNN.png        640x512 16-bit greyscale PNG      + camera/ir/timestamp.txt
    radar/front_points/NNNNNNNN.pcd  binary PCD, x y z vx vy rcs (float32), the radar's own frame + timestamp.txt
    Gps_Imu/dataformat.txt, Gps_Imu/data/NNNNNNNN.txt (8 lines as in the real records), Gps_Imu/data/timestamp.txt
    calib/camera/front.json, calib/camera/ir.json   (the real sample's values)
    calib/radar/front_points.json  the radar's pose in the LiDAR frame: on the front bumper, yawed 7 degrees (the
                                   real sample's is all zeros, which would hide a reader that ignores it)
    label/NNNNNNNN.json           boxes in the LiDAR frame, indexed by LiDAR sweep; ~10% of sweeps unlabelled

Every sensor runs at its own rate (LiDAR 10 Hz, camera 15 Hz, IR 9 Hz, radar 13 Hz, GPS/IMU 10 Hz) with a few ms of
jitter and ~5% dropped frames; the GPS position is held for ~4 s between fixes, as in the real receiver.
The scene: the ego car drives a straight road between two low walls; vehicles in the other lanes and pedestrians
move relative to it. Each actor is a box seen consistently by every sensor: LiDAR rays hit its surfaces, the
cameras draw it projected through the calibration (warm in IR), the radar returns points with its velocity, and
the labels carry it. Deterministic for a seed; each frame draws from its own seeded generator.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from src.config import DataConfig
from src.data.cmht.readers import GPS_DATAFORMAT, degrees_to_ddmm, radar_to_lidar, write_timestamps
from src.data.pcd import write_pcd

T0_MS = 923_331_000  # the real sample's first timestamp: an arbitrary epoch, not Unix time
LAT0, LON0 = 43.228872, -79.939057  # the real sample's first fix (Hamilton, Ontario)
RATES = {"lidar": 10.0, "rgb": 15.0, "ir": 9.0, "radar": 13.0, "gps_imu": 10.0}
JITTER_S = 0.002
DROP_PROB = 0.05
GPS_HOLD_S = 4.0
LIDAR_HEIGHT = 1.8  # ground is z = -1.8 in the LiDAR frame
WALL_Y = (-9.0, 9.0)
WALL_TOP = -0.8
LIDAR_RINGS = 32
LIDAR_ELEVATION_DEG = (-25.0, -1.2)
MAX_RANGE = 100.0
EGO_SPEED = 12.0
FRONT_SIZE, IR_SIZE = (1280, 720), (640, 512)

FRONT_CALIB = {
    "extrinsic": [
        0.0625666089119701, -0.998021964187949, -0.00613012623730141, -0.215424739527230,
        -0.151077250525747, -0.00339938678871338, -0.988516114457949, -0.120541267392768,
        0.986539955512618, 0.0627742237537781, -0.150991102417571, -0.164504810828037,
        0.0, 0.0, 0.0, 1.0,
    ],
    "intrinsic": [738.264936107773, 0.0, 619.168236211166, 0.0, 737.794823072168, 371.029702332477, 0.0, 0.0, 1.0],
}  # fmt: skip
IR_CALIB = {
    "extrinsic": [
        0.00840510785491956, -0.999961190748392, -0.002640295249633, 0.168286110980556,
        -0.142759677144184, 0.00141339341761096, -0.989756372498170, -0.0469181408292542,
        0.989721692570005, 0.008695936758344, -0.142742257023837, -0.150966608607935,
        0.0, 0.0, 0.0, 1.0,
    ],
    "intrinsic": [757.158013839009, 0.0, 336.551379339968, 0.0, 757.102894126381, 272.352206300216, 0.0, 0.0, 1.0],
}  # fmt: skip
# radar -> LiDAR pose (SUSTechPOINTS format, `radar_to_lidar`): 2.2 m ahead, 0.3 m left, 1.3 m below the LiDAR
RADAR_CALIB = {"translation": [2.2, 0.3, -1.3], "coordinatesOffset": [0, 0, 0], "rotation": [0, 0, 0.12]}
RADAR_TO_LIDAR = radar_to_lidar(RADAR_CALIB["rotation"], RADAR_CALIB["translation"])
# class: (length, width, height, LiDAR intensity, radar RCS dBsm, IR level)
CLASSES = {
    "Car": (4.6, 1.9, 1.6, 150.0, 10.0, 7000),
    "Van": (5.2, 2.1, 2.2, 140.0, 13.0, 7500),
    "Truck": (8.5, 2.6, 3.2, 170.0, 20.0, 8000),
    "Pedestrian": (0.6, 0.6, 1.75, 60.0, -5.0, 9500),
}
# lanes: (y, yaw, speed range m/s, classes); vehicles keep to lanes, pedestrians walk along the walls
LANES = (
    (-3.5, 0.0, (8.0, 16.0), ("Car", "Car", "Van", "Truck")),
    (3.5, math.pi, (8.0, 16.0), ("Car", "Car", "Van", "Truck")),
    (7.0, math.pi, (8.0, 14.0), ("Car", "Van")),
    (-7.8, 0.0, (1.0, 1.8), ("Pedestrian",)),
    (7.9, math.pi, (1.0, 1.8), ("Pedestrian",)),
)
SPAN = 120.0  # actors wrap around in x within [-SPAN/2, SPAN/2) relative to the ego


@dataclasses.dataclass(frozen=True)
class Actors:
    """K boxes moving at constant velocity relative to the ego (x wraps around within SPAN)."""

    classes: tuple[str, ...]
    x0: np.ndarray  # [K] m at t = 0
    y: np.ndarray  # [K]
    vx: np.ndarray  # [K] m/s relative to the ego, LiDAR frame
    yaw: np.ndarray  # [K]
    size: np.ndarray  # [K, 3] l, w, h
    colour: np.ndarray  # [K, 3] uint8

    def at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Boxes [K, 7] (x, y, z, l, w, h, yaw) at time t (s since the start) and their track ids [K]."""
        shifted = self.x0 + self.vx * t + SPAN / 2
        x = np.mod(shifted, SPAN) - SPAN / 2
        laps = np.floor(shifted / SPAN).astype(np.int64)
        z = -LIDAR_HEIGHT + self.size[:, 2] / 2
        boxes = np.stack([x, self.y, z, self.size[:, 0], self.size[:, 1], self.size[:, 2], self.yaw], axis=-1)
        return boxes, np.arange(len(self.x0)) * 1000 + laps


def make_actors(rng: np.random.Generator, count: int = 10) -> Actors:
    lane = rng.integers(0, len(LANES), count)
    classes = tuple(str(rng.choice(LANES[k][3])) for k in lane)
    speed = np.array([rng.uniform(*LANES[k][2]) for k in lane])
    yaw = np.array([LANES[k][1] for k in lane])
    size = np.array([CLASSES[c][:3] for c in classes]) * rng.uniform(0.9, 1.1, (count, 3))
    return Actors(
        classes=classes,
        x0=rng.uniform(-SPAN / 2, SPAN / 2, count),
        y=np.array([LANES[k][0] for k in lane]) + rng.normal(0, 0.2, count),
        vx=speed * np.cos(yaw) - EGO_SPEED,
        yaw=yaw,
        size=size,
        colour=rng.integers(30, 230, (count, 3)).astype(np.uint8),
    )


def sensor_times(
    rng: np.random.Generator, rate: float, start: float, end: float | None = None, count: int | None = None
) -> np.ndarray:
    """Record times (s) at `rate` with jitter and dropped frames: `count` of them, or all in [start, end]."""
    period = 1.0 / rate
    n = count * 2 + 10 if count is not None else int((end - start) / period) + 1
    t = start + np.arange(n) * period + np.clip(rng.normal(0, JITTER_S, n), -0.2 * period, 0.2 * period)
    keep = rng.random(n) >= DROP_PROB
    keep[0] = True
    t = t[keep]
    t = t[:count] if count is not None else t[t <= end]
    return np.round(t * 1000.0) / 1000.0  # whole milliseconds, as the files store them


# --------------------------------------------------------------------------------------------- LiDAR / radar


def _ray_box(direction: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Distance along unit rays from the origin [R, 3] to each box [K, 7] (inf where missed) -> [R, K]."""
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    # into each box's frame: rotate by -yaw about z, origin shifted to the box centre
    o = np.stack(
        [-(c * boxes[:, 0] + s * boxes[:, 1]), -(-s * boxes[:, 0] + c * boxes[:, 1]), -boxes[:, 2]], -1
    )
    dx = direction[:, None, 0] * c + direction[:, None, 1] * s
    dy = -direction[:, None, 0] * s + direction[:, None, 1] * c
    dz = np.broadcast_to(direction[:, None, 2], dx.shape)
    tmin = np.zeros(dx.shape, np.float32)
    tmax = np.full(dx.shape, np.inf, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis, d in enumerate((dx, dy, dz)):
            half = boxes[:, 3 + axis] / 2
            inv = 1.0 / d
            t1 = (-half - o[:, axis]) * inv
            t2 = (half - o[:, axis]) * inv
            tmin = np.fmax(tmin, np.fmin(t1, t2))
            tmax = np.fmin(tmax, np.fmax(t1, t2))
    return np.where(tmax >= tmin, tmin, np.inf)


def _box_hits(d: np.ndarray, az: np.ndarray, n_az: int, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest box hit along each ray [R] and which box [R]; each box only tests the columns it spans in azimuth."""
    t_box = np.full(len(d), np.inf, np.float32)
    box = np.zeros(len(d), np.int64)
    corners = box_corners_3d(boxes.astype(np.float64))[:, :4, :2]
    centre = np.arctan2(boxes[:, 1], boxes[:, 0])
    half = np.abs(_wrap(np.arctan2(corners[..., 1], corners[..., 0]) - centre[:, None])).max(axis=1) + 0.01
    rings = np.arange(LIDAR_RINGS)[:, None] * n_az
    for k in range(len(boxes)):  # a few boxes, each over its own ray subset
        cols = np.flatnonzero(np.abs(_wrap(az - centre[k])) <= half[k])
        idx = (rings + cols[None]).ravel()
        idx = idx[idx < len(d)]
        t = _ray_box(d[idx], boxes[k : k + 1])[:, 0]
        closer = t < t_box[idx]
        t_box[idx[closer]] = t[closer]
        box[idx[closer]] = k
    return t_box, box


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def lidar_sweep(rng: np.random.Generator, boxes: np.ndarray, intensity: np.ndarray, points: int) -> dict:
    """One sweep of ~`points` returns from ground, walls and boxes (first hit along each ray)."""
    n_az = max(1, math.ceil(points / LIDAR_RINGS))
    el = np.radians(np.linspace(*LIDAR_ELEVATION_DEG, LIDAR_RINGS, dtype=np.float32))
    az = (np.arange(n_az, dtype=np.float32) / n_az - 0.5) * np.float32(2 * np.pi) + np.float32(
        rng.uniform(0, 0.01)
    )
    ring = np.repeat(np.arange(LIDAR_RINGS, dtype=np.uint16), n_az)[:points]
    col = np.tile(np.arange(n_az), LIDAR_RINGS)[:points]
    ce, se = np.cos(el)[ring], np.sin(el)[ring]
    d = np.stack([ce * np.cos(az)[col], ce * np.sin(az)[col], se], axis=-1)
    t_ground = -LIDAR_HEIGHT / d[:, 2]
    with np.errstate(divide="ignore"):
        t_wall = np.where(d[:, 1] > 0, WALL_Y[1] / d[:, 1], WALL_Y[0] / d[:, 1])
    t_wall = np.where((t_wall > 0) & (t_wall * d[:, 2] <= WALL_TOP), t_wall, np.inf)
    hits = np.stack([t_ground, t_wall], axis=-1)
    base = np.array([15.0, 80.0], np.float32)
    if len(boxes):
        t_box, box = _box_hits(d, az, n_az, boxes.astype(np.float32))
        hits = np.concatenate([hits, t_box[:, None]], axis=-1)
        base = np.concatenate([base, [0.0]]).astype(np.float32)
    which = np.argmin(hits, axis=-1)
    value = base[which]
    if len(boxes):
        on_box = which == 2
        value[on_box] = intensity[box[on_box]]
    which = np.argmin(hits, axis=-1)
    rng_m = np.take_along_axis(hits, which[:, None], axis=-1)[:, 0]
    keep = rng_m <= MAX_RANGE
    rng_m = rng_m[keep] + rng.normal(0, 0.015, int(keep.sum())).astype(np.float32)
    xyz = d[keep] * rng_m[:, None]
    return {
        "x": xyz[:, 0].astype(np.float32),
        "y": xyz[:, 1].astype(np.float32),
        "z": xyz[:, 2].astype(np.float32),
        "intensity": np.clip(value[keep] + rng.normal(0, 5, len(rng_m)), 0, 255).astype(np.float32),
        "ring": ring[keep],
        "time": (col[keep] / n_az * 0.1).astype(np.float32),
    }


def radar_scan(rng: np.random.Generator, boxes: np.ndarray, vx: np.ndarray, rcs: np.ndarray) -> dict:
    """Detections of the boxes (LiDAR frame) in the radar's forward field of view, with their velocity, plus wall
    clutter; returned in the radar's own frame (`RADAR_TO_LIDAR` inverted), as a real radar writes them."""
    rot, shift = RADAR_TO_LIDAR[:3, :3], RADAR_TO_LIDAR[:3, 3]
    centre = (boxes[:, :3] - shift) @ rot  # box centres in the radar frame (rot.T applied to each row)
    fov = (
        (centre[:, 0] > 1.0)
        & (np.abs(np.arctan2(centre[:, 1], centre[:, 0])) < np.radians(60))
        & (np.hypot(centre[:, 0], centre[:, 1]) < 80.0)
    )
    per = rng.integers(2, 6, len(boxes)) * fov
    k = np.repeat(np.arange(len(boxes)), per)
    u = rng.uniform(-0.5, 0.5, (len(k), 3)) * boxes[k, 3:6]
    c, s = np.cos(boxes[k, 6]), np.sin(boxes[k, 6])
    obj = np.stack([boxes[k, 0] + c * u[:, 0] - s * u[:, 1], boxes[k, 1] + s * u[:, 0] + c * u[:, 1],
                    boxes[k, 2] + u[:, 2]], -1)  # fmt: skip
    n_clutter = int(rng.integers(8, 16))
    clutter = np.stack(
        [
            rng.uniform(5, 70, n_clutter),
            rng.choice(WALL_Y, n_clutter),
            rng.uniform(-1.8, WALL_TOP, n_clutter),
        ],
        -1,
    )
    xyz = np.concatenate([obj, clutter]) + rng.normal(0, 0.15, (len(k) + n_clutter, 3))
    velocity = np.zeros((len(xyz), 3))
    velocity[:, 0] = np.concatenate([vx[k], np.full(n_clutter, -EGO_SPEED)]) + rng.normal(0, 0.1, len(xyz))
    velocity[:, 1] = rng.normal(0, 0.1, len(xyz))
    xyz, velocity = (xyz - shift) @ rot, velocity @ rot  # LiDAR -> radar frame (the rotation is about z only)
    return {
        "x": xyz[:, 0].astype(np.float32),
        "y": xyz[:, 1].astype(np.float32),
        "z": xyz[:, 2].astype(np.float32),
        "vx": velocity[:, 0].astype(np.float32),
        "vy": velocity[:, 1].astype(np.float32),
        "rcs": (np.concatenate([rcs[k], rng.uniform(-5, 5, n_clutter)]) + rng.normal(0, 1, len(xyz))).astype(
            np.float32
        ),
    }


# --------------------------------------------------------------------------------------------- cameras

_BOX_SIGNS = np.array(
    [[1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1], [1, 1, -1], [1, -1, -1], [-1, -1, -1], [-1, 1, -1]],
    np.float64,
)
_BOX_FACES = ((0, 1, 2, 3), (4, 5, 6, 7), (0, 1, 5, 4), (2, 3, 7, 6), (1, 2, 6, 5), (0, 3, 7, 4))
_FACE_SHADE = (1.0, 0.5, 0.75, 0.75, 0.9, 0.9)  # top, bottom, front, back, right, left


def box_corners_3d(boxes: np.ndarray) -> np.ndarray:
    """Boxes [K, 7] -> corners [K, 8, 3] in the LiDAR frame (order of _BOX_SIGNS)."""
    local = _BOX_SIGNS[None] * boxes[:, None, 3:6] / 2
    c, s = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    x = boxes[:, None, 0] + c * local[..., 0] - s * local[..., 1]
    y = boxes[:, None, 1] + s * local[..., 0] + c * local[..., 1]
    return np.stack([x, y, boxes[:, None, 2] + local[..., 2]], axis=-1)


def project(points: np.ndarray, calib: dict) -> tuple[np.ndarray, np.ndarray]:
    """LiDAR-frame points [..., 3] -> pixel (u, v) [..., 2] and camera depth [...] through a CMHT calibration."""
    ext = np.asarray(calib["extrinsic"], np.float64).reshape(4, 4)
    k = np.asarray(calib["intrinsic"], np.float64).reshape(3, 3)
    cam = points @ ext[:3, :3].T + ext[:3, 3]
    uvw = cam @ k.T
    depth = cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return uvw[..., :2] / uvw[..., 2:3], depth


def _quad(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float) -> np.ndarray:
    return np.array([[x0, y0, z0], [x0, y1, z1], [x1, y1, z1], [x1, y0, z0]], np.float64)


_ROAD = _quad(2.0, 150.0, WALL_Y[0], WALL_Y[1], -LIDAR_HEIGHT, -LIDAR_HEIGHT)
_WALLS = [
    np.array([[2.0, y, -LIDAR_HEIGHT], [150.0, y, -LIDAR_HEIGHT], [150.0, y, WALL_TOP], [2.0, y, WALL_TOP]])
    for y in WALL_Y
]


def camera_image(
    calib: dict, size: tuple[int, int], boxes: np.ndarray, fills: list, palette: dict, mode: str
) -> Image.Image:
    """Draw the scene through one camera: ground, road, walls, then boxes far to near, faces far to near.

    fills: per box, the colour (RGB tuple) or level (int) of its brightest face; palette: sky/ground/road/wall.
    """
    im = Image.new(mode, size, palette["sky"])
    draw = ImageDraw.Draw(im)
    (_, horizon), _ = project(np.array([1000.0, 0.0, -LIDAR_HEIGHT]), calib)
    draw.rectangle([0, int(horizon), size[0], size[1]], fill=palette["ground"])
    for quad, colour in [(_ROAD, palette["road"])] + [(w, palette["wall"]) for w in _WALLS]:
        uv, _ = project(quad, calib)
        draw.polygon([tuple(p) for p in uv], fill=colour)
    if len(boxes):
        corners = box_corners_3d(boxes)
        uv, depth = project(corners, calib)
        for k in np.argsort(-depth.mean(axis=1)):
            if depth[k].min() < 0.5:
                continue  # (partly) behind the camera
            face_depth = [depth[k, list(f)].mean() for f in _BOX_FACES]
            for f in np.argsort(face_depth)[::-1]:
                shade = _FACE_SHADE[f]
                fill = fills[k]
                colour = tuple(int(c * shade) for c in fill) if isinstance(fill, tuple) else int(fill * shade)
                draw.polygon([tuple(uv[k, i]) for i in _BOX_FACES[f]], fill=colour)
    return im


RGB_PALETTE = {"sky": (150, 180, 215), "ground": (70, 110, 60), "road": (80, 80, 85), "wall": (160, 155, 145)}
IR_PALETTE = {"sky": 1500, "ground": 3000, "road": 3600, "wall": 3200}


def rgb_frame(rng: np.random.Generator, boxes: np.ndarray, colours: np.ndarray) -> Image.Image:
    """A colour frame; the exposure varies a little from frame to frame (one lookup table, no per-pixel work)."""
    fills = [tuple(int(v) for v in c) for c in colours]
    im = camera_image(FRONT_CALIB, FRONT_SIZE, boxes, fills, RGB_PALETTE, "RGB")
    gain = float(rng.uniform(0.9, 1.1))
    return im.point([min(255, round(v * gain)) for v in range(256)] * 3)


def ir_frame(rng: np.random.Generator, boxes: np.ndarray, levels: np.ndarray) -> Image.Image:
    """A 16-bit thermal frame: warm boxes over a cool background, with sensor noise."""
    im = camera_image(IR_CALIB, IR_SIZE, boxes, [int(v) for v in levels], IR_PALETTE, "I")
    arr = np.asarray(im, np.float32) + rng.normal(0, 40, (IR_SIZE[1], IR_SIZE[0])).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 65535).astype(np.uint16))


# --------------------------------------------------------------------------------------------- GPS / IMU


def enu_to_latlon(east: np.ndarray, north: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local metres around (LAT0, LON0) -> decimal degrees (WGS84 radii of curvature; metres-scale accurate)."""
    a, e2 = 6378137.0, 6.69437999014e-3
    s2 = math.sin(math.radians(LAT0)) ** 2
    meridian = a * (1 - e2) / (1 - e2 * s2) ** 1.5
    normal = a / math.sqrt(1 - e2 * s2)
    return (
        LAT0 + np.degrees(north / meridian),
        LON0 + np.degrees(east / (normal * math.cos(math.radians(LAT0)))),
    )


def gps_imu_records(rng: np.random.Generator, t: np.ndarray, heading: float) -> list[str]:
    """The text of each GPS/IMU record at times t (s since the start): held fixes, biased noisy IMU."""
    fixes = np.cumsum(rng.uniform(GPS_HOLD_S - 0.6, GPS_HOLD_S + 0.6, int(t[-1] / (GPS_HOLD_S - 0.6)) + 2))
    fixes = np.concatenate([[t[0]], t[0] + fixes])
    fix_time = fixes[np.searchsorted(fixes, t, side="right") - 1]  # the last fix at or before each record
    fix_noise = rng.normal(0, 0.5, (len(fixes), 2))[np.searchsorted(fixes, t, side="right") - 1]
    east = EGO_SPEED * fix_time * math.cos(heading) + fix_noise[:, 0]
    north = EGO_SPEED * fix_time * math.sin(heading) + fix_noise[:, 1]
    lat, lon = enu_to_latlon(east, north)
    n = len(t)
    gyro = np.array([-0.172, -0.343, 0.0]) + rng.normal(0, 0.005, (n, 3))
    accel = np.array([-0.03, -0.01, -1.0]) + rng.normal(0, 0.01, (n, 3))
    return [
        f"{float(degrees_to_ddmm(la, 4)):.4f}\n{float(degrees_to_ddmm(lo, 4)):.4f}\n"
        + "".join(f"{v!r}\n" for v in g.tolist())
        + "\n".join(f"{v:.6f}" for v in a.tolist())  # the real records end without a newline
        for la, lo, g, a in zip(lat, lon, gyro, accel)
    ]


# --------------------------------------------------------------------------------------------- writer


def label_json(boxes: np.ndarray, ids: np.ndarray, classes: tuple[str, ...]) -> list[dict]:
    return [
        {
            "obj_id": str(int(i)),
            "obj_type": cls,
            "psr": {
                "position": {"x": float(b[0]), "y": float(b[1]), "z": float(b[2])},
                "rotation": {"x": 0, "y": 0, "z": float(b[6])},
                "scale": {"x": float(b[3]), "y": float(b[4]), "z": float(b[5])},
            },
        }
        for b, i, cls in zip(boxes, ids, classes)
    ]


def write_cmht_sequence(
    out: Path, frames: int, seed: int = 0, points: int = 120_000, actors: int = 10
) -> Path:
    """Write one synthetic sequence of `frames` LiDAR sweeps to `out` (module docstring) and return `out`."""
    if frames < 1 or points < 1:
        raise ValueError(f"write_cmht_sequence: frames={frames} and points={points} must be >= 1")
    out = Path(out)
    rng = np.random.default_rng(seed)
    cast = make_actors(rng, actors)
    heading = float(rng.uniform(0, 2 * math.pi))
    lidar_t = sensor_times(rng, RATES["lidar"], float(rng.uniform(0, 0.05)), count=frames)
    span = (lidar_t[0] - 0.05, lidar_t[-1] + 0.05)
    times = {"lidar": lidar_t}
    for name in ("rgb", "ir", "radar", "gps_imu"):
        times[name] = sensor_times(rng, RATES[name], span[0] + float(rng.uniform(0, 0.02)), end=span[1])
    intensity = np.array([CLASSES[c][3] for c in cast.classes])
    rcs = np.array([CLASSES[c][4] for c in cast.classes])
    ir_level = np.array([CLASSES[c][5] for c in cast.classes])

    def frame_rng(sensor: int, i: int) -> np.random.Generator:
        return np.random.default_rng([seed, sensor, i])

    folders = {
        "lidar": out / "lidar",
        "rgb": out / "camera" / "front",
        "ir": out / "camera" / "ir",
        "radar": out / "radar" / "front_points",
        "gps_imu": out / "Gps_Imu" / "data",
    }
    for d in [*folders.values(), out / "calib" / "camera", out / "calib" / "radar", out / "label"]:
        d.mkdir(parents=True, exist_ok=True)
    for name, folder in folders.items():
        write_timestamps(folder, T0_MS + np.round(times[name] * 1000.0).astype(np.int64))
    for i, t in enumerate(lidar_t):
        boxes, ids = cast.at(t)
        write_pcd(folders["lidar"] / f"{i:08d}.pcd", lidar_sweep(frame_rng(0, i), boxes, intensity, points))
        r = frame_rng(5, i)
        if r.random() >= 0.1:  # ~10% of sweeps stay unlabelled, as in the real release
            near = np.hypot(boxes[:, 0], boxes[:, 1]) <= 60.0
            labels = label_json(boxes[near], ids[near], tuple(c for c, m in zip(cast.classes, near) if m))
            (out / "label" / f"{i:08d}.json").write_text(json.dumps(labels, indent=2))
    for i, t in enumerate(times["rgb"]):
        rgb_frame(frame_rng(1, i), cast.at(t)[0], cast.colour).save(
            folders["rgb"] / f"{i:08d}.jpg", quality=90
        )
    for i, t in enumerate(times["ir"]):
        ir_frame(frame_rng(2, i), cast.at(t)[0], ir_level).save(
            folders["ir"] / f"{i:08d}.png", compress_level=1
        )
    for i, t in enumerate(times["radar"]):
        scan = radar_scan(frame_rng(3, i), cast.at(t)[0], cast.vx, rcs)
        write_pcd(folders["radar"] / f"{i:08d}.pcd", scan)
    records = gps_imu_records(frame_rng(4, 0), times["gps_imu"] - lidar_t[0], heading)
    for i, text in enumerate(records):
        (folders["gps_imu"] / f"{i:08d}.txt").write_text(text)
    (out / "Gps_Imu" / "dataformat.txt").write_text(GPS_DATAFORMAT)
    for name, calib in (
        ("camera/front", FRONT_CALIB),
        ("camera/ir", IR_CALIB),
        ("radar/front_points", RADAR_CALIB),
    ):
        (out / "calib" / f"{name}.json").write_text(json.dumps(calib, indent=4))
    return out



def ensure_dataset(data_cfg: DataConfig) -> Path:
    """`data_cfg.root`, writing a synthetic CMHT set there first when it is missing and the config allows it."""
    root = Path(data_cfg.root)
    if root.exists():
        return root
    if not data_cfg.synthesize_if_missing:
        raise FileNotFoundError(
            f"data.root={root} does not exist (set data.synthesize_if_missing=true to write a synthetic set there)"
        )
    print(
        f"data.root={root} does not exist and data.synthesize_if_missing is set: writing a synthetic CMHT "
        f"sequence of {data_cfg.synthetic_frames} LiDAR sweeps there (real on-disk format) ...",
        file=sys.stderr,
        flush=True,
    )
    # Written beside the target and renamed into place, so that concurrent processes never see half a set.
    tmp = root.parent / f".{root.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_cmht_sequence(
        tmp / "drive_synthetic_clear_0" / "drive_synthetic_1", frames=data_cfg.synthetic_frames, seed=0
    )
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, root)
    except OSError:
        if not root.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process got there first
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cm = sub.add_parser("cmht", help="write one synthetic CMHT sequence in the real layout")
    cm.add_argument("--out", required=True, help="sequence folder to write")
    cm.add_argument("--frames", type=int, required=True, help="LiDAR sweeps")
    cm.add_argument("--seed", type=int, default=0)
    cm.add_argument("--points", type=int, default=120_000, help="LiDAR returns per sweep (about)")
    args = parser.parse_args(argv)
    path = write_cmht_sequence(Path(args.out), frames=args.frames, seed=args.seed, points=args.points)
    print(f"wrote {args.frames} LiDAR sweeps of a synthetic CMHT sequence to {path}")


if __name__ == "__main__":
    main()
