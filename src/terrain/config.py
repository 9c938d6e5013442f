"""The typed config of a terrain run (`configs/terrain_*.toml`): its sections and where its specs are."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from src.config import MeshConfig, RunConfig
from src.terrain.extract import ScanConfig
from src.terrain.sim import SimRecordConfig


@dataclasses.dataclass(frozen=True)
class TerrainSourceConfig:
    """Where the trajectories are: `topdown` episode folders (any folder holding poses.csv) or CMHT sequences.

    CMHT: each LiDAR sweep is a BEV image of `bev_cells` square cells over +-`bev_half_m` metres, with the
    `channels` of `lidar_bev`. `synthesize_if_missing` writes a demo set (and its specs) at `root`.
    """

    kind: Literal["topdown", "cmht", "sim"] = "topdown"
    root: str = "data/terrain_demo"
    synthesize_if_missing: bool = True
    synthetic_frames: int = 300
    bev_half_m: float = 12.8
    bev_cells: int = 256
    channels: tuple[str, ...] = ("intensity", "height")
    fill_cells: int = 1  # CMHT: empty cells this close to a return are filled and count as seen


@dataclasses.dataclass(frozen=True)
class TerrainSpecConfig:
    train: str = "train.json"  # relative to source.root unless absolute
    holdout: str = "holdout.json"


@dataclasses.dataclass(frozen=True)
class RepresentConfig:
    objective: Literal["triplet", "vicreg"] = "triplet"
    encoder: Literal["conv", "vit"] = "conv"  # the small conv net, or the pretrainer's ModalityViT
    embed_dim: int = 32
    widths: tuple[int, ...] = (16, 32, 64)  # conv
    vit_patch: int = 4  # vit: token patch size in pixels (must divide scan.patch_px)
    vit_dim: int = 32
    vit_depth: int = 1
    vit_heads: int = 2
    batch: int = 32
    steps: int = 200
    lr: float = 1e-3
    margin: float = 1.0
    vicreg_sim: float = 25.0
    vicreg_std: float = 25.0
    vicreg_cov: float = 1.0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10


@dataclasses.dataclass(frozen=True)
class CostConfig:
    hidden: int = 32
    scale: float = 1.0
    margin: float = 1.0
    batch: int = 128
    steps: int = 300
    lr: float = 3e-3
    checkpoint_every: int = 100
    log_every: int = 50


@dataclasses.dataclass(frozen=True)
class TerrainEvalConfig:
    pairs: int = 2000  # sampled held-out patch pairs per ordered category pair


@dataclasses.dataclass(frozen=True)
class TerrainConfig:
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(name="terrain_demo"))
    source: TerrainSourceConfig = dataclasses.field(default_factory=TerrainSourceConfig)
    scan: ScanConfig = dataclasses.field(default_factory=ScanConfig)
    spec: TerrainSpecConfig = dataclasses.field(default_factory=TerrainSpecConfig)
    represent: RepresentConfig = dataclasses.field(default_factory=RepresentConfig)
    cost: CostConfig = dataclasses.field(default_factory=CostConfig)
    eval: TerrainEvalConfig = dataclasses.field(default_factory=TerrainEvalConfig)
    sim: SimRecordConfig = dataclasses.field(default_factory=SimRecordConfig)
    # Data parallel over the devices of this process (batches split, parameters replicated); one process only.
    mesh: MeshConfig = dataclasses.field(default_factory=lambda: MeshConfig(distributed="off"))


def spec_path(cfg: TerrainConfig, which: str) -> Path:
    """The `train` or `holdout` spec file: as given when absolute, else under source.root."""
    path = Path(getattr(cfg.spec, which))
    return path if path.is_absolute() else Path(cfg.source.root) / path
