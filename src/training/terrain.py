"""Terrain preference learning: patches along trajectories -> representation -> pairwise cost -> evaluation.

    python -m src.training.terrain extract|represent|cost|evaluate --config configs/terrain_cmht.toml [--set k=v]

Writes under runs/<run.name>/:
    extract    patches/patches.npz + patches/index.json (uint8 patches, multi-view index, train/held-out categories,
               per-trajectory frames, patches, odometry gaps and the scans they cut short)
    represent  represent/ckpt (Orbax: encoder, optimizer; resumes), represent/metrics.jsonl
    cost       cost/ckpt (the cost head on the frozen encoder), cost/metrics.jsonl
    evaluate   evaluation.json (pairwise ordering accuracy per ordered held-out category pair, nearest-neighbour
               category accuracy of the embedding), pca.png (held-out embeddings coloured by category); for `sim`
               data also cost_map.png (the learned cost over the held-out track next to its true surfaces)

Source kinds: `topdown` episode folders, `cmht` sequences, or `sim`: top-down episodes that `extract` records
from the JAX racing env with its surfaces (`src.terrain.sim`, settings in [sim]) when source.root does not exist.
The stages live in `src.terrain`: `store` (extract), `training` (represent, cost), `evaluation` (evaluate).
"""

from __future__ import annotations

import argparse
import json

from src import config
from src.infra.run_dir import run_path
from src.terrain import spec, store
from src.terrain.config import TerrainConfig, spec_path
from src.terrain.evaluation import evaluate
from src.terrain.training import embed, represent, train_cost, trained_cost_head, trained_encoder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("extract", "represent", "cost", "evaluate"))
    config.add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config.load_from_args(TerrainConfig, args)
    out = run_path(cfg)
    config.save(cfg, out / f"config_{args.command}.toml")
    if args.command == "extract":
        ps = store.extract(cfg)
        start, count = ps.locations()
        gaps = sum(s["gaps"] for s in ps.sources)
        stopped = sum(s["stopped_by_gap"] for s in ps.sources)
        print(
            f"{len(ps)} patches at {len(start)} locations ({count.mean():.1f} views each) from {len(ps.sources)} "
            f"trajectories; {gaps} odometry gaps cut {stopped} scans short -> {out / 'patches'}"
        )
    elif args.command == "represent":
        _, losses = represent(cfg, store.load(cfg))
        print(f"{cfg.represent.objective}: loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "already done")
    elif args.command == "cost":
        ps = store.load(cfg)
        z = embed(trained_encoder(cfg, ps.patches.shape[-1], out), ps.patches)
        _, losses = train_cost(cfg, ps, z, spec.load_spec(spec_path(cfg, "train"), cfg.source.root))
        print(f"cost: loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "already done")
    else:
        ps = store.load(cfg)
        encoder = trained_encoder(cfg, ps.patches.shape[-1], out)
        print(json.dumps(evaluate(cfg, ps, encoder, trained_cost_head(cfg, out)), indent=2))


if __name__ == "__main__":
    main()
