"""The demo set `extract` writes when source.root does not exist: trajectories of the configured kind and both
specs (painted stripe drives for `topdown`, synthetic CMHT sequences for `cmht`, the racing env for `sim`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from src.data.synthetic import write_cmht_sequence
from src.terrain import sim, sources
from src.terrain.config import TerrainConfig, spec_path
from src.terrain.extract import patch_side_m
from src.terrain.synthetic import TEXTURES, stripe_drive


def write_demo_set(cfg: TerrainConfig, root: Path) -> None:
    """A demo set at `root`: painted stripe drives (topdown) or a synthetic CMHT sequence, with both specs."""
    src = cfg.source
    print(f"source.root={root} does not exist: writing a synthetic {src.kind} demo set there", file=sys.stderr)
    if src.kind == "sim":
        summary = sim.record(cfg.sim, root, patch_side_m(cfg.scan, cfg.sim.ground_px_per_m))
        for ep in summary["episodes"]:
            print(f"  {ep['episode']} ({ep['split']}): {ep['frames_per_surface']}", file=sys.stderr)
        return
    if src.kind == "topdown":
        stripe_m, speed, dt = 4.0, 1.0, 0.1
        for k in range(2):
            traj, geom = stripe_drive(src.synthetic_frames, speed=speed, dt=dt, stripe_m=stripe_m, seed=k)
            sources.write_topdown_episode(root / f"ep{k}", traj, geom)
        duration = src.synthetic_frames * dt
        stripes = int(duration * speed // stripe_m)

        def ranges(ep: str) -> dict[str, list[dict[str, Any]]]:
            # each stripe's interior (0.5 m in from its edges, so no patch straddles two textures)
            out: dict[str, list[dict[str, Any]]] = {name: [] for name in TEXTURES}
            for s in range(stripes):
                lo, hi = (s * stripe_m + 0.5) / speed, ((s + 1) * stripe_m - 0.5) / speed
                out[TEXTURES[s % len(TEXTURES)]].append({"path": ep, "start": lo, "end": hi})
            return {k: v for k, v in out.items() if v}

        orderings = [
            {"first": "smooth", "second": "ridged", "label": -1},
            {"first": "ridged", "second": "checker", "label": -1},
        ]
        specs = {"train": ranges("ep0"), "holdout": ranges("ep1")}
    else:
        write_cmht_sequence(root / "seq0", frames=src.synthetic_frames, seed=0, points=30_000)
        write_cmht_sequence(root / "seq1", frames=src.synthetic_frames, seed=1, points=30_000)
        half = src.synthetic_frames * 0.1 / 2
        # the synthetic road is one surface: these categories are time ranges only (exercises the pipeline)
        orderings = [{"first": "early", "second": "late", "label": -1}]
        specs = {
            which: {
                "early": [{"path": seq, "start": 0.0, "end": half}],
                "late": [{"path": seq, "start": half, "end": 2 * half}],
            }
            for which, seq in (("train", "seq0"), ("holdout", "seq1"))
        }
    for which, cats in specs.items():
        data = {"categories": cats, "orderings": orderings}
        spec_path(cfg, which).write_text(json.dumps(data, indent=2))
