"""The scene index over a CMHT root: which folders are sequences, and each sensor's files and times.

The layout is discovered at run time (docs: CMHT_FORMAT.md). A sequence is a folder holding `Gps_Imu/` or
`lidar/`; its sensor folders follow either the SUSTechPOINTS pattern (`lidar/`, `camera/<name>/`,
`radar/<name>/`, files directly inside) or the KITTI-raw pattern (`<Sensor>/data/NNNNNNNN.ext`), and each keeps a
`timestamp.txt` (integer milliseconds, one line per data file) beside its files or one level up. Names match
case-insensitively; camera `front` is the `rgb` stream, camera `ir` the `ir` stream, any `radar/<name>` the radar.
Unknown files and folders are ignored and listed in the `Report`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from src.data.cmht.readers import (
    CAMERA_NAMES,
    SensorStream,
    named_entries,
    read_calib,
    read_gps_imu,
    read_timestamps,
)
from src.data.errors import CMHTFormatError, OnError, Report, report_problem
from src.data.sync import GpsImu

SENSORS = ("lidar", "rgb", "ir", "radar", "gps_imu")
EXTENSIONS = {
    "lidar": (".pcd",),
    "radar": (".pcd",),
    "rgb": (".jpg", ".jpeg", ".png"),
    "ir": (".jpg", ".jpeg", ".png", ".tif", ".tiff"),
    "gps_imu": (".txt",),
}


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
    subdirs = named_entries(folder, dirs=True)
    data_dir = subdirs.get("data", folder)
    files_here = named_entries(data_dir, dirs=False)
    stamp = files_here.get("timestamp.txt") or named_entries(folder, dirs=False).get("timestamp.txt")
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
    for key, path in named_entries(seq_dir, dirs=True).items():
        if key in ("lidar", "gps_imu"):
            found[key] = path
        elif key == "camera":
            for name, sub in named_entries(path, dirs=True).items():
                sensor = CAMERA_NAMES.get(name)
                if sensor is None or sensor in found:
                    if report is not None:
                        report.ignored.append(f"{sub}: unknown or duplicate camera folder")
                    continue
                found[sensor] = sub
        elif key == "radar":
            subs = {k: v for k, v in named_entries(path, dirs=True).items() if k != "data"}
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
    for key, path in named_entries(label_dir, dirs=False).items():
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
    top = named_entries(seq_dir, dirs=True)
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
    return bool({"gps_imu", "lidar"} & set(named_entries(folder, dirs=True)))


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
        pending += sorted(named_entries(folder, dirs=True).values(), reverse=True)
    return sorted(found, key=lambda s: s.path.as_posix())


def sweep_frame(seq: Sequence, sweep: int) -> int:
    """The frame number (label index space) of a LiDAR sweep: its 8-digit file name, else its position."""
    stem = Path(seq.streams["lidar"].files[sweep]).stem
    return int(stem) if stem.isdigit() else sweep
