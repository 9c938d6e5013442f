"""Closing the loop (issue 13, item 6): PPO racing on the surfaced JAX env with and without the learned terrain cost.

    python -m src.training.terrain_loop --config configs/rl_racecar.toml --terrain-run runs/terrain_sim \
        --weight 0.05 --seeds 0 1 2 [--set k=v ...]

For every seed, two PPO runs on the same surfaced track (`env.surfaces`, road sections only: asphalt, kerbs and
grass / gravel run-off, so a driver can keep to the asphalt): one whose reward adds -weight * the learned cost of
the patch under the car in its own top-down ground image (`env.terrain_cost_run`, a trained
`src.training.terrain` sim run), one without (weight 0). Each trained policy then drives the deterministic
evaluation episodes; the true surface under the rear axle at every step (read from the map for this report only,
never by the policy or its reward) gives the fraction of time on each surface until the episode ends. Writes
`runs/<run.name>_terrain_loop/results.json` and prints a Markdown table (mean and spread over seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from src import config
from src.config import RLConfig
from src.envs import surfaces
from src.rl import envs as rl_envs
from src.rl import evaluate, trainer
from src.terrain.evaluation import surface_fractions


def run_one(cfg: RLConfig) -> dict[str, Any]:
    env = rl_envs.make_training_env(cfg)
    result = trainer.train(cfg, resume=False, env=env, progress=False)
    rec = env.evaluate(result.learner, result.state, cfg.eval.episodes)
    figures = evaluate.summarize_eval(rec, env.control_dt)
    _, params = rl_envs.racing_env(cfg)
    figures["surface_fraction"] = surface_fractions(rec, params.terrain)
    figures["train_wall_s"] = result.wall_s
    return figures


def _mean_std(values: list[float]) -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    return f"{v.mean():.3f} ± {v.std():.3f} (n={len(v)})" if len(v) else "n/a"


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    rows = ["| run | " + " | ".join(f"time on {n}" for n in surfaces.NAMES) + " | lap time (s) | clean laps |",
            "|---|" + "---|" * (len(surfaces.NAMES) + 2)]
    for name, runs in results.items():
        cells = [_mean_std([r["surface_fraction"][n] for r in runs]) for n in surfaces.NAMES]
        cells += [_mean_std([r.get("lap_time") for r in runs]),
                  _mean_std([r.get("lap_completed_clean") for r in runs])]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    config.add_config_args(parser)
    parser.add_argument("--terrain-run", required=True, help="a trained terrain run dir (source.kind = sim)")
    parser.add_argument("--weight", type=float, default=0.05, help="lambda: the reward adds -lambda * cost")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--surface-seed", type=int, default=2)
    parser.add_argument("--surface-patches", type=int, default=0, help="grass / gravel discs on the asphalt per lap")
    args = parser.parse_args(argv)
    if len(args.seeds) < 1 or args.weight <= 0:
        parser.error("--seeds needs at least one seed and --weight must be > 0")
    base = config.load_from_args(RLConfig, args)
    if base.env.kind != "jax_racecar":
        raise config.ConfigError("the terrain loop runs on env.kind = 'jax_racecar'")
    out = Path(base.run.out_dir) / f"{base.run.name}_terrain_loop_p{args.surface_patches}"
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {"without cost": [], f"with cost (λ = {args.weight:g})": []}
    for seed in args.seeds:
        for label, weight in zip(results, (0.0, args.weight)):
            cfg = config.replace(
                base,
                run={"name": f"{base.run.name}_terrain_p{args.surface_patches}_w{weight:g}_s{seed}", "seed": seed},
                env={
                    "surfaces": True,
                    "surface_seed": args.surface_seed,
                    "surface_offroad": False,
                    "surface_patches": args.surface_patches,
                    "terrain_cost_run": args.terrain_run,
                    "terrain_cost_weight": weight,
                },
            )
            figures = run_one(cfg)
            results[label].append({"seed": seed, **figures})
            print(f"{label}, seed {seed}: {json.dumps({k: v for k, v in figures.items() if k != 'per_episode'})}")
            (out / "results.json").write_text(json.dumps({"weight": args.weight, "runs": results}, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
