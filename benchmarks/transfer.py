"""Env steps per second of the transfer experiment's PPO: N seeds as one vmapped engine vs N sequential runs.

    uv run python benchmarks/transfer.py [--seeds 5] [--iterations 2] [--set k=v ...]

Both use `configs/transfer_racecar.toml` as configured (the scratch variant: multi-track env, lidar BEV, camera,
GPS, IMU), measured in one process: the vmapped engine runs `--iterations` iterations of all seeds at once, the
sequential form the same iterations of each seed in turn on one compiled engine. The first iteration of each
(compilation) is excluded. Prints both rates and their ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax

from src import config
from src.rl import envs as rl_envs
from src.rl import train_jax, trainer
from src.transfer import config as transfer_config
from src.transfer import tracks as transfer_tracks

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "transfer_racecar.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = config.load(transfer_config.TransferConfig, CONFIG, args.overrides)
    env, _ = transfer_tracks.multi_track_env(cfg, [transfer_tracks.load_track(t) for t in cfg.transfer.train_tracks])
    example = transfer_tracks.env_example(env)
    setups = []
    for s in range(args.seeds):
        rl = config.replace(transfer_config.rl_config(cfg), run={"seed": s})
        training_env = rl_envs.TrainingEnv(2, example, None, None)
        setups.append(trainer.setup(rl, training_env))
    learner = setups[0].learner
    engine = train_jax.JaxEngine(learner, env, cfg.env.num_envs)
    trains = [learner.init_state(su.params, example, jax.random.PRNGKey(s)) for s, su in enumerate(setups)]
    keys = [jax.random.PRNGKey(s + 1) for s in range(args.seeds)]
    per_iteration = cfg.ppo.num_steps * cfg.env.num_envs

    batch = train_jax.SeedBatch(engine)
    runner = batch.init(trains, keys)
    t0 = time.perf_counter()
    runner, _ = batch.run_iteration(runner)
    compile_vmapped = time.perf_counter() - t0
    print(f"vmapped: first iteration {compile_vmapped:.0f} s", flush=True)
    t0 = time.perf_counter()
    for _ in range(args.iterations):
        runner, _ = batch.run_iteration(runner)
    jax.block_until_ready(runner)
    vmapped = args.seeds * args.iterations * per_iteration / (time.perf_counter() - t0)
    print(f"vmapped: {vmapped:.0f} env steps/s", flush=True)

    runners = [engine.init(t, k) for t, k in zip(trains, keys)]
    t0 = time.perf_counter()
    runners[0], _ = engine.run_iteration(runners[0])
    compile_single = time.perf_counter() - t0
    print(f"single: first iteration {compile_single:.0f} s", flush=True)
    t0 = time.perf_counter()
    for i in range(args.seeds):
        for _ in range(args.iterations):
            runners[i], _ = engine.run_iteration(runners[i])
    jax.block_until_ready(runners)
    sequential = args.seeds * args.iterations * per_iteration / (time.perf_counter() - t0)

    print(f"{args.seeds} seeds x {args.iterations} iterations x {per_iteration} env steps ({cfg.env.num_envs} envs "
          f"on {len(cfg.transfer.train_tracks)} tracks), {jax.device_count()} device(s)")
    print(f"vmapped seeds:   {vmapped:8.0f} env steps/s (first iteration, compile included: {compile_vmapped:.0f} s)")
    print(f"sequential runs: {sequential:8.0f} env steps/s (first iteration, compile included: {compile_single:.0f} s)")
    print(f"ratio vmapped / sequential: {vmapped / sequential:.2f}")


if __name__ == "__main__":
    main()
