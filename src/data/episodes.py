"""Driving episodes on disk: JSON schema validation, per-frame and temporal-pair Grain sources, and a recorder.

An episode is one JSON file (`data/schema/episode.json`) next to its PNG frames. Every camera of a frame is
optional: an absent `images[cam]` is a dropped frame, carried as `image_valid_by_cam[cam] = False` with zeros in
the image, so the multi-view objectives can drop that view instead of learning from a black frame. Every sample is
also a Contract-1 sample (one camera -> `rgb`, ego -> `gps`/`imu`), so the same Raceformer runs on it.

CLI:
    python -m src.data.episodes validate DIR [--json]
    python -m src.data.episodes record --episodes N --out DIR [--frames F --seed S --size 64 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import grain
import jax
import jax.numpy as jnp
import jsonschema
import numpy as np
from PIL import Image

from src import contract, processes
from src.config import DataConfig, ModalityConfig, ModelConfig
from src.data import images

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "data" / "schema" / "episode.json"
EPISODE_FILE = "episode.json"
DEFAULT_CAMERAS: tuple[str, ...] = ("front", "front_left", "front_right")


# --------------------------------------------------------------------------------------------- validation


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


# --------------------------------------------------------------------------------------------- loading


@dataclasses.dataclass(frozen=True, eq=False)
class Episode:
    """One validated episode as arrays; `image_paths[cam][t]` is None where the frame is missing."""

    file: Path
    episode_id: str
    cameras: tuple[str, ...]
    timestamps: np.ndarray  # float64 [T]
    image_paths: dict[str, tuple[Path | None, ...]]
    pose: np.ndarray  # float32 [T, 3] x, y, yaw
    velocity: np.ndarray  # float32 [T, 3] vx, vy, yaw_rate (car frame)
    acceleration: np.ndarray  # float32 [T, 3] specific force (contract IMU frame, m/s^2), zeros where absent
    imu_valid: np.ndarray  # bool [T]
    action: np.ndarray  # float32 [T, 2]

    def __len__(self) -> int:
        return len(self.timestamps)


def load_episode(path: str | Path, root: str | Path) -> Episode:
    """Load one episode file; an EpisodeError (file + JSON path of every problem) when it is malformed."""
    path, root = Path(path), Path(root)
    data, problems = check_episode(path, root)
    if problems or data is None:
        raise EpisodeError(problems)
    frames = data["frames"]
    cameras = tuple(data["cameras"])
    paths = {
        cam: tuple(
            resolve_inside(root, path.parent, f["images"][cam]["image_path"]) if cam in f["images"] else None
            for f in frames
        )
        for cam in cameras
    }
    accel = [f["ego"].get("acceleration") for f in frames]
    return Episode(
        file=path,
        episode_id=data["episode_id"],
        cameras=cameras,
        timestamps=np.array([f["timestamp"] for f in frames], np.float64),
        image_paths=paths,
        pose=np.array([f["ego"]["pose"] for f in frames], np.float32),
        velocity=np.array([f["ego"]["velocity"] for f in frames], np.float32),
        acceleration=np.array([a if a is not None else (0.0, 0.0, 0.0) for a in accel], np.float32),
        imu_valid=np.array([a is not None for a in accel], np.bool_),
        action=np.array([f["action"] for f in frames], np.float32),
    )


def load_episodes(root: str | Path, on_error: str = "raise") -> tuple[list[Episode], list[Problem]]:
    """All episodes under `root`. on_error="raise": the first bad file raises; "skip": it is left out and counted."""
    episodes: list[Episode] = []
    skipped: list[Problem] = []
    for f in find_episode_files(root):
        try:
            episodes.append(load_episode(f, root))
        except EpisodeError as e:
            if on_error == "raise":
                raise
            skipped += e.problems
    if not episodes:
        raise FileNotFoundError(f"no usable episodes under {root} ({len(skipped)} problem(s))")
    return episodes, skipped


# --------------------------------------------------------------------------------------------- sources


def ego_gps(pose: np.ndarray, velocity: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Episode ego state (pose x, y, yaw; velocity vx, vy, ...) and the episode's first pose -> contract gps [5]."""
    speed = np.hypot(velocity[..., 0], velocity[..., 1])
    return contract.gps_vector(pose[..., 0] - start[0], pose[..., 1] - start[1], pose[..., 2], speed)


def ego_imu(velocity: np.ndarray, acceleration: np.ndarray) -> np.ndarray:
    """Planar ego state -> contract imu [6]: the yaw rate (velocity[2], counter-clockwise) as a body-frame rate,
    then the recorded specific force, which is already in the contract's frame."""
    zeros = np.zeros_like(velocity[..., 2])
    gyro = contract.imu_vector(np.stack([zeros, zeros, velocity[..., 2]], axis=-1), np.zeros(3))[..., :3]
    return np.concatenate([gyro, np.asarray(acceleration, np.float32)], axis=-1).astype(np.float32)


class EpisodeFrameSource:
    """Random-access source of single frames over a list of episodes (Grain `RandomAccessDataSource` protocol).

    A sample holds `images_by_cam[cam]` float32 [H, W, 3] (resized, ImageNet-normalised), `image_valid_by_cam[cam]`
    bool, the Contract-1 modalities named in `modalities` (`rgb` = `rgb_camera`; modalities an episode does not
    have are zeros with valid False), `valid`, `timestamp`, and `episode`/`frame` indices.
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        cameras: Sequence[str],
        modalities: Mapping[str, ModalityConfig],
        rgb_camera: str = "",
    ):
        if not episodes:
            raise ValueError("EpisodeFrameSource: no episodes")
        if "rgb" not in modalities:
            raise ValueError(
                f"EpisodeFrameSource: the model has no rgb modality (modalities: {sorted(modalities)})"
            )
        self.episodes = list(episodes)
        self.cameras = tuple(cameras)
        self.rgb_camera = rgb_camera or self.cameras[0]
        if self.rgb_camera not in self.cameras:
            raise ValueError(f"rgb_camera {self.rgb_camera!r} is not one of the cameras {self.cameras}")
        self.modalities = {k: tuple(v.shape) for k, v in modalities.items()}
        contract.check_modality_shapes(self.modalities)
        self.image_shape = self.modalities["rgb"]
        self.offsets = np.cumsum([0] + [len(e) for e in self.episodes])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Global frame index -> (episode index, frame index within the episode)."""
        if not 0 <= index < len(self):
            raise IndexError(f"frame index {index} out of range [0, {len(self)})")
        e = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return e, int(index - self.offsets[e])

    def _image(self, path: Path | None) -> tuple[np.ndarray, bool]:
        if path is None:
            return np.zeros(self.image_shape, np.float32), False
        try:
            return images.rgb_input(path, self.image_shape).astype(np.float32), True
        except OSError as e:
            raise ValueError(f"{path}: cannot decode image: {e}") from e

    def frame(self, e: int, t: int) -> dict[str, Any]:
        ep = self.episodes[e]
        images, image_valid = {}, {}
        for cam in self.cameras:
            path = ep.image_paths[cam][t] if cam in ep.image_paths else None
            images[cam], ok = self._image(path)
            image_valid[cam] = np.bool_(ok)
        sample: dict[str, Any] = {"images_by_cam": images, "image_valid_by_cam": image_valid}
        valid: dict[str, np.bool_] = {}
        for name, shape in self.modalities.items():
            if name == "rgb":
                sample[name], valid[name] = images[self.rgb_camera], image_valid[self.rgb_camera]
            elif name == "gps":
                sample[name], valid[name] = ego_gps(ep.pose[t], ep.velocity[t], ep.pose[0]), np.bool_(True)
            elif name == "imu":
                sample[name], valid[name] = ego_imu(ep.velocity[t], ep.acceleration[t]), ep.imu_valid[t]
            else:  # lidar / radar / ir are not recorded in episodes
                sample[name], valid[name] = np.zeros(shape, np.float32), np.bool_(False)
        sample["valid"] = valid
        sample["timestamp"] = np.float64(ep.timestamps[t])
        sample["episode"] = np.int32(e)
        sample["frame"] = np.int32(t)
        return sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.frame(*self.locate(int(index)))


class TemporalPairSource:
    """Random-access source of frame pairs (t, t + dt) inside one episode: {**frame_t, "t1": frame_t+dt, "dt"}.

    The anchor frame's keys sit at the top level, so a pair batch is also an ordinary Contract-1 frame batch
    (masked modeling runs on it unchanged).

    dt is in frames, drawn uniformly from [dt_min, min(dt_max, T - 1 - t)] by a generator seeded with
    (seed, index), so a pair never crosses an episode boundary and a repeated epoch (global index >= len) draws
    new offsets. Anchors are the frames with at least dt_min frames after them.
    """

    def __init__(self, frames: EpisodeFrameSource, dt_range: Sequence[int] = (1, 1), seed: int = 0):
        if len(dt_range) != 2:
            raise ValueError(f"dt_range {tuple(dt_range)}: expected [dt_min, dt_max]")
        lo, hi = dt_range
        if not 1 <= lo <= hi:
            raise ValueError(f"dt_range {dt_range}: need 1 <= dt_min <= dt_max")
        self.frames, self.dt_range, self.seed = frames, (int(lo), int(hi)), int(seed)
        per_episode = [(e, t) for e, ep in enumerate(frames.episodes) for t in range(len(ep) - lo)]
        if not per_episode:
            raise ValueError(f"no episode is longer than dt_min={lo} frames")
        self.anchors = np.array(per_episode, np.int64)  # [N, 2] (episode, frame)

    def __len__(self) -> int:
        return len(self.anchors)

    def pair(self, anchor: int, draw_index: int) -> dict[str, Any]:
        """The pair at anchor `anchor` with dt drawn from the stream keyed by `draw_index` (any int >= 0)."""
        e, t = (int(v) for v in self.anchors[anchor])
        lo, hi = self.dt_range
        hi = min(hi, len(self.frames.episodes[e]) - 1 - t)
        dt = lo if hi == lo else int(np.random.default_rng((self.seed, int(draw_index))).integers(lo, hi + 1))
        return {**self.frames.frame(e, t), "t1": self.frames.frame(e, t + dt), "dt": np.int32(dt)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        return self.pair(index % len(self), index)


def build_dataset(
    source: EpisodeFrameSource | TemporalPairSource,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
) -> grain.MapDataset:
    """Shuffled (per-epoch reshuffle), repeated, batched MapDataset over this process's shard of a source.

    Shards are strided slices of the source's indices; batches drop the remainder.
    """
    ds = grain.MapDataset.range(len(source))[shard_index::shard_count]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    if isinstance(source, TemporalPairSource):
        ds = ds.map_with_index(lambda i, a: source.pair(int(a), i))
    else:
        ds = ds.map(lambda i: source[int(i)])
    return ds.batch(batch_size, drop_remainder=True)


def to_iter(
    ds: grain.MapDataset, num_workers: int = 0, prefetch: int = 2, num_threads: int = 2
) -> grain.IterDataset:
    """An iterator dataset; with workers, batches are built in `num_workers` spawned processes."""
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=max(1, num_threads), prefetch_buffer_size=max(1, prefetch))
    )
    if num_workers > 0:
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=max(1, prefetch)),
            worker_init_fn=processes.worker_init,  # workers end with their parent
        )
    return it


def ensure_episodes(data_cfg: DataConfig, model_cfg: ModelConfig, seed: int = 0) -> Path:
    """`data_cfg.root`, recording a demo set there first when it is missing and `record_if_missing` allows it."""
    root = Path(data_cfg.root)
    if root.exists():
        return root
    if not data_cfg.record_if_missing:
        raise FileNotFoundError(
            f"episode root {root} does not exist; record one with `python -m src.data.episodes record --out {root}` "
            "or set data.record_if_missing = true"
        )
    height, width = (
        tuple(model_cfg.modalities["rgb"].shape[:2]) if "rgb" in model_cfg.modalities else (64, 64)
    )
    record_episodes(
        root,
        RecordSpec(
            episodes=data_cfg.record_episodes,
            frames=data_cfg.record_frames,
            size=(height, width),
            cameras=data_cfg.episode_cameras,
            drop_prob=data_cfg.record_drop_prob,
            seed=seed,
        ),
    )
    return root


def build_iterator(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    *,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
) -> grain.DatasetIterator:
    """The pretrainer's episode batches: temporal pairs (dt in `data.episode_dt`) over every episode in
    `data.root`, images at `model.modalities.rgb.shape`. The iterator has get_state()/set_state()."""
    eps, skipped = load_episodes(data_cfg.root, data_cfg.on_error)
    if skipped:
        print(f"episodes: skipped {len(skipped)} problem(s) in {data_cfg.root} (data.on_error = 'skip')")
    frames = EpisodeFrameSource(
        eps, data_cfg.episode_cameras, model_cfg.modalities, data_cfg.episode_rgb_camera
    )
    pairs = TemporalPairSource(frames, data_cfg.episode_dt, seed=seed)
    shard = len(range(shard_index, len(pairs), shard_count))
    if shard < batch_size:
        raise ValueError(
            f"episodes in {data_cfg.root}: shard {shard_index}/{shard_count} has {shard} temporal "
            f"pairs, fewer than batch_size={batch_size}"
        )
    ds = build_dataset(
        pairs,
        batch_size,
        seed=seed,
        shuffle=data_cfg.shuffle,
        shard_index=shard_index,
        shard_count=shard_count,
    )
    return iter(to_iter(ds, data_cfg.num_workers, data_cfg.prefetch))


# --------------------------------------------------------------------------------------------- writing


def write_episode(
    out_dir: str | Path,
    header: Mapping[str, Any],
    images: Mapping[str, np.ndarray],
    keep: Mapping[str, np.ndarray],
    ego: Mapping[str, np.ndarray],
    timestamps: np.ndarray,
    action: np.ndarray,
) -> Path:
    """Write one episode: `out_dir/episode.json` and `out_dir/<cam>/<t>.png` for every kept frame.

    header: episode_id, source, cameras (+ optional camera_yaw_deg, image_size, dt, track, driver);
    images[cam] uint8 [T, H, W, 3]; keep[cam] bool [T] (False = dropped, no PNG written); ego pose/velocity
    [T, 3] and optional acceleration [T, 3]; timestamps [T]; action [T, 2]. The result is checked against the
    schema before it is returned.
    """
    out_dir = Path(out_dir)
    frames = []
    for t in range(len(timestamps)):
        entry: dict[str, Any] = {}
        for cam in header["cameras"]:
            if keep[cam][t]:
                rel = f"{cam}/{t:05d}.png"
                (out_dir / cam).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.asarray(images[cam][t], np.uint8)).save(out_dir / rel, compress_level=1)
                entry[cam] = {"image_path": rel}
        frames.append(
            {
                "timestamp": float(timestamps[t]),
                "images": entry,
                "ego": {k: [float(x) for x in np.asarray(v[t])] for k, v in ego.items()},
                "action": [float(x) for x in np.asarray(action[t])],
            }
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / EPISODE_FILE
    path.write_text(json.dumps({**header, "frames": frames}))
    _, problems = check_episode(path, out_dir)
    if problems:
        raise EpisodeError(problems)
    return path


# --------------------------------------------------------------------------------------------- recording


CAMERA_YAW_DEG: dict[str, float] = {"front": 0.0, "front_left": 30.0, "front_right": -30.0}


@dataclasses.dataclass(frozen=True)
class RecordSpec:
    """What `record_episodes` drives and writes.

    Cameras are named `front`, `front_left`, `front_right` (yaw 0, +30, -30 degrees, left positive) unless
    `yaw_deg` names others. The driver is pure pursuit at a per-episode target speed drawn from `speed_range`,
    plus Gaussian action noise (`noise` = std of [motor, steering]); episodes start at random centreline
    points. A frame is taken every `frame_every` control steps; each camera frame is dropped with `drop_prob`.
    With `checkpoint` (a jax_racecar PPO run directory) the driver is that run's deterministic policy (latest
    checkpoint) plus the same noise, in an env with the run's settings (lidar, time limit, ...); `track` must
    then be the run's track.
    """

    episodes: int = 8
    frames: int = 64
    size: tuple[int, int] = (64, 64)
    cameras: tuple[str, ...] = DEFAULT_CAMERAS
    yaw_deg: tuple[tuple[str, float], ...] = ()
    drop_prob: float = 0.1
    seed: int = 0
    track: str = "default"
    frame_every: int = 2
    speed_range: tuple[float, float] = (2.0, 4.0)
    noise: tuple[float, float] = (0.05, 0.15)
    checkpoint: str = ""

    def camera_yaws(self) -> dict[str, float]:
        table = {**CAMERA_YAW_DEG, **dict(self.yaw_deg)}
        unknown = [c for c in self.cameras if c not in table]
        if unknown:
            raise ValueError(f"cameras {unknown} have no yaw; known: {sorted(table)} (give yaw_deg)")
        return {c: table[c] for c in self.cameras}


def _rollout(key: jax.Array, params: Any, spec: RecordSpec, policy: Any = None) -> dict[str, jax.Array]:
    """One episode in the JAX simulator, time-major: images [F, V, H, W, 3] uint8 and the ego record."""
    from src.envs import controllers
    from src.envs.racecar import env as racecar
    from src.envs.racecar import sensors

    yaws = jnp.deg2rad(jnp.array(list(spec.camera_yaws().values()), jnp.float32))
    arm = params.camera_offset - params.lr  # centre of gravity -> camera, along the heading

    def view(state: Any, yaw: jax.Array) -> jax.Array:
        # The same optical centre turned by `yaw`: rotate the state's heading and move its centre of gravity so
        # that the camera (which sits `arm` ahead of it along the heading) stays where it was.
        turned = state.yaw + yaw
        dx = arm * (jnp.cos(state.yaw) - jnp.cos(turned))
        dy = arm * (jnp.sin(state.yaw) - jnp.sin(turned))
        return sensors.camera(params, state.replace(x=state.x + dx, y=state.y + dy, yaw=turned))

    k_reset, k_speed, k_run = jax.random.split(key, 3)
    obs, state = racecar.reset(k_reset, params)
    target = jax.random.uniform(k_speed, (), minval=spec.speed_range[0], maxval=spec.speed_range[1])
    noise = jnp.asarray(spec.noise, jnp.float32)

    def control(obs: dict, k: jax.Array) -> jax.Array:
        if policy is not None:
            a = policy(obs)
        else:
            pose = obs["pose"][jnp.array([0, 1, 5])]
            a = controllers.pure_pursuit(pose, obs["velocity"][0], params.centreline, target_speed=target)
        return jnp.clip(a + noise * jax.random.normal(k, (2,)), -1.0, 1.0)

    def frame(carry: tuple, k: jax.Array) -> tuple[tuple, dict[str, jax.Array]]:
        obs, state, done = carry
        keys = jax.random.split(k, 2 * spec.frame_every)
        record = {
            "images": jax.vmap(view, in_axes=(None, 0))(state, yaws),
            "pose": obs["pose"][jnp.array([0, 1, 5])],
            "velocity": obs["velocity"][jnp.array([0, 1, 5])],
            "acceleration": obs["imu"][3:],  # the contract IMU's specific force
            "time": state.time,
            "done": done,
        }
        for i in range(spec.frame_every):
            action = control(obs, keys[2 * i])
            if i == 0:
                record["action"] = action
            obs, state, _, terminated, truncated, _ = racecar.step(keys[2 * i + 1], state, action, params)
            done = done | terminated | truncated
        return (obs, state, done), record

    _, rec = jax.lax.scan(frame, (obs, state, jnp.zeros((), bool)), jax.random.split(k_run, spec.frames))
    return rec


def recording_env(spec: RecordSpec) -> tuple[Any, Any]:
    """(env params, policy or None) the recorder drives: with `spec.checkpoint`, the run's restored policy and
    its env settings, so the policy sees the observations it was trained on."""
    from src.envs.racecar.params import make_params

    # no camera: rendered per camera yaw in `_rollout`; 8 rays: the recorder keeps no scan
    settings: dict[str, Any] = {"camera": False, "lidar_rays": 8}
    policy = None
    if spec.checkpoint:
        from src.training import rl_agent

        policy, cfg = rl_agent.load_policy(spec.checkpoint)
        settings = rl_agent.env_settings(cfg)
        if (cfg.env.track or "default") != spec.track:
            raise ValueError(
                f"{spec.checkpoint}: the run drove track {cfg.env.track or 'default'!r}, not {spec.track!r}"
            )
    params = make_params(
        spec.track,
        **{**settings, "reset_mode": "random", "pose_noise": 0.0},
        camera_height=spec.size[0],
        camera_width=spec.size[1],
    )
    return params, policy


def simulate(spec: RecordSpec) -> dict[str, np.ndarray]:
    """All episodes at once (vmapped and jitted): images [N, F, V, H, W, 3] and the ego record [N, F, ...]."""
    params, policy = recording_env(spec)
    keys = jax.random.split(jax.random.key(spec.seed), spec.episodes)
    run = jax.jit(jax.vmap(lambda k: _rollout(k, params, spec, policy)))
    return jax.tree.map(np.asarray, run(keys))


def record_episodes(out: str | Path, spec: RecordSpec) -> list[Path]:
    """Simulate `spec.episodes` episodes and write them under `out/ep_XXX/` (episode.json + PNGs).

    A new `out` is written in a temporary sibling directory and renamed into place when complete, so an
    interrupted recording never leaves a half-written set behind. An episode ends early at the frame after
    the car finished or ran out of time (it is not continued into a reset).
    """
    if not 0.0 <= spec.drop_prob < 1.0:
        raise ValueError(f"drop_prob={spec.drop_prob} must be in [0, 1)")
    out = Path(out)
    rec = simulate(spec)
    yaws = spec.camera_yaws()
    rng = np.random.default_rng(spec.seed)
    keep_all = rng.random((spec.episodes, len(spec.cameras), spec.frames)) >= spec.drop_prob
    fresh = not out.exists()
    target = out.with_name(f".{out.name}.partial") if fresh else out
    if fresh and target.exists():
        shutil.rmtree(target)  # left over from an interrupted recording
    paths = []
    for e in range(spec.episodes):
        ended = np.flatnonzero(rec["done"][e])
        length = int(ended[0]) if len(ended) else spec.frames  # frame `ended[0]` is already after the end
        name = f"ep_{e:03d}"
        if (target / name).exists() and not fresh:
            raise FileExistsError(f"{target / name} exists; record into a new directory")
        header = {
            "episode_id": f"{spec.track}_s{spec.seed}_{name}",
            "source": "jax_racecar",
            "cameras": list(spec.cameras),
            "camera_yaw_deg": yaws,
            "image_size": list(spec.size),
            "track": spec.track,
            "driver": f"ppo:{Path(spec.checkpoint).name}+noise" if spec.checkpoint else "pure_pursuit+noise",
        }
        paths.append(
            write_episode(
                target / name,
                header,
                {c: rec["images"][e, :length, v] for v, c in enumerate(spec.cameras)},
                {c: keep_all[e, v, :length] for v, c in enumerate(spec.cameras)},
                {k: rec[k][e, :length] for k in ("pose", "velocity", "acceleration")},
                rec["time"][e, :length],
                rec["action"][e, :length],
            )
        )
    if fresh:
        target.rename(out)
        paths = [out / p.relative_to(target) for p in paths]
    return paths


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


def _record_main(args: argparse.Namespace) -> int:
    spec = RecordSpec(
        episodes=args.episodes,
        frames=args.frames,
        size=(args.size, args.size),
        cameras=tuple(c.strip() for c in args.cameras.split(",") if c.strip()),
        drop_prob=args.drop_prob,
        seed=args.seed,
        track=args.track,
        frame_every=args.frame_every,
        checkpoint=args.checkpoint,
    )
    start = time.perf_counter()
    paths = record_episodes(args.out, spec)
    report = validate_dir(args.out)
    print(
        f"recorded {len(paths)} episode(s), {report.frames} frame(s) in {time.perf_counter() - start:.1f} s "
        f"under {args.out}; images per camera: {report.frames_by_camera}"
    )
    for p in report.problems:
        print(f"PROBLEM {p}")
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.data.episodes", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check every episode under DIR against the schema")
    v.add_argument("dir")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    r = sub.add_parser("record", help="drive the JAX simulator and write multi-camera episodes")
    r.add_argument("--episodes", type=int, required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--frames", type=int, default=RecordSpec.frames)
    r.add_argument("--seed", type=int, default=RecordSpec.seed)
    r.add_argument("--size", type=int, default=64, help="square image side in pixels")
    r.add_argument(
        "--cameras", default=",".join(DEFAULT_CAMERAS), help=f"comma-separated, of {list(CAMERA_YAW_DEG)}"
    )
    r.add_argument("--drop-prob", type=float, default=RecordSpec.drop_prob)
    r.add_argument("--track", default=RecordSpec.track)
    r.add_argument("--frame-every", type=int, default=RecordSpec.frame_every, help="control steps per frame")
    r.add_argument(
        "--checkpoint", default="", help="drive with this jax_racecar PPO run's policy (runs/<name>)"
    )
    args = parser.parse_args(argv)
    if args.command == "validate":
        return _validate_main(args)
    return _record_main(args)


if __name__ == "__main__":
    sys.exit(main())
