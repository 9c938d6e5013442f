"""A ROS2 bag written as one CMHT sequence in the frame layout, so that everything built on `cmht` reads it:

    python -m src.data.rosbag convert BAG --out DIR [--topic sensor=/topic ...] [--on-error skip]

IMU units are kept (rad/s, m/s^2); the gps_imu records turn ROS's forward-left-up axes (+9.8 on z at rest) into
the sensor contract's forward-right-down ones (-9.8 at rest, as the frame release records). Point clouds are
written in the frame they were published in: a bag carries no CMHT calibration, so radar points are used as
LiDAR-frame unless a `calib/radar/<name>.json` is put into the converted sequence (the pipeline then moves them
with it, `radar_in_lidar_frame`).
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rosbags.rosbag2 import Reader

from src.data.cmht.index import read_sequence
from src.data.cmht.readers import GPS_DATAFORMAT, G, degrees_to_ddmm, write_timestamps
from src.data.errors import CMHTFormatError, OnError, Report, report_problem
from src.data.pcd import write_pcd
from src.data.rosbag.reader import (
    COMPRESSED,
    POINTCLOUD2,
    TOPIC_SENSORS,
    TYPESTORE,
    RosbagSequence,
    image_pixels,
    pointcloud2_fields,
)

_FOLDERS = {"lidar": "lidar", "radar": "radar/points", "rgb": "camera/front", "ir": "camera/ir"}
_MAGIC = {b"\xff\xd8\xff": ".jpg", b"\x89PNG\r\n\x1a\n": ".png"}
CONVERTED = "_converted"  # convert_bags: the folder under a root of bags that holds the converted sequences


def _whole_ms(name: str, t: np.ndarray, where: str, on_error: OnError, report: Report | None) -> np.ndarray:
    """Integer ms of the times, and which to keep: a record in the same ms as an earlier one cannot be stored."""
    ms = np.round(t * 1000.0).astype(np.int64)
    keep = np.ones(len(ms), np.bool_)
    keep[1:] = ms[1:] > np.maximum.accumulate(ms)[:-1]
    if not keep.all():
        report_problem(
            f"{where}: {int((~keep).sum())} {name} record(s) in the same millisecond as an earlier one; dropped",
            on_error,
            report,
            name,
            int((~keep).sum()),
        )
    return keep


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
    rows = np.column_stack([degrees_to_ddmm(g.lat), degrees_to_ddmm(g.lon), g.gyro, g.accel / G])[keep]
    for i, r in enumerate(rows.tolist()):
        (folder / f"{i:08d}.txt").write_text(f"{r[0]:.7f}\n{r[1]:.7f}\n" + "\n".join(repr(v) for v in r[2:]))
    write_timestamps(folder, np.round(g.t[keep] * 1000.0).astype(np.int64))
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
        write_timestamps(folder, np.round(ch.timestamps[keep] * 1000.0).astype(np.int64))
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
                write_pcd(folder / f"{index[position]:08d}.pcd", pointcloud2_fields(msg, where))
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
    """Write a ROS2 bag as one sequence folder `out_dir` in the frame layout (`index.find_sequences` reads it).

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
            report_problem(f"{e}; bag left out", on_error, report, "bag")
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m src.data.rosbag", description=__doc__.split("\n")[0])
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
    seq = read_sequence(out)
    print(f"wrote {out}: " + ", ".join(f"{s} {len(st)}" for s, st in seq.streams.items()))
    for problem in report.problems:
        print(f"  skipped: {problem}")

