"""Env steps/s: the PyBullet env (one process) vs the pure-JAX env under jit with 1 .. 4096 parallel envs.

Prints figures, asserts nothing. The JAX env runs `--steps` control steps inside one jitted lax.scan (auto-reset
on, constant random actions per env), timed after a compile run; lidar with 1080 rays, then lidar + 64x64 camera.
    uv run python benchmarks/env_step.py [--envs 1,64,1024,4096] [--steps 50] [--bullet-steps 200]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from src.envs import jax_racecar as jr


def bullet_sps(steps: int, camera: bool) -> float | None:
    try:
        from src.envs.bullet_racecar import BulletRaceEnv
    except ImportError as e:
        print(f"  (PyBullet env not available: {e})")
        return None
    env = BulletRaceEnv("default", camera=camera)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        a = rng.uniform(-1, 1, 2).astype(np.float32)
        _, _, term, trunc, _ = env.step({"motor": a[:1], "steering": a[1:]})
        if term or trunc:
            env.reset()
    sps = steps / (time.perf_counter() - t0)
    env.close()
    return sps


def jax_sps(params: jr.EnvParams, num_envs: int, steps: int) -> float:
    vstep = jax.vmap(jr.step, in_axes=(0, 0, 0, None))

    @jax.jit
    def rollout(key, state, actions):
        def body(s, k):
            obs, s, r, term, trunc, _ = vstep(jax.random.split(k, num_envs), s, actions, params)
            return s, r.sum() + obs["lidar"][:, 0].sum()

        return jax.lax.scan(body, state, jax.random.split(key, steps))

    keys = jax.random.split(jax.random.key(0), num_envs)
    _, state = jax.jit(jax.vmap(jr.reset, in_axes=(0, None)))(keys, params)
    actions = jax.random.uniform(jax.random.key(1), (num_envs, 2), minval=-0.2, maxval=1.0)
    jax.block_until_ready(rollout(jax.random.key(2), state, actions))  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(rollout(jax.random.key(3), state, actions))
    return num_envs * steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--envs", default="1,64,1024,4096")
    parser.add_argument("--steps", type=int, default=50, help="control steps per timed JAX rollout")
    parser.add_argument("--bullet-steps", type=int, default=200)
    parser.add_argument("--no-bullet", action="store_true")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({len(jax.devices())} device(s))")
    results: dict[str, dict[str, float | None]] = {}
    for label, camera in (("lidar", False), ("lidar+camera64", True)):
        row: dict[str, float | None] = {}
        row["bullet"] = (
            None if args.no_bullet else bullet_sps(args.bullet_steps // (4 if camera else 1), camera)
        )
        params = jr.make_params("default", lidar_rays=1080, camera=camera, auto_reset=True)
        for n in (int(v) for v in args.envs.split(",")):
            row[f"jax x{n}"] = jax_sps(params, n, args.steps)
        results[label] = row
        print(f"{label}:")
        for k, v in row.items():
            print(f"  {k:>12}: " + ("n/a" if v is None else f"{v:12,.0f} steps/s"))
        best = max(v for k, v in row.items() if k.startswith("jax") and v is not None)
        if row["bullet"]:
            print(f"  ratio JAX(best)/PyBullet: {best / row['bullet']:.1f}x")


if __name__ == "__main__":
    main()
