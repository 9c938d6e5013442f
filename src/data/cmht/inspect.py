"""`python -m src.data.cmht inspect`: what a CMHT root holds and what is wrong with it.

    python -m src.data.cmht inspect ROOT [--json] [--deep] [--bev-png FILE] [--config TOML --set k=v]
prints per sequence the frames, measured rate and time gaps of each sensor, label counts by class, every problem
found (indexing runs with on_error="skip" so that all of them are listed), every bad sensor file and the samples
valid after sync. Every LiDAR/radar/camera file is checked cheaply (`check_file`: PCD header against the file size,
image header and end-of-image marker) in a thread pool, with a progress bar on large roots; `--deep` decodes them.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from src import config, contract
from src.config import BevConfig
from src.data.bev import bev_picture, lidar_bev
from src.data.cmht import dataset
from src.data.cmht.index import Sequence, find_sequences, sweep_frame
from src.data.cmht.readers import label_boxes, label_classes, read_image, read_labels
from src.data.errors import CMHTFormatError, Report
from src.data.pcd import check_pcd, read_pcd

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
        info["valid_after_sync"] = dataset.sync_table(seq, data_cfg, g).valid_counts()
    except (OSError, ValueError) as e:
        report.add(str(e) if str(e).startswith(str(seq.path)) else f"{seq.path}: cannot sync: {e}")
        info["valid_after_sync"] = None
    mine = (str(seq.path) + os.sep, str(seq.path) + ":")  # messages start with the file or folder at fault
    info["problems"] = [p for p in report.problems[:seen] if p.startswith(mine)] + report.problems[seen:]
    return info


def write_bev_png(
    seq: Sequence, path: str | Path, bev: BevConfig, *, sweep: int | None = None, size: int = 256
) -> tuple[Path, int, int]:
    """Draw one sweep's LiDAR BEV with its label footprints to a PNG: (path, sweep, boxes drawn).

    sweep=None picks the first sweep that has a non-empty label file (the first sweep when none has).
    """
    if "lidar" not in seq.streams:
        raise CMHTFormatError(f"{seq.path}: no lidar stream to draw")
    n = len(seq.streams["lidar"].files)
    boxes = np.zeros((0, 7))
    if sweep is None:
        sweep = 0
        for i in range(n):
            label = seq.labels.get(sweep_frame(seq, i))
            if label is not None and len(found := label_boxes(read_labels(label))):
                sweep, boxes = i, found
                break
    elif (label := seq.labels.get(sweep_frame(seq, sweep))) is not None:
        boxes = label_boxes(read_labels(label))
    grid = contract.bev_grid(bev, (size, size, 4))
    bev = lidar_bev(read_pcd(seq.streams["lidar"].files[sweep]), grid)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bev_picture(bev, boxes, grid).save(path)
    return path, sweep, len(boxes)


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
    parser = argparse.ArgumentParser(prog="python -m src.data.cmht", description="CMHT dataset tools")
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
        with_lidar = [s for s in sequences if "lidar" in s.streams]
        if not with_lidar:
            raise SystemExit(f"{args.root}: no sequence has LiDAR sweeps to draw")
        path, sweep, boxes = write_bev_png(with_lidar[0], args.bev_png, run_cfg.model.bev)
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
