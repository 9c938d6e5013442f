"""Readers for the CMHT autonomous dataset in its synchronised-frame layout, and the scene index over a root.

The layout is discovered at run time (docs: CMHT_FORMAT.md). A sequence is a folder holding `Gps_Imu/` or
`lidar/`; its sensor folders follow either the SUSTechPOINTS pattern (`lidar/`, `camera/<name>/`,
`radar/<name>/`, files directly inside) or the KITTI-raw pattern (`<Sensor>/data/NNNNNNNN.ext`), and each keeps a
`timestamp.txt` (integer milliseconds, one line per data file) beside its files or one level up. Names match
case-insensitively; camera `front` is the `rgb` stream, camera `ir` the `ir` stream, any `radar/<name>` the radar.
Unknown files and folders are ignored and listed in the `Report`.

    python -m src.data.cmht inspect ROOT [--json] [--deep] [--bev-png FILE] [--config TOML --set k=v]
prints per sequence the frames, measured rate and time gaps of each sensor, label counts by class, every problem
found (indexing runs with on_error="skip" so that all of them are listed), every bad sensor file and the samples
valid after sync. Every LiDAR/radar/camera file is checked cheaply (`check_file`: PCD header against the file size,
image header and end-of-image marker) in a thread pool, with a progress bar on large roots; `--deep` decodes them.

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
import os
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from src.data.pcd import CMHTFormatError, check_pcd, read_pcd, write_pcd

log = logging.getLogger(__name__)

__all__ = [
    "SENSORS",
    "CMHTFormatError",
    "GpsImu",
    "Report",
    "Sequence",
    "SensorStream",
    "check_file",
    "check_sequence_files",
    "ddmm_to_degrees",
    "find_sequences",
    "inspect_sequence",
    "is_sequence",
    "label_boxes",
    "label_classes",
    "latlon_to_enu",
    "read_calib",
    "read_gps_imu",
    "read_image",
    "read_labels",
    "read_pcd",
    "read_sequence",
    "read_timestamps",
    "radar_to_lidar",
    "report_problem",
    "stream_stats",
    "write_pcd",
]

SENSORS = ("lidar", "rgb", "ir", "radar", "gps_imu")
G = 9.80665  # m/s^2 per G
WGS84_A = 6378137.0
WGS84_E2 = 6.69437999014e-3
GPS_FIELDS = 8  # lat, lon (ddmm.mmmm), wx, wy, wz (rad/s), ax, ay, az (G)
CAMERA_NAMES = {"front": "rgb", "rgb": "rgb", "ir": "ir", "infrared": "ir", "thermal": "ir"}
EXTENSIONS = {
    "lidar": (".pcd",),
    "radar": (".pcd",),
    "rgb": (".jpg", ".jpeg", ".png"),
    "ir": (".jpg", ".jpeg", ".png", ".tif", ".tiff"),
    "gps_imu": (".txt",),
}
OnError = Literal["raise", "skip"]


@dataclasses.dataclass
class Report:
    """What indexing found wrong (problems), what it dropped (skipped, per kind) and what it ignored."""

    problems: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, int] = dataclasses.field(default_factory=Counter)
    ignored: list[str] = dataclasses.field(default_factory=list)

    def add(self, problem: str, kind: str | None = None, count: int = 1) -> None:
        """Record a problem; with `kind`, also count `count` dropped items of that kind."""
        self.problems.append(problem)
        if kind is not None:
            self.skipped[kind] = self.skipped.get(kind, 0) + count

    def as_dict(self) -> dict[str, Any]:
        return {"problems": list(self.problems), "skipped": dict(self.skipped), "ignored": list(self.ignored)}


def report_problem(
    message: str, on_error: OnError, report: Report | None, kind: str | None, count: int = 1
) -> None:
    """Raise (on_error="raise") or record a skip; the single place where that policy is applied."""
    if on_error == "raise":
        raise CMHTFormatError(message)
    if on_error != "skip":
        raise ValueError(f"on_error={on_error!r}: expected 'raise' or 'skip'")
    log.warning("%s", message)
    if report is not None:
        report.add(message, kind, count)


# --------------------------------------------------------------------------------------------- conversions


def ddmm_to_degrees(x: np.ndarray | float) -> np.ndarray:
    """NMEA ddmm.mmmm (sign = hemisphere, negative = south/west) -> signed decimal degrees."""
    x = np.asarray(x, np.float64)
    a = np.abs(x)
    deg = np.floor(a / 100.0)
    return np.sign(x) * (deg + (a - 100.0 * deg) / 60.0)


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


@dataclasses.dataclass(frozen=True, eq=False)
class GpsImu:
    """The GPS/IMU records of a sequence, converted (module docstring).

    t [N] s; lat, lon [N] decimal degrees; enu [N, 2] east, north m (anchored at the first valid fix);
    gyro [N, 3] rad/s; accel [N, 3] m/s^2; fix_changed [N]: a new position (the receiver holds the last fix
    between updates; the first valid record counts as new); valid [N]: the record parsed and is finite.
    Invalid rows hold zeros.
    """

    t: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    enu: np.ndarray
    gyro: np.ndarray
    accel: np.ndarray
    fix_changed: np.ndarray
    valid: np.ndarray

    def __len__(self) -> int:
        return len(self.t)


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
    for kind_dir in sorted(_children(calib_dir, dirs=True).items()):
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


# --------------------------------------------------------------------------------------------- index


def _children(folder: Path, *, dirs: bool) -> dict[str, Path]:
    """Lower-cased name -> path of the sub-folders (dirs) or files of a folder (first one wins on case clashes)."""
    out: dict[str, Path] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.is_dir() == dirs:
                out.setdefault(p.name.lower(), p)
    return out


def _frame_key(path: Path) -> tuple[int, str]:
    return (int(path.stem), path.name) if path.stem.isdigit() else (1 << 62, path.name)


@dataclasses.dataclass(frozen=True, eq=False)
class Sequence:
    """One recorded sequence: its sensor streams, calibration and label files (frame index -> path)."""

    name: str
    path: Path
    streams: dict[str, SensorStream]
    calib: dict[str, Any]
    labels: dict[int, Path]
    on_error: OnError = "raise"
    report: Report | None = dataclasses.field(default=None, repr=False)

    def gps_imu(self) -> GpsImu:
        """The converted GPS/IMU records (reads the record files on each call)."""
        if "gps_imu" not in self.streams:
            raise CMHTFormatError(f"{self.path}: no Gps_Imu stream")
        return read_gps_imu(self.streams["gps_imu"], self.on_error, self.report)


def _stream(sensor: str, folder: Path, on_error: OnError, report: Report | None) -> SensorStream | None:
    """Index one sensor folder (files + timestamp.txt) and check it; None when it is dropped (skip mode)."""
    subdirs = _children(folder, dirs=True)
    data_dir = subdirs.get("data", folder)
    files_here = _children(data_dir, dirs=False)
    stamp = files_here.get("timestamp.txt") or _children(folder, dirs=False).get("timestamp.txt")
    exts = EXTENSIONS[sensor]
    files = sorted(
        (p for k, p in files_here.items() if k != "timestamp.txt" and p.suffix.lower() in exts),
        key=_frame_key,
    )
    if report is not None:
        report.ignored += [
            f"{p}: not a {sensor} record"
            for k, p in files_here.items()
            if k != "timestamp.txt" and p not in files
        ]
    if stamp is None:
        report_problem(
            f"{folder}: no timestamp.txt for the {sensor} files; sensor left out", on_error, report, sensor
        )
        return None
    try:
        t = read_timestamps(stamp)
    except CMHTFormatError as e:
        report_problem(f"{e}; sensor left out", on_error, report, sensor)
        return None
    if len(t) != len(files):
        report_problem(
            f"{stamp}: {len(t)} timestamps for {len(files)} {sensor} files in {data_dir}; sensor left out",
            on_error,
            report,
            sensor,
        )
        return None
    keep = np.ones(len(t), np.bool_)
    keep[1:] = t[1:] > np.maximum.accumulate(t)[:-1]
    if not keep.all():
        bad = np.flatnonzero(~keep)
        report_problem(
            f"{stamp}: timestamps not strictly increasing at line(s) {(bad + 1).tolist()[:10]}; "
            f"{len(bad)} record(s) dropped",
            on_error,
            report,
            sensor,
            len(bad),
        )
    kept = tuple(f for f, k in zip(files, keep) if k)
    return SensorStream(sensor, kept, t[keep])


def _sensor_folders(seq_dir: Path, report: Report | None) -> dict[str, Path]:
    """Sensor name -> folder of a sequence; unknown folders go to report.ignored."""
    found: dict[str, Path] = {}
    for key, path in _children(seq_dir, dirs=True).items():
        if key in ("lidar", "gps_imu"):
            found[key] = path
        elif key == "camera":
            for name, sub in _children(path, dirs=True).items():
                sensor = CAMERA_NAMES.get(name)
                if sensor is None or sensor in found:
                    if report is not None:
                        report.ignored.append(f"{sub}: unknown or duplicate camera folder")
                    continue
                found[sensor] = sub
        elif key == "radar":
            subs = {k: v for k, v in _children(path, dirs=True).items() if k != "data"}
            if not subs:
                found["radar"] = path  # KITTI-style radar/data/ or files directly inside
                continue
            first, *rest = sorted(subs)
            found["radar"] = subs[first]
            if report is not None:
                report.ignored += [
                    f"{subs[k]}: a second radar folder (using {subs[first].name})" for k in rest
                ]
        elif key not in ("calib", "label") and report is not None:
            report.ignored.append(f"{path}: unknown folder")
    return found


def _labels(label_dir: Path | None, report: Report | None) -> dict[int, Path]:
    labels: dict[int, Path] = {}
    if label_dir is None:
        return labels
    for key, path in _children(label_dir, dirs=False).items():
        stem = Path(key).stem
        if key.endswith(".json") and stem.isdigit():
            labels[int(stem)] = path
        elif report is not None:
            report.ignored.append(f"{path}: not a NNNNNNNN.json label file")
    return dict(sorted(labels.items()))


def read_sequence(
    seq_dir: Path, name: str | None = None, *, on_error: OnError = "raise", report: Report | None = None
) -> Sequence:
    """Index one sequence folder (module docstring); problems raise or (skip) drop what they affect."""
    seq_dir = Path(seq_dir)
    streams = {}
    folders = _sensor_folders(seq_dir, report)
    for sensor in SENSORS:
        if sensor in folders:
            stream = _stream(sensor, folders[sensor], on_error, report)
            if stream is not None:
                streams[sensor] = stream
    top = _children(seq_dir, dirs=True)
    calib = read_calib(top["calib"], on_error, report) if "calib" in top else {}
    return Sequence(
        name=name or seq_dir.name,
        path=seq_dir,
        streams=streams,
        calib=calib,
        labels=_labels(top.get("label"), report),
        on_error=on_error,
        report=report,
    )


def is_sequence(folder: Path) -> bool:
    """A sequence folder holds Gps_Imu/ or lidar/ (any case)."""
    return bool({"gps_imu", "lidar"} & set(_children(folder, dirs=True)))


def find_sequences(
    root: str | Path, *, on_error: OnError = "raise", report: Report | None = None
) -> list[Sequence]:
    """Every sequence under `root` (root itself included), in path order; names are paths relative to root."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset folder")
    found: list[Sequence] = []
    pending, seen = [root], set()
    while pending:
        folder = pending.pop()
        if folder.resolve() in seen:  # a symlink loop, or a folder linked twice
            continue
        seen.add(folder.resolve())
        if is_sequence(folder):
            name = folder.relative_to(root).as_posix() if folder != root else root.name
            found.append(read_sequence(folder, name, on_error=on_error, report=report))
            continue
        pending += sorted(_children(folder, dirs=True).values(), reverse=True)
    return sorted(found, key=lambda s: s.path.as_posix())


# --------------------------------------------------------------------------------------------- inspect


_IMAGE_ENDS = {"JPEG": (b"\xff\xd9",), "PNG": (b"IEND\xaeB`\x82",)}  # end-of-image marker / last chunk
FILE_SENSORS = ("lidar", "radar", "rgb", "ir")  # the sensors with one data file a record
PROGRESS_MIN_FILES = 2000  # roots with at least this many files to check get a progress bar


def check_file(path: str | Path, sensor: str, deep: bool = False) -> str | None:
    """None when a sensor file looks sound, else the problem (a message starting with the file's path).

    Cheap (default): PCD header against the file size (`check_pcd`); image header (format, size, mode) and, for
    JPEG/PNG, the end-of-image marker / IEND chunk within the file's last bytes, so a truncated file is caught
    without decoding it (TIFF: PIL's verify). deep=True decodes the whole file as the pipeline would.
    """
    try:
        if sensor in ("lidar", "radar"):
            (read_pcd if deep else check_pcd)(path)
        elif deep:
            read_image(path)
        else:
            _check_image(Path(path))
    except CMHTFormatError as e:
        return str(e)
    return None


def _check_image(path: Path) -> None:
    try:
        with Image.open(path) as im:
            ends = _IMAGE_ENDS.get(im.format or "")
            if ends is None:
                im.verify()
                return
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 64))
            tail = f.read()
    except (OSError, ValueError, SyntaxError) as e:
        raise CMHTFormatError(f"{path}: cannot read the image header: {e}") from e
    if not any(end in tail for end in ends):
        raise CMHTFormatError(f"{path}: image is truncated (no end-of-image marker in its last 64 bytes)")


def check_sequence_files(
    sequences: list[Sequence], deep: bool = False, workers: int = 8, progress: bool | None = None
) -> dict[str, list[dict[str, str]]]:
    """Check every LiDAR/radar/camera file of the sequences (`check_file`) in a pool of `workers` threads.

    Returns {sequence path: [{"sensor", "file", "problem"}, ...]} for the bad files, in file order. progress=None
    shows a tqdm bar (on stderr) when there are at least PROGRESS_MIN_FILES files.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    jobs = [
        (str(seq.path), name, path)
        for seq in sequences
        for name in FILE_SENSORS
        if name in seq.streams
        for path in seq.streams[name].files
    ]
    show = len(jobs) >= PROGRESS_MIN_FILES if progress is None else progress
    bad: dict[str, list[dict[str, str]]] = {str(seq.path): [] for seq in sequences}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, tqdm(
        total=len(jobs), disable=not show, unit="file", desc="deep check" if deep else "check"
    ) as bar:
        # decoding releases the GIL (zlib, libjpeg, file reads), so threads overlap it
        for (seq_path, name, path), problem in zip(
            jobs, pool.map(lambda job: check_file(job[2], job[1], deep), jobs)
        ):
            bar.update()
            if problem is not None:
                bad[seq_path].append({"sensor": name, "file": str(path), "problem": problem})
    return bad


def stream_stats(t: np.ndarray) -> dict[str, Any]:
    """Frames, measured rate (1 / median period), and gaps (steps > 1.5 x the median period) of a time stream."""
    t = np.asarray(t, np.float64)
    out: dict[str, Any] = {
        "frames": len(t),
        "rate_hz": None,
        "median_period_s": None,
        "gaps": 0,
        "max_gap_s": None,
    }
    if len(t) >= 2:
        step = np.diff(t)
        median = float(np.median(step))
        out.update(
            rate_hz=1.0 / median if median > 0 else None,
            median_period_s=median,
            gaps=int(np.sum(step > 1.5 * median)),
            max_gap_s=float(step.max()),
        )
    return out


def inspect_sequence(
    seq: Sequence, data_cfg: Any, report: Report, bad_files: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """Everything `inspect` prints about one sequence (problems: those of the report that name its files).

    bad_files: this sequence's entries of `check_sequence_files` (None: the files were not checked)."""
    from src.data import pipeline  # the sync/BEV layer sits on top of this module

    info: dict[str, Any] = {"name": seq.name, "path": str(seq.path)}
    info["sensors"] = {name: stream_stats(s.timestamps) for name, s in seq.streams.items()}
    seen = len(report.problems)
    g = None
    if "gps_imu" in seq.streams:
        g = seq.gps_imu()
        info["gps_imu"] = {
            "records": len(g),
            "invalid": int((~g.valid).sum()),
            "fixes": int(g.fix_changed.sum()),
        }
    classes: Counter[str] = Counter()
    empty = 0
    for path in seq.labels.values():
        try:
            labels = read_labels(path)
        except CMHTFormatError as e:
            report.add(str(e), "label")
            continue
        classes.update(label_classes(labels))
        empty += not labels
    info["labels"] = {"files": len(seq.labels), "empty": empty, "by_class": dict(sorted(classes.items()))}
    if bad_files is not None:
        info["bad_files"] = bad_files
        for bad in bad_files:
            report.add(bad["problem"], bad["sensor"])
    try:
        info["valid_after_sync"] = pipeline.sync_sequence(seq, data_cfg, gps_imu=g).valid_counts()
    except (OSError, ValueError) as e:
        report.add(str(e) if str(e).startswith(str(seq.path)) else f"{seq.path}: cannot sync: {e}")
        info["valid_after_sync"] = None
    mine = (str(seq.path) + os.sep, str(seq.path) + ":")  # messages start with the file or folder at fault
    info["problems"] = [p for p in report.problems[:seen] if p.startswith(mine)] + report.problems[seen:]
    return info


def _format(info: dict[str, Any]) -> str:
    lines = [f"sequence {info['name']} ({info['path']})"]
    for name, s in info["sensors"].items():
        rate = f"{s['rate_hz']:.2f} Hz" if s["rate_hz"] else "rate n/a"
        gap = f", max gap {s['max_gap_s']:.3f} s" if s["max_gap_s"] is not None else ""
        lines.append(f"  {name:8s} {s['frames']:6d} frames  {rate}  {s['gaps']} gaps > 1.5x median{gap}")
    if "gps_imu" in info:
        g = info["gps_imu"]
        lines.append(f"  gps fixes {g['fixes']} in {g['records']} records, {g['invalid']} invalid")
    lab = info["labels"]
    lines.append(f"  labels   {lab['files']} files ({lab['empty']} empty): {lab['by_class']}")
    lines.append(f"  valid after sync (per LiDAR sweep): {info['valid_after_sync']}")
    if "bad_files" in info:
        lines.append(f"  bad sensor files: {len(info['bad_files'])} (each listed as a problem below)")
    lines += [f"  problem: {p}" for p in info["problems"]] or ["  no problems"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    from src import config

    parser = argparse.ArgumentParser(description="CMHT dataset tools")
    sub = parser.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="index every sequence under ROOT and report what it holds")
    ins.add_argument("root")
    ins.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    ins.add_argument(
        "--bev-png", default="", help="write the first sequence's LiDAR BEV with label boxes here"
    )
    ins.add_argument(
        "--deep", action="store_true", help="decode every PCD/image file (default: cheap header/size checks)"
    )
    ins.add_argument("--workers", type=int, default=8, help="threads that check the files")
    config.add_config_args(ins, required=False)  # sync tolerances from [data], the BEV grid from [model.bev]
    args = parser.parse_args(argv)
    run_cfg = config.load_from_args(config.PretrainConfig, args)
    data_cfg = run_cfg.data
    report = Report()
    sequences = find_sequences(args.root, on_error="skip", report=report)
    bad = check_sequence_files(sequences, deep=args.deep, workers=args.workers)
    infos = [inspect_sequence(s, data_cfg, report, bad[str(s.path)]) for s in sequences]
    doc: dict[str, Any] = {"root": str(args.root), "sequences": infos, **report.as_dict()}
    if args.bev_png:
        from src.data import pipeline

        with_lidar = [s for s in sequences if "lidar" in s.streams]
        if not with_lidar:
            raise SystemExit(f"{args.root}: no sequence has LiDAR sweeps to draw")
        path, sweep, boxes = pipeline.write_bev_png(with_lidar[0], args.bev_png, run_cfg.model.bev)
        doc["bev_png"] = {"path": str(path), "sequence": with_lidar[0].name, "sweep": sweep, "boxes": boxes}
    if args.json:
        print(json.dumps(doc, indent=1))
        return
    print(f"{len(sequences)} sequence(s) under {args.root}")
    for info in infos:
        print(_format(info))
    if report.ignored:
        print(f"ignored {len(report.ignored)} unknown file(s)/folder(s):")
        print("\n".join(f"  {p}" for p in report.ignored))
    if "bev_png" in doc:
        b = doc["bev_png"]
        print(f"wrote {b['path']}: sequence {b['sequence']} sweep {b['sweep']}, {b['boxes']} label boxes")


if __name__ == "__main__":
    main()
