"""The two pretraining sources: CMHT-format data, and the positive control recorded in memory from the
simulator's own pure-pursuit driving through the sensor contract; one pretraining run per source, with its probes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from src import config
from src.analysis import probe
from src.config import (
    DataConfig,
    ModelConfig,
    PretrainConfig,
)
from src.data import synthetic
from src.data.cmht import dataset
from src.envs import controllers
from src.envs.racecar import env as racecar
from src.envs.tracks.geometry import Track
from src.pretraining import loop as pretrain_loop
from src.rl import envs as rl_envs
from src.transfer.config import (
    TransferConfig,
    pretrain_config,
    rl_config,
)
from src.transfer.tracks import env_params


def record_sim_frames(cfg: TransferConfig, tracks: list[Track], seed: int) -> dict[str, Any]:
    """Contract samples of the pure-pursuit driver (random target speed, noisy actions, random starts) on
    `tracks`: stacked arrays {modality: [F, ...], "valid": {modality: [F]}}, exactly what the policy sees."""
    rec = cfg.pretrain.sim
    all_params = [env_params(cfg, track, reset_mode="random") for track in tracks]
    obs_fn = rl_envs.contract_obs_fn(rl_config(cfg), all_params[0])  # the scan layout is the same on every track
    frames: list[dict[str, Any]] = []
    for t_index, params in enumerate(all_params):

        def episode(key: jax.Array, params: Any = params) -> Any:
            k_reset, k_speed, k_run = jax.random.split(key, 3)
            obs, state = racecar.reset(k_reset, params)
            target = jax.random.uniform(k_speed, (), minval=rec.speed_range[0], maxval=rec.speed_range[1])

            def control_step(carry: tuple, k: jax.Array) -> tuple[tuple, None]:
                obs, state = carry
                k_noise, k_step = jax.random.split(k)
                a = controllers.pure_pursuit(
                    obs["pose"][jnp.array([0, 1, 5])], obs["velocity"][0], params.centreline, target_speed=target,
                    max_lateral_accel=rec.max_lateral_accel, max_speed=params.max_speed,
                )
                a = jnp.clip(a + jnp.asarray(rec.noise) * jax.random.normal(k_noise, (2,)), -1.0, 1.0)
                obs, state, *_ = racecar.step(k_step, state, a, params)
                return (obs, state), None

            def frame(carry: tuple, k: jax.Array) -> tuple[tuple, Any]:
                sample = obs_fn(carry[0])
                carry, _ = jax.lax.scan(control_step, carry, jax.random.split(k, rec.frame_every))
                return carry, sample

            return jax.lax.scan(frame, (obs, state), jax.random.split(k_run, rec.frames))[1]

        keys = jax.random.split(jax.random.PRNGKey(seed * 1000 + t_index), rec.episodes_per_track)
        out = jax.device_get(jax.jit(jax.vmap(episode))(keys))
        frames.append(jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *frames)


def sim_data_fn(cfg: TransferConfig, tracks: list[Track]) -> Callable[..., Iterator[dict]]:
    """A pretrainer `data_fn` over the recorded simulator frames: a seeded, shuffled, repeated Grain pipeline
    (checkpointable like the CMHT one)."""

    def data_fn(pcfg: PretrainConfig, *, batch_size: int, shard_index: int, shard_count: int) -> Iterator[dict]:
        import grain

        samples = record_sim_frames(cfg, tracks, pcfg.run.seed)
        n = len(samples["valid"][next(iter(samples["valid"]))])
        if n < batch_size:
            raise ValueError(f"pretrain.sim: {n} recorded frames, fewer than training.batch_size={batch_size}")
        items = [jax.tree.map(lambda x, i=i: x[i], samples) for i in range(n)][shard_index::shard_count]
        ds = grain.MapDataset.source(items).shuffle(seed=pcfg.run.seed).repeat().batch(batch_size)
        return iter(ds.to_iter_dataset())

    return data_fn


def check_cmht_source(data: DataConfig, model: ModelConfig) -> None:
    """A CMHT root without usable samples is an error naming the root (before any training starts)."""
    synthetic.ensure_dataset(data)
    source = dataset.build_cmht_source(data, model)
    if len(source) == 0:
        raise ValueError(f"pretrain.cmht.root={data.root}: no usable samples (no LiDAR sweep survived sync)")


def pretrain(cfg: TransferConfig, source: str, tracks: list[Track]) -> Path:
    """Run (or reuse) the pretraining of `source`; returns its exported encoder. Skipped when the export exists
    and the run's stored config equals this one; a different stored config is the pretrainer's error (it
    names the keys and says how to start over)."""

    pcfg = pretrain_config(cfg, source)
    out = Path(pcfg.run.out_dir) / pcfg.run.name
    encoder = out / "encoder"
    if encoder.is_dir() and (out / "config.toml").is_file() and config.load(PretrainConfig, out / "config.toml") == pcfg:
        print(f"[pretrain {source}] reusing {encoder} (same config)", flush=True)
        return encoder
    if source == "cmht":
        check_cmht_source(pcfg.data, pcfg.model)
    result = pretrain_loop.train(pcfg, data_fn=sim_data_fn(cfg, tracks) if source == "sim" else None, progress=False)
    if result.encoder_dir is None:
        raise RuntimeError(f"pretraining {out} exported no encoder (stopped by {result.stopped_by})")
    print(f"[pretrain {source}] {result.step} steps in {result.wall_s:.0f} s -> {result.encoder_dir}", flush=True)
    return Path(result.encoder_dir)


def pretraining_figures(cfg: TransferConfig, source: str, tracks: list[Track]) -> dict[str, Any]:
    """`probe.pretraining_quality` of a source's run: linear probes on held-out labelled CMHT samples (the sim
    source has no object labels, so its encoder is probed on the same CMHT samples) against a random encoder,
    and the masked-patch reconstruction correlation on the source's own held-out samples."""
    pcfg = pretrain_config(cfg, source)
    run = Path(pcfg.run.out_dir) / pcfg.run.name
    cmht_cfg = pretrain_config(cfg, "cmht")
    figures = probe.pretraining_quality(run, cmht_cfg, max_samples=cfg.pretrain.probe_samples, seed=cfg.run.seed)
    if source == "sim":
        figures = {k: v for k, v in figures.items() if not k.startswith("recon_r/")}
        full = probe.restore_pretrained(run, pcfg)
        held_out = record_sim_frames(cfg, tracks, cfg.run.seed + 1)  # another recording than pretraining's
        n = min(cfg.pretrain.probe_samples, len(held_out["valid"]["lidar"]) if "lidar" in held_out["valid"] else 0)
        held_out = jax.tree.map(lambda x: x[:n], held_out)
        if full is not None and n:
            for m, r in probe.reconstruction_correlation(full, held_out, pcfg, cfg.run.seed).items():
                figures[f"recon_r/{m}"] = r
    return {f"{source}/{k}": v for k, v in figures.items()}
