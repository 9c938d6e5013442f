"""The learned terrain cost as a function of the car's pose, for the racing env's reward (`env.terrain_cost_run`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from src import config
from src.envs import surfaces
from src.objectives.contrastive import l2_normalize
from src.terrain.config import TerrainConfig
from src.terrain.training import trained_cost_head, trained_encoder


def ground_cost_fn(run: str | Path, terrain: Any) -> Callable[[jax.Array], jax.Array]:
    """cost(pose) of a trained sim terrain run (`run`: its run dir): the car's own top-down ground image on
    `terrain` (a `surfaces.TerrainParams`), rendered at the run's scale, one patch (`scan.patch_px`) centred on
    the rear axle at pose (x, y, yaw), through the frozen encoder and cost head. jit/vmap-able."""
    run = Path(run)
    cfg = config.load(TerrainConfig, run / "config_cost.toml")
    if cfg.source.kind != "sim" or cfg.scan.patch_m > 0:
        raise config.ConfigError(f"{run}: a terrain cost for the racing env needs a sim run with scan.patch_m = 0")
    p, ppm = cfg.scan.patch_px, cfg.sim.ground_px_per_m
    ground = terrain.replace(
        ground_size=(p, p), ground_px_per_m=ppm, ground_behind_m=(p - 1) / 2 / ppm, ground_blur=cfg.sim.ground_blur
    )
    encoder = trained_encoder(cfg, 3, run)
    head = trained_cost_head(cfg, run)
    graphdef, state = nnx.split((encoder, head))

    def cost(pose: jax.Array) -> jax.Array:
        enc, hd = nnx.merge(graphdef, state)
        return hd(l2_normalize(enc(surfaces.ground_image(ground, pose)[None])))[0]

    return cost
