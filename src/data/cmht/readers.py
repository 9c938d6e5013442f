"""Readers and conversions of the CMHT dataset's files: timestamps, GPS/IMU records, images, labels, calibration.

Each reader takes one file (or one sensor's files) and returns checked arrays, raising `CMHTFormatError` naming the
file and the problem; the scene index over a root (which files form a sequence) is `src.data.cmht.index`.
`report_problem` is the one place where the raise-or-skip policy (`OnError`) is applied.

Conversions kept here so that every consumer agrees on them:
- time: raw ms / 1000 -> float64 seconds (epoch unknown, not Unix time).
- GPS: ddmm.mmmm -> decimal degrees -> local east/north metres on the WGS84 tangent plane at the first valid fix.
- IMU: gyro as recorded (rad/s); accel G * 9.80665 m/s^2 with the raw sign (az ~ -9.8 at rest).
- Sensor frames: LiDAR points and label boxes are in the LiDAR frame (x forward, y left, z up); radar PCDs are in
  the radar's own frame and `calib/radar/<name>.json` gives the radar's pose in the LiDAR frame, so
  p_lidar = R @ p_radar + translation (`radar_to_lidar`); camera extrinsics map LiDAR -> camera.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from src.data.errors import CMHTFormatError, OnError, Report, report_problem
from src.data.sync import GpsImu

log = logging.getLogger(__name__)

G = 9.80665  # m/s^2 per G
WGS84_A = 6378137.0
WGS84_E2 = 6.69437999014e-3
GPS_FIELDS = 8  # lat, lon (ddmm.mmmm), wx, wy, wz (rad/s), ax, ay, az (G)
CAMERA_NAMES = {"front": "rgb", "rgb": "rgb", "ir": "ir", "infrared": "ir", "thermal": "ir"}
# --------------------------------------------------------------------------------------------- conversions


def ddmm_to_degrees(x: np.ndarray | float) -> np.ndarray:
    """NMEA ddmm.mmmm (sign = hemisphere, negative = south/west) -> signed decimal degrees."""
    x = np.asarray(x, np.float64)
    a = np.abs(x)
    deg = np.floor(a / 100.0)
    return np.sign(x) * (deg + (a - 100.0 * deg) / 60.0)


def degrees_to_ddmm(x: np.ndarray | float, decimals: int = 7) -> np.ndarray:
    """Signed decimal degrees -> ddmm.mmmm values with `decimals` decimals of a minute (the inverse of
    `ddmm_to_degrees`; a minute that rounds to 60 carries into the degrees)."""
    x = np.asarray(x, np.float64)
    scale = 10**decimals
    deg, minutes = np.divmod(np.round(np.abs(x) * 60 * scale).astype(np.int64), 60 * scale)
    return np.sign(x) * (deg * 100.0 + minutes / scale)


GPS_DATAFORMAT = (
    "latitude (ddmm.mmmm)\nlongitude (ddmm.mmmm)\nangular velocity around x (rad/s)\n"
    "angular velocity around y (rad/s)\nangular velocity around z (rad/s)\n"
    "linear acceleration in the x direction (G)\nlinear acceleration in the y direction (G)\n"
    "linear acceleration in the z direction (G)\n"
)
"""Gps_Imu/dataformat.txt: the 8 lines of a GPS/IMU record, as the real dataset describes them."""


def _ecef(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """WGS84 Earth-centred coordinates [..., 3] (m) of points at zero ellipsoidal height."""
    la, lo = np.radians(lat), np.radians(lon)
    n = WGS84_A / np.sqrt(1.0 - WGS84_E2 * np.sin(la) ** 2)
    return np.stack(
        [n * np.cos(la) * np.cos(lo), n * np.cos(la) * np.sin(lo), n * (1.0 - WGS84_E2) * np.sin(la)], axis=-1
    )


def latlon_to_enu(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> np.ndarray:
    """Decimal degrees -> [N, 2] (east, north) metres on the tangent plane at (lat0, lon0) (no altitude known)."""
    lat, lon = np.atleast_1d(np.asarray(lat, np.float64)), np.atleast_1d(np.asarray(lon, np.float64))
    d = _ecef(lat, lon) - _ecef(np.float64(lat0), np.float64(lon0))
    la, lo = math.radians(lat0), math.radians(lon0)
    east = -math.sin(lo) * d[:, 0] + math.cos(lo) * d[:, 1]
    north = (
        -math.sin(la) * math.cos(lo) * d[:, 0]
        - math.sin(la) * math.sin(lo) * d[:, 1]
        + math.cos(la) * d[:, 2]
    )
    return np.stack([east, north], axis=-1)


# --------------------------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True, eq=False)
class SensorStream:
    """One sensor's records: data files in time order and their times (float64 s, strictly increasing)."""

    name: str
    files: tuple[Path, ...]
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.files)


def read_timestamps(path: Path) -> np.ndarray:
    """A timestamp.txt (one integer millisecond count a line) -> float64 seconds; raises on a bad line."""
    try:
        lines = path.read_text().split()
    except (OSError, UnicodeDecodeError) as e:
        raise CMHTFormatError(f"{path}: cannot read the timestamps: {e}") from e
    try:
        ms = np.array(lines, dtype=np.float64)
    except ValueError as e:
        raise CMHTFormatError(f"{path}: a timestamp is not a number: {e}") from e
    if not np.all(np.isfinite(ms)):
        raise CMHTFormatError(f"{path}: a timestamp is not finite")
    return ms / 1000.0


def write_timestamps(folder: Path, ms: np.ndarray) -> None:
    """`folder`/timestamp.txt from integer milliseconds (what `read_timestamps` reads)."""
    (folder / "timestamp.txt").write_text("".join(f"{v}\n" for v in np.asarray(ms, np.int64).tolist()))


def _gps_record(path: Path) -> np.ndarray:
    """One GPS/IMU record file -> 8 floats; raises CMHTFormatError naming the file and the problem."""
    try:
        values = path.read_text().split()
    except (OSError, UnicodeDecodeError) as e:
        raise CMHTFormatError(f"{path}: cannot read the GPS/IMU record: {e}") from e
    if len(values) != GPS_FIELDS:
        raise CMHTFormatError(f"{path}: GPS/IMU record has {len(values)} values, expected {GPS_FIELDS}")
    try:
        out = np.array(values, np.float64)
    except ValueError as e:
        raise CMHTFormatError(f"{path}: GPS/IMU record has a non-numeric value: {e}") from e
    if not np.all(np.isfinite(out)):
        raise CMHTFormatError(f"{path}: GPS/IMU record has a non-finite value (NaN/inf): {values}")
    return out


def read_gps_imu(stream: SensorStream, on_error: OnError = "raise", report: Report | None = None) -> GpsImu:
    """Parse a gps_imu stream's record files; a bad record raises or (skip) becomes an invalid row."""
    n = len(stream.files)
    raw = np.zeros((n, GPS_FIELDS), np.float64)
    valid = np.zeros(n, np.bool_)
    for i, path in enumerate(stream.files):
        try:
            raw[i] = _gps_record(path)
            valid[i] = True
        except CMHTFormatError as e:
            report_problem(str(e), on_error, report, "gps_imu")
    lat = np.where(valid, ddmm_to_degrees(raw[:, 0]), 0.0)
    lon = np.where(valid, ddmm_to_degrees(raw[:, 1]), 0.0)
    enu = np.zeros((n, 2))
    fix_changed = np.zeros(n, np.bool_)
    if valid.any():
        first = int(np.argmax(valid))
        enu[valid] = latlon_to_enu(lat[valid], lon[valid], lat[first], lon[first])
        # compare each valid record's raw position with the previous valid record's
        pos = raw[valid, :2]
        changed = np.ones(len(pos), np.bool_)
        changed[1:] = np.any(pos[1:] != pos[:-1], axis=1)
        fix_changed[valid] = changed
    return GpsImu(
        t=stream.timestamps,
        lat=lat,
        lon=lon,
        enu=enu,
        gyro=raw[:, 2:5],
        accel=raw[:, 5:8] * G,
        fix_changed=fix_changed,
        valid=valid,
    )


def read_image(path: str | Path) -> np.ndarray:
    """An image file -> its pixels (uint8 [H, W, 3] / [H, W], uint16 or int32 [H, W] for 16-bit frames)."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im)
    except (OSError, ValueError, SyntaxError) as e:
        raise CMHTFormatError(f"{path}: cannot decode the image: {e}") from e


def named_entries(folder: Path, *, dirs: bool) -> dict[str, Path]:
    """Lower-cased name -> path of the sub-folders (dirs) or files of a folder (first one wins on case clashes)."""
    out: dict[str, Path] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.is_dir() == dirs:
                out.setdefault(p.name.lower(), p)
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CMHTFormatError(f"{path}: cannot read the JSON: {e}") from e


def _xyz(path: Path, i: int, psr: Any, key: str) -> list[float]:
    part = psr.get(key) if isinstance(psr, dict) else None
    try:
        values = [float(part[a]) for a in "xyz"]
    except (TypeError, KeyError, ValueError) as e:
        raise CMHTFormatError(f"{path}: label {i} has no numeric psr.{key}.x/y/z ({e!r})") from e
    if not all(math.isfinite(v) for v in values):
        raise CMHTFormatError(f"{path}: label {i} psr.{key} is not finite: {values}")
    return values


def read_labels(path: str | Path) -> list[dict[str, Any]]:
    """A label JSON (list of {obj_id, obj_type, psr: {position, rotation, scale}}) -> checked, normalised dicts.

    Each dict: obj_id (str), obj_type (str), position, rotation, scale (3 floats each), annotator (str or None).
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, list):
        raise CMHTFormatError(f"{path}: a label file holds a JSON list, got {type(data).__name__}")
    out = []
    for i, obj in enumerate(data):
        if not isinstance(obj, dict) or "obj_type" not in obj or "psr" not in obj:
            raise CMHTFormatError(f"{path}: label {i} lacks obj_type or psr")
        psr = obj["psr"]
        out.append(
            {
                "obj_id": str(obj.get("obj_id", "")),
                "obj_type": str(obj["obj_type"]),
                "position": _xyz(path, i, psr, "position"),
                "rotation": _xyz(path, i, psr, "rotation"),
                "scale": _xyz(path, i, psr, "scale"),
                "annotator": obj.get("annotator"),
            }
        )
    return out


def label_boxes(labels: list[dict[str, Any]]) -> np.ndarray:
    """Labels (from `read_labels`) -> float64 [K, 7] boxes x, y, z, l, w, h, yaw (LiDAR frame, yaw about z)."""
    if not labels:
        return np.zeros((0, 7))
    return np.array([[*o["position"], *o["scale"], o["rotation"][2]] for o in labels], np.float64)


def label_classes(labels: list[dict[str, Any]]) -> list[str]:
    """The class name of each box of `label_boxes(labels)`, in the same order."""
    return [o["obj_type"] for o in labels]


def read_calib(calib_dir: Path, on_error: OnError = "raise", report: Report | None = None) -> dict[str, Any]:
    """calib/camera/<name>.json and calib/radar/<name>.json -> {sensor: {...}} with NumPy matrices.

    Cameras: {"extrinsic": [4, 4] LiDAR -> camera, "intrinsic": [3, 3], "name": file stem};
    radar: {"translation": [3], "rotation": [3] Euler, "to_lidar": [4, 4] radar -> LiDAR (`radar_to_lidar`),
    "name": file stem}. Unknown names are ignored.
    """
    calib: dict[str, Any] = {}
    for kind_dir in sorted(named_entries(calib_dir, dirs=True).items()):
        kind, folder = kind_dir
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() == ".json"):
            stem = path.stem.lower()
            sensor = CAMERA_NAMES.get(stem) if kind == "camera" else "radar" if kind == "radar" else None
            if sensor is None or sensor in calib:
                if report is not None:
                    report.ignored.append(f"{path}: unknown or duplicate calibration file")
                continue
            try:
                calib[sensor] = _calib_entry(path, kind)
            except CMHTFormatError as e:
                report_problem(str(e), on_error, report, "calib")
    return calib


def _calib_entry(path: Path, kind: str) -> dict[str, Any]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise CMHTFormatError(f"{path}: a calibration file holds a JSON object")
    wanted = {"extrinsic": 16, "intrinsic": 9} if kind == "camera" else {"translation": 3, "rotation": 3}
    entry: dict[str, Any] = {"name": path.stem}
    for key, size in wanted.items():
        try:
            values = np.array(data[key], np.float64).reshape(-1)
        except (KeyError, TypeError, ValueError) as e:
            raise CMHTFormatError(f"{path}: calibration needs a numeric {key!r} ({e!r})") from e
        if values.size != size or not np.all(np.isfinite(values)):
            raise CMHTFormatError(
                f"{path}: calibration {key!r} needs {size} finite numbers, got {values.size}"
            )
        entry[key] = values.reshape(4, 4) if size == 16 else values.reshape(3, 3) if size == 9 else values
    if kind == "radar":
        entry["to_lidar"] = radar_to_lidar(entry["rotation"], entry["translation"])
    return entry


def radar_to_lidar(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """A radar calibration's (rotation [3] Euler x, y, z in rad, translation [3] m) -> [4, 4] radar -> LiDAR.

    The file format is SUSTechPOINTS's (the annotation tool the CMHT layout comes from): its `translation` and
    `rotation` are the pose of the radar in the LiDAR frame, which the tool applies to the radar's points to draw
    them in the LiDAR scene, p_lidar = R @ p_radar + translation, with R = Rx(x) @ Ry(y) @ Rz(z) (its Euler
    convention, that of its label boxes). The real sample's values are all zero (radar frame = LiDAR frame), so
    they cannot tell the direction themselves; the tool's use of them does.
    """
    rx, ry, rz = (float(a) for a in np.asarray(rotation, np.float64).reshape(3))
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    out = np.eye(4)
    out[:3, :3] = r_x @ r_y @ r_z
    out[:3, 3] = np.asarray(translation, np.float64).reshape(3)
    return out

