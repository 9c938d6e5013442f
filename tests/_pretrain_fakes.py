"""A tiny pretraining setup shared by the pretrainer, sharding and checkpoint tests (and their subprocesses).

`TinySource` is a random-access source of Contract-1 samples (32x32 LiDAR BEV and camera images with smooth
per-sample patterns, a GPS vector); every third sample has no camera (valid False, zeros), so the masks are
exercised. `tiny_config` is the matching small model; all tests use the same shapes so that the jitted step
compiles once per process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import numpy as np

from src import config
from src.config import ModalityConfig, PretrainConfig

SIZE = 32


class TinySource:
    def __init__(self, length: int = 64, nan_at: int | None = None):
        self.length = length
        self.nan_at = nan_at

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = np.random.default_rng(int(i))
        yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
        freq, phase, angle = r.uniform(1.0, 3.0), r.uniform(0, 2 * np.pi), r.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        lidar = np.stack([wave, (wave > 0).astype(np.float64)], -1).astype(np.float32)
        has_rgb = i % 3 != 0
        rgb = (wave[..., None] * np.array([1.0, 0.5, -0.5])).astype(np.float32) * has_rgb
        if self.nan_at is not None and i == self.nan_at:
            lidar = np.full_like(lidar, np.nan)
        return {
            "lidar": lidar,
            "rgb": rgb,
            "gps": np.array([freq, phase, np.cos(angle), np.sin(angle)], np.float32),
            "valid": {"lidar": True, "rgb": bool(has_rgb), "gps": True},
            "timestamp": float(i),
        }


SHAPES = {"lidar": (SIZE, SIZE, 2), "rgb": (SIZE, SIZE, 3), "gps": (4,)}


def tiny_config(run_dir: Path, name: str = "tiny", modalities: tuple[str, ...] = ("lidar", "rgb", "gps"),
                **sections: dict[str, Any]) -> PretrainConfig:
    """The tiny run; the multi-device subprocesses use fewer modalities (a smaller graph compiles faster)."""
    cfg = config.load(PretrainConfig)
    model = {
        "embed_dim": 32, "depth": 1, "fusion_depth": 1, "num_heads": 2, "patch_size": 8, "decoder_dim": 32,
        "decoder_depth": 1, "decoder_heads": 2,
        "modalities": {m: ModalityConfig(SHAPES[m]) for m in modalities},
    }
    training = {"steps": 30, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 3, "log_every": 5,
                "checkpoint_every": 10, "keep_checkpoints": 3}
    cfg = config.replace(
        cfg,
        run={"name": name, "out_dir": str(run_dir), "seed": 0},
        model=model,
        training=training,
        data={"num_workers": 0, "prefetch": 0},
    )
    return config.replace(cfg, **sections) if sections else cfg


def tiny_data_fn(source: TinySource | None = None):
    """A `data_fn` for `pretrain_loop.train`: the per-process shard of `source`, shuffled, repeated, batched."""
    source = source or TinySource()

    def data_fn(cfg: PretrainConfig, *, batch_size: int, shard_index: int, shard_count: int):
        ds = grain.MapDataset.source(source)[shard_index::shard_count]
        ds = ds.shuffle(seed=cfg.run.seed).repeat().batch(batch_size, drop_remainder=True)
        return iter(ds.to_iter_dataset())

    return data_fn


class RecordingIterator(grain.DatasetIterator):
    """Wraps a Grain iterator and records the timestamps of every sample it hands out (checkpointable)."""

    def __init__(self, inner: grain.DatasetIterator, seen: list[float]):
        super().__init__(inner)
        self.inner, self.seen = inner, seen

    def __next__(self) -> dict[str, Any]:
        batch = next(self.inner)
        self.seen.extend(float(t) for t in batch["timestamp"])
        return batch

    def get_state(self) -> dict[str, Any]:
        return self.inner.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.inner.set_state(state)
