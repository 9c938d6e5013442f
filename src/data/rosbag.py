"""Raw CMHT ROS2 bags (sqlite3 or MCAP) read with `rosbags`, into the same per-sensor streams as the frame layout.

Topic names are not documented, so topics are mapped to sensors by message type (overridable per sensor):
    sensor_msgs/msg/PointCloud2               lidar (a topic naming "radar" goes to radar)
    sensor_msgs/msg/Image, CompressedImage    rgb (a topic naming "ir", "thermal" or "infra" goes to ir)
    sensor_msgs/msg/Imu                       gps_imu record times, gyro and accel (REP 103 axes, flipped to
                                              the sensor contract's forward-right-down: src/contract.py)
    sensor_msgs/msg/NavSatFix                 the position of the gps_imu records (held between fixes)
A record's time is its header stamp (the bag's log time when the stamp is zero), in float64 seconds.
`RosbagSequence` indexes a bag and decodes records on demand; `read_bag` decodes a whole bag into memory;
`convert_bag` writes a bag as one sequence in the frame layout, so that everything built on `cmht` reads it:

    python -m src.data.rosbag convert BAG --out DIR [--topic sensor=/topic ...] [--on-error skip]

IMU units are kept (rad/s, m/s^2); the gps_imu records turn ROS's forward-left-up axes (+9.8 on z at rest) into
the sensor contract's forward-right-down ones (-9.8 at rest, as the frame release records); `read_bag` keeps
the messages as published. Point clouds are written in the frame they were published in: a bag carries no CMHT
calibration, so radar points are used as LiDAR-frame unless a `calib/radar/<name>.json` is put into the
converted sequence (the pipeline then moves them with it, `bev.radar_in_lidar_frame`).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rosbags.rosbag2 import Reader, ReaderError
from rosbags.typesys import Stores, get_typestore

from src import contract
from src.data import cmht
from src.data.cmht import CMHTFormatError, OnError, Report

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
IMU = "sensor_msgs/msg/Imu"
NAVSATFIX = "sensor_msgs/msg/NavSatFix"
TOPIC_SENSORS = ("lidar", "radar", "rgb", "ir", "imu", "gps")
_ACCEPTS = {
    "lidar": (POINTCLOUD2,),
    "radar": (POINTCLOUD2,),
    "rgb": (IMAGE, COMPRESSED),
    "ir": (IMAGE, COMPRESSED),
    "imu": (IMU,),
    "gps": (NAVSATFIX,),
}
_POINT_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
_ENCODINGS = {  # encoding -> (element type, channels, reversed colour order)
    "rgb8": ("u1", 3, False),
    "bgr8": ("u1", 3, True),
    "rgba8": ("u1", 4, False),
    "bgra8": ("u1", 4, True),
    "mono8": ("u1", 1, False),
    "8uc1": ("u1", 1, False),
    "mono16": ("u2", 1, False),
    "16uc1": ("u2", 1, False),
    "32fc1": ("f4", 1, False),
}
TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)


def _words(topic: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", topic.lower()))


def map_topics(connections: Mapping[str, str], overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """{topic: msgtype} -> {sensor: topic} for TOPIC_SENSORS (module docstring); overrides win and are checked."""
    overrides = dict(overrides or {})
    for sensor, topic in overrides.items():
        if sensor not in _ACCEPTS:
            raise ValueError(f"rosbag topic override for unknown sensor {sensor!r} (known: {TOPIC_SENSORS})")
        if connections.get(topic) not in _ACCEPTS[sensor]:
            raise CMHTFormatError(
                f"rosbag: topic {topic!r} for {sensor} is not in the bag with one of the types {_ACCEPTS[sensor]} "
                f"(found {connections.get(topic)!r})"
            )
    out = dict(overrides)
    taken = set(overrides.values())
    for topic, msgtype in sorted(connections.items()):
        if topic in taken:
            continue
        words = _words(topic)
        if msgtype == POINTCLOUD2:
            sensor = "radar" if any("radar" in w for w in words) else "lidar"
        elif msgtype in (IMAGE, COMPRESSED):
            sensor = "ir" if words & {"ir", "thermal", "infra", "infrared", "flir"} else "rgb"
        elif msgtype == IMU:
            sensor = "imu"
        elif msgtype == NAVSATFIX:
            sensor = "gps"
        else:
            continue
        out.setdefault(sensor, topic)
    return out


# --------------------------------------------------------------------------------------------- decoding


def pointcloud2_fields(msg: Any, where: str) -> dict[str, np.ndarray]:
    """A PointCloud2 message -> {field: array [N] or [N, count]} (native byte order), one frombuffer."""
    order = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for f in msg.fields:
        if f.datatype not in _POINT_TYPES:
            raise CMHTFormatError(f"{where}: PointCloud2 field {f.name!r} has unknown datatype {f.datatype}")
        base = np.dtype(order + _POINT_TYPES[f.datatype])
        names.append(f.name)
        formats.append((base, (f.count,)) if f.count > 1 else base)
        offsets.append(f.offset)
    n = int(msg.width) * int(msg.height)
    try:
        dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": msg.point_step})
    except ValueError as e:
        raise CMHTFormatError(
            f"{where}: PointCloud2 fields do not fit point_step {msg.point_step}: {e}"
        ) from e
    data = np.asarray(msg.data, np.uint8)
    if msg.row_step < msg.width * msg.point_step or len(data) < msg.height * msg.row_step:
        raise CMHTFormatError(
            f"{where}: PointCloud2 holds {len(data)} bytes, expected {msg.height} rows of {msg.row_step}"
        )
    rows = data[: msg.height * msg.row_step].reshape(msg.height, msg.row_step)[
        :, : msg.width * msg.point_step
    ]
    rec = np.frombuffer(np.ascontiguousarray(rows).tobytes(), dtype, count=n)
    return {name: rec[name].astype(rec[name].dtype.newbyteorder("="), copy=True) for name in names}


def image_pixels(msg: Any, msgtype: str, where: str) -> np.ndarray:
    """An Image / CompressedImage message -> pixels ([H, W, C] colour, [H, W] single channel)."""
    if msgtype == COMPRESSED:
        try:
            with Image.open(io.BytesIO(np.asarray(msg.data, np.uint8).tobytes())) as im:
                im.load()
                return np.asarray(im)
        except (OSError, ValueError, SyntaxError) as e:
            raise CMHTFormatError(f"{where}: cannot decode the compressed image: {e}") from e
    enc = _ENCODINGS.get(msg.encoding.lower())
    if enc is None:
        raise CMHTFormatError(
            f"{where}: unsupported image encoding {msg.encoding!r} (known: {sorted(_ENCODINGS)})"
        )
    kind, ch, rev = enc
    dtype = np.dtype((">" if msg.is_bigendian else "<") + kind)
    row = msg.width * ch * dtype.itemsize
    data = np.asarray(msg.data, np.uint8)
    if msg.step < row or len(data) < msg.height * msg.step:
        raise CMHTFormatError(
            f"{where}: image holds {len(data)} bytes, expected {msg.height} rows of {msg.step}"
        )
    rows = np.ascontiguousarray(data[: msg.height * msg.step].reshape(msg.height, msg.step)[:, :row])
    img = (
        np.frombuffer(rows.tobytes(), dtype)
        .astype(dtype.newbyteorder("="))
        .reshape(msg.height, msg.width, ch)
    )
    if rev:
        img = np.concatenate([img[..., 2::-1], img[..., 3:]], axis=-1)
    return img[..., 0] if ch == 1 else img


# --------------------------------------------------------------------------------------------- sequence


def imu_values(msgs: list[Any]) -> np.ndarray:
    """Imu messages -> [N, 6] float64: angular velocity x y z (rad/s), linear acceleration x y z (m/s^2)."""
    rows = [
        [m.angular_velocity.x, m.angular_velocity.y, m.angular_velocity.z]
        + [m.linear_acceleration.x, m.linear_acceleration.y, m.linear_acceleration.z]
        for m in msgs
    ]
    return np.array(rows, np.float64).reshape(-1, 6)


def navsat_values(msgs: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NavSatFix messages -> latitude, longitude (degrees) and whether each is a usable fix (status >= 0)."""
    lat = np.array([m.latitude for m in msgs], np.float64)
    lon = np.array([m.longitude for m in msgs], np.float64)
    ok = (
        np.array([m.status.status >= 0 for m in msgs], np.bool_).reshape(-1)
        & np.isfinite(lat)
        & np.isfinite(lon)
    )
    return lat, lon, ok


@dataclasses.dataclass(frozen=True, eq=False)
class BagStream:
    """One topic's records: times (float64 s, strictly increasing), and to find them again their log times (ns)
    and positions among the topic's messages (which differ from 0..N-1 where out-of-order messages were dropped)."""

    name: str
    topic: str
    msgtype: str
    timestamps: np.ndarray
    log_times: np.ndarray
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.timestamps)


class RosbagSequence:
    """A ROS2 bag as one sequence: `streams` per sensor (lidar, rgb, ir, radar, gps_imu), `read`, `gps_imu()`."""

    def __init__(
        self,
        path: str | Path,
        topics: Mapping[str, str] | None = None,
        *,
        on_error: OnError = "raise",
        report: Report | None = None,
    ):
        self.path = Path(path)
        self.name = self.path.name
        self.on_error, self.report = on_error, report
        try:
            with Reader(self.path) as reader:
                types = {c.topic: c.msgtype for c in reader.connections}
                self.topics = map_topics(types, topics)
                wanted = {topic: sensor for sensor, topic in self.topics.items()}
                conns = [c for c in reader.connections if c.topic in wanted]
                stamps: dict[str, list[tuple[int, float]]] = {s: [] for s in self.topics}
                for conn, log_ns, raw in reader.messages(connections=conns):
                    stamp = TYPESTORE.deserialize_cdr(raw, conn.msgtype).header.stamp
                    t = stamp.sec + stamp.nanosec * 1e-9 if (stamp.sec or stamp.nanosec) else log_ns * 1e-9
                    stamps[wanted[conn.topic]].append((log_ns, t))
        except (ReaderError, OSError, KeyError, ValueError) as e:
            if isinstance(e, CMHTFormatError):  # a topic override that does not fit the bag
                raise CMHTFormatError(f"{self.path}: {e}") from e
            raise CMHTFormatError(f"{self.path}: cannot read the ROS2 bag: {e}") from e
        if report is not None:
            report.ignored += [
                f"{self.path}: topic {t} ({m}) not mapped" for t, m in types.items() if t not in wanted
            ]
        self.channels: dict[str, BagStream] = {}
        for sensor, rows in stamps.items():
            topic = self.topics[sensor]
            log = np.array([r[0] for r in rows], np.int64)
            t = np.array([r[1] for r in rows], np.float64)
            keep = np.ones(len(t), np.bool_)
            keep[1:] = t[1:] > np.maximum.accumulate(t)[:-1]
            if not keep.all():
                cmht.report_problem(
                    f"{self.path}: topic {topic}: {int((~keep).sum())} message(s) not strictly later than the "
                    "previous ones; dropped",
                    on_error,
                    report,
                    sensor,
                    int((~keep).sum()),
                )
            self.channels[sensor] = BagStream(
                sensor, topic, types[topic], t[keep], log[keep], np.flatnonzero(keep)
            )
        self.streams = {s: self.channels[s] for s in ("lidar", "rgb", "ir", "radar") if s in self.channels}
        if "imu" in self.channels:
            self.streams["gps_imu"] = dataclasses.replace(self.channels["imu"], name="gps_imu")

    def _messages(self, sensor: str, index: int | None = None) -> list[Any]:
        """Deserialised messages of one sensor's topic: all of them, or the one at `index`."""
        ch = self.channels[sensor]
        span = (
            {} if index is None else {"start": int(ch.log_times[index]), "stop": int(ch.log_times[index]) + 1}
        )
        with Reader(self.path) as reader:
            conns = [c for c in reader.connections if c.topic == ch.topic]
            msgs = [TYPESTORE.deserialize_cdr(raw, c.msgtype) for c, _, raw in reader.messages(conns, **span)]
        return [msgs[i] for i in ch.positions] if index is None else msgs[:1]

    def read(self, sensor: str, index: int) -> dict[str, np.ndarray] | np.ndarray:
        """Record `index` of lidar/radar (point fields, as `cmht.read_pcd`) or rgb/ir (pixels, as `read_image`)."""
        ch = self.channels[sensor]
        where = f"{self.path}: topic {ch.topic} message {index}"
        (msg,) = self._messages(sensor, index)
        if ch.msgtype == POINTCLOUD2:
            return pointcloud2_fields(msg, where)
        return image_pixels(msg, ch.msgtype, where)

    def gps_imu(self) -> cmht.GpsImu:
        """IMU records with the latest NavSatFix at or before each (held; fix_changed where a new fix arrived)."""
        if "imu" not in self.channels:
            raise CMHTFormatError(f"{self.path}: no sensor_msgs/msg/Imu topic for the gps_imu records")
        t = self.channels["imu"].timestamps
        values = imu_values(self._messages("imu"))
        flip = np.asarray(contract.FLU_TO_FRD)  # REP 103 forward-left-up -> the sensor contract's axes
        gyro, accel = values[:, :3] * flip, values[:, 3:] * flip
        n = len(t)
        fix = np.full(n, -1, np.int64)
        lat = lon = np.zeros(0)
        fix_ok = np.zeros(0, np.bool_)
        if "gps" in self.channels:
            lat, lon, fix_ok = navsat_values(self._messages("gps"))
            fix = np.searchsorted(self.channels["gps"].timestamps, t, side="right") - 1
        has_fix = fix >= 0
        valid = has_fix & np.all(np.isfinite(gyro), axis=1) & np.all(np.isfinite(accel), axis=1)
        valid[has_fix] &= fix_ok[fix[has_fix]]
        bad = int(n - valid.sum())
        if bad:
            cmht.report_problem(
                f"{self.path}: {bad} IMU record(s) without a valid GPS fix or with non-finite values",
                self.on_error,
                self.report,
                "gps_imu",
                bad,
            )
        out_lat = np.where(valid, lat[np.maximum(fix, 0)] if len(lat) else 0.0, 0.0)
        out_lon = np.where(valid, lon[np.maximum(fix, 0)] if len(lon) else 0.0, 0.0)
        enu = np.zeros((n, 2))
        changed = np.zeros(n, np.bool_)
        if valid.any():
            first = int(np.argmax(valid))
            enu[valid] = cmht.latlon_to_enu(out_lat[valid], out_lon[valid], out_lat[first], out_lon[first])
            f = fix[valid]
            c = np.ones(len(f), np.bool_)
            c[1:] = f[1:] != f[:-1]
            changed[valid] = c
        zero = ~valid[:, None]
        return cmht.GpsImu(
            t=t,
            lat=out_lat,
            lon=out_lon,
            enu=enu,
            gyro=np.where(zero, 0.0, gyro),
            accel=np.where(zero, 0.0, accel),
            fix_changed=changed,
            valid=valid,
        )


@dataclasses.dataclass(frozen=True, eq=False)
class BagStreams:
    """A whole bag decoded into memory, per sensor (for small bags and tests; `RosbagSequence` reads lazily).

    `timestamps` has float64 seconds per mapped sensor (lidar, radar, rgb, ir, imu, gps); `points` the point
    dicts of lidar/radar, `images` the pixels of rgb/ir, `imu` [N, 6] (gyro, accel as published), `navsat`
    [M, 2] (lat, lon in degrees, NaN where the fix status is negative), `gps_imu` the merged records."""

    path: Path
    topics: dict[str, str]
    timestamps: dict[str, np.ndarray]
    points: dict[str, list[dict[str, np.ndarray]]]
    images: dict[str, list[np.ndarray]]
    imu: np.ndarray
    navsat: np.ndarray
    gps_imu: cmht.GpsImu | None


def read_bag(
    path: str | Path,
    *,
    topics: Mapping[str, str] | None = None,
    on_error: OnError = "raise",
    report: Report | None = None,
) -> BagStreams:
    """Decode every mapped topic of a ROS2 bag (see the module docstring for the mapping) into memory."""
    seq = RosbagSequence(path, topics, on_error=on_error, report=report)
    ch = seq.channels
    points = {s: [pointcloud2_fields(m, f"{seq.path}: topic {ch[s].topic}") for m in seq._messages(s)]
              for s in ("lidar", "radar") if s in ch}  # fmt: skip
    images = {s: [image_pixels(m, ch[s].msgtype, f"{seq.path}: topic {ch[s].topic}") for m in seq._messages(s)]
              for s in ("rgb", "ir") if s in ch}  # fmt: skip
    imu = imu_values(seq._messages("imu")) if "imu" in ch else np.zeros((0, 6))
    navsat = np.zeros((0, 2))
    if "gps" in ch:
        lat, lon, ok = navsat_values(seq._messages("gps"))
        navsat = np.where(ok[:, None], np.stack([lat, lon], axis=1), np.nan)
    return BagStreams(
        path=seq.path,
        topics=dict(seq.topics),
        timestamps={s: c.timestamps for s, c in ch.items()},
        points=points,
        images=images,
        imu=imu,
        navsat=navsat,
        gps_imu=seq.gps_imu() if "imu" in ch else None,
    )


# --------------------------------------------------------------------------------------------- conversion

_FOLDERS = {"lidar": "lidar", "radar": "radar/points", "rgb": "camera/front", "ir": "camera/ir"}
_MAGIC = {b"\xff\xd8\xff": ".jpg", b"\x89PNG\r\n\x1a\n": ".png"}
CONVERTED = "_converted"  # convert_bags: the folder under a root of bags that holds the converted sequences
GPS_DATAFORMAT = (
    "latitude (ddmm.mmmm)\nlongitude (ddmm.mmmm)\nangular velocity around x (rad/s)\n"
    "angular velocity around y (rad/s)\nangular velocity around z (rad/s)\n"
    "linear acceleration in the x direction (G)\nlinear acceleration in the y direction (G)\n"
    "linear acceleration in the z direction (G)\n"
)


def degrees_to_ddmm(x: np.ndarray) -> np.ndarray:
    """Signed decimal degrees -> ddmm.mmmmmmm values (1e-7 minute, ~2e-9 degree; a rounded 60' carries over)."""
    x = np.asarray(x, np.float64)
    deg, minutes = np.divmod(np.round(np.abs(x) * 60e7).astype(np.int64), 60 * 10**7)
    return np.sign(x) * (deg * 100.0 + minutes / 1e7)


def _whole_ms(name: str, t: np.ndarray, where: str, on_error: OnError, report: Report | None) -> np.ndarray:
    """Integer ms of the times, and which to keep: a record in the same ms as an earlier one cannot be stored."""
    ms = np.round(t * 1000.0).astype(np.int64)
    keep = np.ones(len(ms), np.bool_)
    keep[1:] = ms[1:] > np.maximum.accumulate(ms)[:-1]
    if not keep.all():
        cmht.report_problem(
            f"{where}: {int((~keep).sum())} {name} record(s) in the same millisecond as an earlier one; dropped",
            on_error,
            report,
            name,
            int((~keep).sum()),
        )
    return keep


def _write_stamps(folder: Path, t: np.ndarray) -> None:
    ms = np.round(t * 1000.0).astype(np.int64)
    (folder / "timestamp.txt").write_text("".join(f"{v}\n" for v in ms.tolist()))


def _write_image(folder: Path, index: int, msg: Any, msgtype: str, sensor: str, where: str) -> None:
    """JPEG/PNG payloads are stored as they are; raw images as lossless PNG (float IR as TIFF)."""
    if msgtype == COMPRESSED:
        data = np.asarray(msg.data, np.uint8).tobytes()
        ext = next((e for magic, e in _MAGIC.items() if data.startswith(magic)), None)
        if ext is not None:
            (folder / f"{index:08d}{ext}").write_bytes(data)
            return
    pixels = image_pixels(msg, msgtype, where)
    if pixels.dtype.kind == "f" and sensor == "ir":
        Image.fromarray(pixels.astype(np.float32)).save(folder / f"{index:08d}.tiff")
    elif pixels.dtype in (np.uint8, np.uint16):
        Image.fromarray(pixels).save(folder / f"{index:08d}.png", compress_level=1)
    else:
        raise CMHTFormatError(
            f"{where}: {pixels.dtype} {sensor} pixels cannot be stored as a {sensor} image file"
        )


def _write_gps_imu(seq: RosbagSequence, folder: Path) -> None:
    """The valid gps_imu records as 8-line text files (accel in G, as in the frame release) + timestamps."""
    g = seq.gps_imu()
    keep = g.valid & _whole_ms("gps_imu", g.t, str(seq.path), seq.on_error, seq.report)
    rows = np.column_stack([degrees_to_ddmm(g.lat), degrees_to_ddmm(g.lon), g.gyro, g.accel / cmht.G])[keep]
    for i, r in enumerate(rows.tolist()):
        (folder / f"{i:08d}.txt").write_text(f"{r[0]:.7f}\n{r[1]:.7f}\n" + "\n".join(repr(v) for v in r[2:]))
    _write_stamps(folder, g.t[keep])
    (folder.parent / "dataformat.txt").write_text(GPS_DATAFORMAT)


def _write_sequence(seq: RosbagSequence, out: Path) -> None:
    """Every record stream of `seq` into `out` in the frame layout, reading the bag once for the record files."""
    # topic -> (sensor, folder, {position among the topic's messages: file index})
    targets: dict[str, tuple[str, Path, dict[int, int]]] = {}
    for sensor, sub in _FOLDERS.items():
        if sensor not in seq.channels:
            continue
        ch = seq.channels[sensor]
        keep = _whole_ms(sensor, ch.timestamps, f"{seq.path}: topic {ch.topic}", seq.on_error, seq.report)
        folder = out / sub
        folder.mkdir(parents=True)
        _write_stamps(folder, ch.timestamps[keep])
        targets[ch.topic] = (sensor, folder, {int(p): i for i, p in enumerate(ch.positions[keep].tolist())})
    count: dict[str, int] = dict.fromkeys(targets, 0)
    with Reader(seq.path) as reader:
        conns = [c for c in reader.connections if c.topic in targets]
        for conn, _, raw in reader.messages(connections=conns):
            sensor, folder, index = targets[conn.topic]
            position, count[conn.topic] = count[conn.topic], count[conn.topic] + 1
            if position not in index:
                continue
            msg = TYPESTORE.deserialize_cdr(raw, conn.msgtype)
            where = f"{seq.path}: topic {conn.topic} message {position}"
            if conn.msgtype == POINTCLOUD2:
                cmht.write_pcd(folder / f"{index[position]:08d}.pcd", pointcloud2_fields(msg, where))
            else:
                _write_image(folder, index[position], msg, conn.msgtype, sensor, where)
    if "imu" in seq.channels:
        folder = out / "Gps_Imu" / "data"
        folder.mkdir(parents=True)
        _write_gps_imu(seq, folder)


def convert_bag(
    bag_path: str | Path,
    out_dir: str | Path,
    *,
    topics: Mapping[str, str] | None = None,
    on_error: OnError = "raise",
    report: Report | None = None,
) -> Path:
    """Write a ROS2 bag as one sequence folder `out_dir` in the frame layout (`cmht.find_sequences` reads it).

    lidar/ and radar/points/ hold PCD, camera/front/ and camera/ir/ the JPEG/PNG payloads as published (raw
    images as PNG), Gps_Imu/data/ the IMU records with the held fix; each folder's timestamp.txt has the bag
    times in integer ms. Written in a temporary folder beside `out_dir` and renamed into place when complete.
    """
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out}: the conversion target already exists")
    seq = RosbagSequence(bag_path, topics, on_error=on_error, report=report)
    if not seq.streams:
        raise CMHTFormatError(f"{seq.path}: no PointCloud2, image or Imu topic to convert")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_sequence(seq, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not out.exists():
            raise  # else another process converted the same bag first
    return out


def convert_bags(root: str | Path, *, on_error: OnError = "raise", report: Report | None = None) -> Path:
    """Convert every bag (a folder with metadata.yaml) under `root` once into `root/_converted/<its path>/`.

    Bags converted earlier are kept as they are; returns the `_converted` folder, a root for `find_sequences`.
    In skip mode a bag that cannot be converted is reported and left out.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={root}: no such folder of ROS2 bags")
    done = root / CONVERTED
    bags = sorted(m.parent for m in root.rglob("metadata.yaml") if CONVERTED not in m.relative_to(root).parts)
    if not bags:
        raise FileNotFoundError(f"data.root={root}: no ROS2 bag (a folder with metadata.yaml) under it")
    for bag in bags:
        out = done / (bag.relative_to(root).as_posix() if bag != root else root.name)
        if out.exists():
            continue
        try:
            convert_bag(bag, out, on_error=on_error, report=report)
        except FileExistsError:
            continue  # another process converted it meanwhile
        except CMHTFormatError as e:
            cmht.report_problem(f"{e}; bag left out", on_error, report, "bag")
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="write a bag as one sequence folder in the CMHT frame layout")
    conv.add_argument("bag", help="the bag folder (with metadata.yaml)")
    conv.add_argument("--out", required=True, help="sequence folder to write (must not exist)")
    conv.add_argument("--topic", action="append", default=[], metavar="SENSOR=/TOPIC",
                      help=f"map a topic to a sensor ({', '.join(TOPIC_SENSORS)}); repeatable")  # fmt: skip
    conv.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    args = parser.parse_args(argv)
    topics = {}
    for item in args.topic:
        sensor, sep, topic = item.partition("=")
        if not sep or not topic:
            parser.error(f"--topic {item!r}: expected SENSOR=/TOPIC")
        topics[sensor] = topic
    report = Report()
    out = convert_bag(args.bag, args.out, topics=topics, on_error=args.on_error, report=report)
    seq = cmht.read_sequence(out)
    print(f"wrote {out}: " + ", ".join(f"{s} {len(st)}" for s, st in seq.streams.items()))
    for problem in report.problems:
        print(f"  skipped: {problem}")


if __name__ == "__main__":
    main()
