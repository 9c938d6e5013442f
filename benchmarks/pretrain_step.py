"""Pretraining step throughput on this machine: prints samples/s, step time, model FLOPs per step (XLA's cost
analysis of the compiled step), achieved FLOP/s, and the share of a real run's step time spent waiting for data.

    uv run python benchmarks/pretrain_step.py [--config configs/pretrain_cmht.toml] [--steps 20] [--workers 2]

Two models: "tiny" (the tests' size: embed 32, one block, 32x32 inputs) on random batches, and the config's
model on batches from its real pipeline. The data-wait share comes from a short real run of the config with
`--workers` Grain worker processes (time blocked in `next()` over the whole step, compile step excluded).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from src import config
from src.config import ModalityConfig, PretrainConfig
from src.infra import sharding
from src.pretraining import data as pretrain_data
from src.pretraining import loop as pretrain_loop
from src.pretraining import step as pretrain_step


def tiny_config(base: PretrainConfig) -> PretrainConfig:
    model = {
        "embed_dim": 32, "depth": 1, "fusion_depth": 1, "num_heads": 2, "patch_size": 8, "decoder_dim": 32,
        "decoder_depth": 1, "decoder_heads": 2,
        "modalities": {"lidar": ModalityConfig((32, 32, 4)), "rgb": ModalityConfig((32, 32, 3)),
                       "gps": ModalityConfig((5,))},
    }
    return config.replace(base, model=model, training={"batch_size": 8})


def random_batch(cfg: PretrainConfig) -> dict:
    rng = np.random.default_rng(0)
    b = cfg.training.batch_size
    batch = {m: rng.normal(size=(b, *mc.shape)).astype(np.float32) for m, mc in cfg.model.modalities.items()}
    batch["valid"] = {m: np.ones(b, bool) for m in cfg.model.modalities}
    return batch


def flops_of(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def time_steps(name: str, cfg: PretrainConfig, batch: dict, steps: int) -> None:
    s = pretrain_step.setup(cfg)
    gbatch = sharding.shard_batch(pretrain_step.model_inputs(batch, s.model.modalities), s.mesh)
    t0 = time.perf_counter()
    compiled = s.step_fn.lower(s.state, gbatch).compile()
    compile_s = time.perf_counter() - t0
    flops = flops_of(compiled)
    state, metrics = compiled(s.state, gbatch)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, gbatch)
    jax.block_until_ready(metrics)
    dt = (time.perf_counter() - t0) / steps
    bs = cfg.training.batch_size
    print(f"{name:8s} batch {bs:3d}  compile {compile_s:6.1f} s  step {dt * 1e3:8.1f} ms  "
          f"{bs / dt:8.1f} samples/s  {flops / 1e9:8.3f} GFLOP/step  {flops / dt / 1e9:7.2f} GFLOP/s")


def data_wait_share(cfg: PretrainConfig, steps: int, workers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = config.replace(
            cfg,
            run={"name": "bench", "out_dir": tmp, "resume": False},
            data={"num_workers": workers},
            training={"steps": steps + 1, "log_every": 1, "checkpoint_every": 10_000, "export_encoder": False},
        )
        pretrain_loop.train(run, progress=False)
        rows = [json.loads(x) for x in (Path(tmp) / "bench" / "metrics.jsonl").read_text().splitlines()][1:]
    wait = sum(r["data_wait_s"] for r in rows)
    total = sum(r["step_time_s"] for r in rows)
    print(f"data wait ({workers} Grain workers, {len(rows)} steps of the {cfg.run.name} run): "
          f"{100 * wait / total:.1f}% of step time ({1e3 * wait / len(rows):.1f} ms of {1e3 * total / len(rows):.1f} ms "
          f"a step; target < 10%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/pretrain_cmht.toml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cfg = config.load(PretrainConfig, args.config)
    print(f"devices: {jax.devices()}")
    time_steps("tiny", tiny_config(cfg), random_batch(tiny_config(cfg)), args.steps)
    from src.data import synthetic

    synthetic.ensure_dataset(cfg.data)
    it = pretrain_data.build_data(cfg, batch_size=cfg.training.batch_size, shard_index=0, shard_count=1)
    time_steps("default", cfg, next(it), args.steps)
    data_wait_share(cfg, args.steps, args.workers)


if __name__ == "__main__":
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # Grain's spawned data workers read absl flags
    main()
