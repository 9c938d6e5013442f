"""Driving episodes as Grain sources: loading validated episodes, per-frame and temporal-pair sources, batches.

Every camera of a frame is optional: an absent `images[cam]` is a dropped frame, carried as
`image_valid_by_cam[cam] = False` with zeros in the image, so the multi-view objectives can drop that view instead
of learning from a black frame. Every sample is also a Contract-1 sample (one camera -> `rgb`, ego -> `gps`/`imu`),
so the same Raceformer runs on it. The shuffle/repeat tail and the iterator are the shared `src.data.loader`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np

from src import contract
from src.config import DataConfig, ModalityConfig, ModelConfig
from src.data import loader
from src.data.episodes.schema import EpisodeError, Problem, check_episode, find_episode_files, resolve_inside
from src.data.images import rgb_input

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
            return rgb_input(path, self.image_shape).astype(np.float32), True
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
                gps = contract.planar_gps(ep.pose[t, :2], ep.pose[0, :2], ep.pose[t, 2], ep.velocity[t])
                sample[name], valid[name] = gps, np.bool_(True)
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

    Shards are strided slices of the source's indices (`loader.epochs`); batches drop the remainder.
    """
    ds = loader.epochs(
        grain.MapDataset.range(len(source)),
        seed=seed,
        shuffle=shuffle,
        shard_index=shard_index,
        shard_count=shard_count,
        num_epochs=num_epochs,
    )
    if isinstance(source, TemporalPairSource):
        ds = ds.map_with_index(lambda i, a: source.pair(int(a), i))
    else:
        ds = ds.map(lambda i: source[int(i)])
    return ds.batch(batch_size, drop_remainder=True)


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
    loader.check_shard(
        len(pairs), batch_size, shard_index, shard_count, "temporal pairs", f"episodes in {data_cfg.root}"
    )
    ds = build_dataset(
        pairs,
        batch_size,
        seed=seed,
        shuffle=data_cfg.shuffle,
        shard_index=shard_index,
        shard_count=shard_count,
    )
    return iter(loader.to_iter(ds, data_cfg.num_workers, data_cfg.prefetch))
