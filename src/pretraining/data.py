"""Where pretraining batches come from: the CMHT pipeline (synthesised when missing), converted ROS2 bags or
recorded episodes, one Grain iterator per process on its shard of the data; shared files are written by process 0
while the others wait."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax

from src.config import ConfigError, PretrainConfig
from src.data import synthetic
from src.data.cmht import dataset
from src.data.episodes import sources
from src.data.rosbag import convert as rosbag_convert
from src.envs import recorder

DataFn = Callable[..., Iterator[dict[str, Any]]]
"""A batch-iterator factory with `build_data`'s signature (tests and the transfer experiment bring their own)."""


def _written_by_process_zero(name: str, write: Callable[[], Any]) -> None:
    """Run `write` (creates shared files: synthetic data, converted bags) on process 0 only; the other processes
    wait at a barrier until it is done, so that no file is written twice and nobody reads half a set."""
    if jax.process_index() == 0:
        write()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"raceformer:{name}")


def build_data(cfg: PretrainConfig, *, batch_size: int, shard_index: int, shard_count: int) -> Iterator[dict]:
    """This process's batch iterator (a Grain DatasetIterator with get_state/set_state) for `cfg.data.source`."""
    if cfg.data.source == "episodes":
        _written_by_process_zero(
            "episodes_ready", lambda: recorder.ensure_episodes(cfg.data, cfg.model, seed=cfg.run.seed)
        )
        return sources.build_iterator(cfg.data, cfg.model, batch_size=batch_size, seed=cfg.run.seed,
                                       shard_index=shard_index, shard_count=shard_count)
    if cfg.data.source == "cmht":
        _written_by_process_zero("cmht_ready", lambda: synthetic.ensure_dataset(cfg.data))
        source = dataset.build_cmht_source(cfg.data, cfg.model)
    elif cfg.data.source == "rosbag":
        _written_by_process_zero(
            "rosbag_converted", lambda: rosbag_convert.convert_bags(cfg.data.root, on_error=cfg.data.on_error)
        )
        converted = Path(cfg.data.root) / rosbag_convert.CONVERTED
        source = dataset.build_cmht_source(dataclasses.replace(cfg.data, root=str(converted)), cfg.model)
    else:
        raise ConfigError(
            f"data.source={cfg.data.source!r}: the pretrainer reads 'cmht', 'rosbag' and 'episodes' sources"
        )
    return dataset.build_pipeline(
        source,
        batch_size=batch_size,
        seed=cfg.run.seed,
        num_workers=cfg.data.num_workers,
        prefetch=cfg.data.prefetch,
        shuffle=cfg.data.shuffle,
        shard_index=shard_index,
        shard_count=shard_count,
    )
