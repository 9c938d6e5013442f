"""Env steps/s: the PyBullet env (one process) vs the pure-JAX env under jit with 1 .. 4096 parallel envs.

Prints figures, asserts nothing. PyBullet steps one car with random actions. The JAX env runs `--steps` control
steps inside one jitted lax.scan (auto-reset on, constant random actions per env), timed after a compile run.
Each figure is the median of `--repeats` timed runs; lidar with 1080 rays, then lidar + 64x64 camera. The env
axis is sharded over `--cpu-devices` JAX CPU devices (default: one per core; XLA runs this workload on one
thread per device), so that a batch uses the whole CPU.
    uv run python benchmarks/env_step.py [--envs 1,64,1024,4096] [--steps 50] [--repeats 5] [--cpu-devices N]
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from src.envs.racecar import env as racecar
from src.envs.racecar.params import EnvParams, make_params


def bullet_sps(steps: int, camera: bool, repeats: int) -> float | None:
    try:
        from src.envs.bullet.env import BulletRaceEnv
    except ImportError as e:
        print(f"  (PyBullet env not available: {e})")
        return None
    env = BulletRaceEnv("default", camera=camera)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            a = rng.uniform(-1, 1, 2).astype(np.float32)
            _, _, term, trunc, _ = env.step({"motor": a[:1], "steering": a[1:]})
            if term or trunc:
                env.reset()
        rates.append(steps / (time.perf_counter() - t0))
    env.close()
    return float(np.median(rates))


def jax_sps(params: EnvParams, num_envs: int, steps: int, repeats: int) -> float:
    devices = jax.devices()
    devices = devices[: max(d for d in range(1, len(devices) + 1) if num_envs % d == 0)]
    mesh = Mesh(np.asarray(devices), ("env",))
    envs = PartitionSpec("env")
    vstep = jax.vmap(racecar.step, in_axes=(0, 0, 0, None))

    @jax.jit
    @partial(jax.shard_map, mesh=mesh, in_specs=(envs, envs, envs), out_specs=envs, check_vma=False)
    def rollout(keys, state, actions):  # each device steps its own envs
        def body(s, k):
            obs, s, r, term, trunc, _ = vstep(k, s, actions, params)
            return s, r + obs["lidar"][:, 0]

        return jax.lax.scan(body, state, jax.vmap(lambda k: jax.random.split(k, steps), out_axes=1)(keys))[1]

    shard = NamedSharding(mesh, envs)
    keys = jax.device_put(jax.random.split(jax.random.key(0), num_envs), shard)
    _, state = jax.jit(jax.vmap(racecar.reset, in_axes=(0, None)))(keys, params)
    actions = jax.device_put(
        jax.random.uniform(jax.random.key(1), (num_envs, 2), minval=-0.2, maxval=1.0), shard
    )
    jax.block_until_ready(rollout(keys, state, actions))  # compile
    times = []
    for r in range(repeats):
        keys = jax.device_put(jax.random.split(jax.random.key(3 + r), num_envs), shard)
        t0 = time.perf_counter()
        jax.block_until_ready(rollout(keys, state, actions))
        times.append(time.perf_counter() - t0)
    return num_envs * steps / float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--envs", default="1,64,1024,4096")
    parser.add_argument("--steps", type=int, default=50, help="control steps per timed JAX rollout")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each; the median counts")
    parser.add_argument("--bullet-steps", type=int, default=400)
    parser.add_argument("--no-bullet", action="store_true")
    parser.add_argument("--cpu-devices", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({len(jax.devices())} device(s))")
    results: dict[str, dict[str, float | None]] = {}
    for label, camera in (("lidar", False), ("lidar+camera64", True)):
        row: dict[str, float | None] = {}
        row["bullet"] = (
            None
            if args.no_bullet
            else bullet_sps(args.bullet_steps // (4 if camera else 1), camera, args.repeats)
        )
        params = make_params("default", lidar_rays=1080, camera=camera, auto_reset=True)
        for n in (int(v) for v in args.envs.split(",")):
            row[f"jax x{n}"] = jax_sps(params, n, args.steps, args.repeats)
        results[label] = row
        print(f"{label}:")
        for k, v in row.items():
            print(f"  {k:>12}: " + ("n/a" if v is None else f"{v:12,.0f} steps/s"))
        best = max(v for k, v in row.items() if k.startswith("jax") and v is not None)
        if row["bullet"]:
            print(f"  ratio JAX(best)/PyBullet: {best / row['bullet']:.1f}x")


if __name__ == "__main__":
    main()
