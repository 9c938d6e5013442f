"""The patch store of a terrain run (`runs/<run.name>/patches`): `extract` builds it from every trajectory under
source.root and both specs (writing a demo set first when source.root is missing); `load` reads it back."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from src import contract
from src.config import BevConfig
from src.data.cmht import index
from src.infra.run_dir import run_path
from src.terrain import dataset, sources, spec
from src.terrain.config import TerrainConfig, spec_path
from src.terrain.demo import write_demo_set
from src.terrain.extract import extract_patches


def trajectory_folders(cfg: TerrainConfig) -> list[Path]:
    root = Path(cfg.source.root)
    if cfg.source.kind in ("topdown", "sim"):
        return sorted(p.parent for p in root.rglob("poses.csv"))
    return [s.path for s in index.find_sequences(root)]


def extract(cfg: TerrainConfig) -> dataset.PatchSet:
    """Scan every trajectory under source.root, assign both specs' categories, write the patch store."""
    root = Path(cfg.source.root)
    if not root.exists():
        if not cfg.source.synthesize_if_missing:
            raise FileNotFoundError(f"source.root={root} does not exist (or set source.synthesize_if_missing)")
        root.mkdir(parents=True)
        write_demo_set(cfg, root)
    train_spec = spec.load_spec(spec_path(cfg, "train"), root)
    holdout_spec = spec.load_spec(spec_path(cfg, "holdout"), root)
    folders = trajectory_folders(cfg)
    if not folders:
        raise FileNotFoundError(f"source.root={root}: no {cfg.source.kind} trajectories found")
    half, cells = cfg.source.bev_half_m, cfg.source.bev_cells
    grid = contract.bev_grid(BevConfig(x_range=(-half, half), y_range=(-half, half)), (cells, cells, 4))
    extractions, times = [], []
    for folder in folders:
        if cfg.source.kind in ("topdown", "sim"):
            traj, geom = sources.read_topdown_episode(folder)
        else:
            traj = sources.cmht_trajectory(
                index.read_sequence(folder), grid, cfg.source.channels, cfg.source.fill_cells
            )
            geom = sources.cmht_geometry(grid)
        extractions.append(extract_patches(traj, geom, cfg.scan))
        times.append(traj.times)
    names = [f.relative_to(root).as_posix() if f != root else "." for f in folders]
    ps = dataset.from_extractions(extractions, names, times)
    category = spec.assign_categories(train_spec, folders, ps.source, ps.time, str(spec_path(cfg, "train")))
    held = spec.assign_categories(holdout_spec, folders, ps.source, ps.time, str(spec_path(cfg, "holdout")))
    both = int(((category >= 0) & (held >= 0)).sum())
    if both:
        raise spec.SpecError(f"{spec_path(cfg, 'holdout')}: {both} patches lie in both the train and held-out ranges")
    ps = ps.with_categories(category, train_spec.names, held, holdout_spec.names)
    dataset.save(ps, run_path(cfg) / "patches", {"scan": dataclasses.asdict(cfg.scan), "kind": cfg.source.kind})
    return ps


def load(cfg: TerrainConfig) -> dataset.PatchSet:
    """The patch store `extract` wrote for this run."""
    return dataset.load(run_path(cfg) / "patches")
