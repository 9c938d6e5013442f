"""Driving episodes on disk: the JSON schema (`data/schema/episode.json`), path safety, validation and its CLI.

An episode is one JSON file next to its PNG frames; every image path is relative to the episode file and must stay
inside the dataset root (`resolve_inside`). Validation never stops at the first problem: each one is a `Problem`
naming the file, the JSON path and the reason.

    python -m src.data.episodes validate DIR [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "data" / "schema" / "episode.json"
EPISODE_FILE = "episode.json"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One defect of an episode file: which file, where in the JSON (`$.frames[3].ego.pose`), and why."""

    file: str
    json_path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.json_path}: {self.reason}"


class EpisodeError(ValueError):
    """An episode file does not fit the schema or references files it may not; lists every problem found."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def resolve_inside(root: Path, base: Path, relative: str) -> Path:
    """`base / relative` resolved (symlinks included); a ValueError unless it stays inside `root`.

    Absolute paths (POSIX or Windows style) are refused outright; `..` is allowed only while the resolved target
    is still inside the dataset root.
    """
    if (
        PurePosixPath(relative).is_absolute()
        or PureWindowsPath(relative).is_absolute()
        or relative.startswith("\\")
    ):
        raise ValueError(
            f"absolute path {relative!r} is not allowed (paths are relative to the episode file)"
        )
    target = (base / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise ValueError(f"path {relative!r} escapes the dataset root")
    return target


def check_episode(path: Path, root: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Parse and check one episode file: (the parsed JSON or None when unreadable, every problem found)."""
    name = str(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        return None, [Problem(name, "$", f"cannot read: {e}")]
    except json.JSONDecodeError as e:
        return None, [Problem(name, "$", f"invalid JSON: {e}")]
    schema_errors = sorted(_validator().iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if schema_errors:
        return data, [Problem(name, e.json_path, e.message) for e in schema_errors]
    problems: list[Problem] = []
    cameras = set(data["cameras"])
    for cam in data.get("camera_yaw_deg", {}):
        if cam not in cameras:
            problems.append(Problem(name, f"$.camera_yaw_deg.{cam}", f"camera {cam!r} is not in $.cameras"))
    previous = -math.inf
    for i, frame in enumerate(data["frames"]):
        if frame["timestamp"] <= previous:
            problems.append(Problem(name, f"$.frames[{i}].timestamp", "timestamps must increase strictly"))
        previous = frame["timestamp"]
        for cam, image in frame["images"].items():
            where = f"$.frames[{i}].images.{cam}"
            if cam not in cameras:
                problems.append(Problem(name, where, f"camera {cam!r} is not in $.cameras {sorted(cameras)}"))
                continue
            try:
                target = resolve_inside(root, path.parent, image["image_path"])
            except ValueError as e:
                problems.append(Problem(name, f"{where}.image_path", str(e)))
                continue
            if not target.is_file():
                problems.append(
                    Problem(name, f"{where}.image_path", f"image {image['image_path']!r} does not exist")
                )
    return data, problems


def find_episode_files(root: str | Path) -> list[Path]:
    """Every `episode.json` under `root`, in a stable (sorted) order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"episode root {root} is not a directory")
    return sorted(root.rglob(EPISODE_FILE))


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """The outcome of `validate_dir`: every problem, and how many frames each camera has (valid images)."""

    root: str
    episodes: int
    frames: int
    frames_by_camera: dict[str, int]
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems and self.episodes > 0

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok}


def validate_dir(root: str | Path) -> ValidationReport:
    """Check every episode under `root`; never stops at the first problem."""
    root = Path(root)
    files = find_episode_files(root)
    problems: list[Problem] = []
    frames = 0
    by_cam: dict[str, int] = {}
    for f in files:
        data, found = check_episode(f, root)
        problems += found
        if data is None or not isinstance(data.get("frames"), list):
            continue
        frames += len(data["frames"])
        for cam in data.get("cameras", []) if isinstance(data.get("cameras"), list) else []:
            by_cam.setdefault(str(cam), 0)
        for frame in data["frames"]:
            images = frame.get("images") if isinstance(frame, dict) else None
            for cam in images if isinstance(images, dict) else ():
                by_cam[cam] = by_cam.get(cam, 0) + 1
    if not files:
        problems.append(Problem(str(root), "$", f"no {EPISODE_FILE} files found"))
    return ValidationReport(str(root), len(files), frames, dict(sorted(by_cam.items())), tuple(problems))


# --------------------------------------------------------------------------------------------- CLI


def _validate_main(args: argparse.Namespace) -> int:
    report = validate_dir(args.dir)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(f"{report.root}: {report.episodes} episode(s), {report.frames} frame(s)")
        for cam, n in report.frames_by_camera.items():
            print(f"  {cam}: {n} frame(s) with an image")
        for p in report.problems:
            print(f"PROBLEM {p}")
        print("OK" if report.ok else f"{len(report.problems)} problem(s)")
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.data.episodes", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check every episode under DIR against the schema")
    v.add_argument("dir")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    return _validate_main(parser.parse_args(argv))
