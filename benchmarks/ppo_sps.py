"""Env steps per second of whole PPO training (rollout + GAE + update), both engines side by side.

    uv run python benchmarks/ppo_sps.py [--iterations 3] [--bullet-envs 2] [--bullet-steps 32]

The jitted engine runs `configs/rl_racecar.toml` as configured (pure-JAX env, small Raceformer); the host
engine runs the same model and PPO settings on the PyBullet env through `gymnasium.vector` (fewer envs and a
shorter rollout, since each PyBullet step costs milliseconds). The first iteration (compilation) is excluded.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax

from src import config
from src.config import RLConfig
from src.rl import train_host, train_jax, trainer

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "rl_racecar.toml"


def measure(cfg: RLConfig, iterations: int) -> dict[str, float]:
    s = trainer.setup(cfg)
    engine = s.env.make_engine(s.learner)
    state = s.learner.init_state(s.params, s.env.obs_example, jax.random.PRNGKey(0))
    if isinstance(engine, train_jax.JaxEngine):
        carry = engine.init(state, jax.random.PRNGKey(1))
    else:
        engine.reset(0)
        carry = state
    t0 = time.perf_counter()
    carry, _ = engine.run_iteration(carry)  # compile
    jax.block_until_ready(carry)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(iterations):
        carry, _ = engine.run_iteration(carry)
    jax.block_until_ready(carry)
    elapsed = time.perf_counter() - t0
    if isinstance(engine, train_host.HostEngine):
        engine.close()
    steps = iterations * cfg.ppo.num_steps * cfg.env.num_envs
    return {"sps": steps / elapsed, "steps": steps, "seconds": elapsed, "first_iteration_s": compile_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--bullet-envs", type=int, default=2)
    parser.add_argument("--bullet-steps", type=int, default=32)
    args = parser.parse_args()
    base = config.load(RLConfig, CONFIG, ["eval.every=0", "run.out_dir='runs/bench'"])
    jax_cfg = base
    bullet_cfg = config.replace(
        base,
        env={"kind": "bullet", "num_envs": args.bullet_envs, "signed_progress": False, "reset_mode": "grid"},
        ppo={"num_steps": args.bullet_steps, "num_minibatches": 2},
    )
    rows = [
        ("jax engine, JAX env", jax_cfg, measure(jax_cfg, args.iterations)),
        ("host engine, PyBullet env", bullet_cfg, measure(bullet_cfg, max(1, args.iterations - 2))),
    ]
    print(f"devices: {jax.devices()}")
    print(
        f"{'engine':28s} {'envs':>5s} {'rollout':>8s} {'env steps/s':>12s} {'timed steps':>12s} {'1st iter s':>11s}"
    )
    for name, cfg, r in rows:
        print(
            f"{name:28s} {cfg.env.num_envs:5d} {cfg.ppo.num_steps:8d} {r['sps']:12.0f} {r['steps']:12d} "
            f"{r['first_iteration_s']:11.1f}"
        )


if __name__ == "__main__":
    main()
