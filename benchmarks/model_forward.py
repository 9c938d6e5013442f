"""Raceformer size and speed: parameter counts and forward+backward samples/s on this machine.

Two workloads per model: "features" (every patch encoded, a loss on the fused CLS feature: the PPO path) and
"masked" (the masked-modeling pretraining loss at mask_ratio 0.5: encoders see half the patches, the decoder
predicts the rest). The compile and one warm-up step are excluded from the timing.

    uv run python benchmarks/model_forward.py [--iters 5] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src import config  # noqa: E402
from src.config import ModalityConfig, ModelConfig, PretrainConfig  # noqa: E402
from src.models import Raceformer  # noqa: E402
from src.objectives.masked_modeling import masked_modeling_loss  # noqa: E402

TINY = ModelConfig(
    embed_dim=32,
    depth=1,
    num_heads=2,
    patch_size=8,
    fusion_depth=1,
    decoder_dim=32,
    decoder_heads=2,
    projection_dim=32,
    modalities={
        "lidar": ModalityConfig(shape=(32, 32, 4)),
        "rgb": ModalityConfig(shape=(32, 32, 3)),
        "gps": ModalityConfig(shape=(5,)),
        "imu": ModalityConfig(shape=(6,)),
    },
)


def count(tree) -> int:
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def random_batch(cfg: ModelConfig, batch_size: int) -> dict:
    rng = np.random.default_rng(0)
    batch = {m: rng.normal(size=(batch_size, *c.shape)).astype(np.float32) for m, c in cfg.modalities.items()}
    batch["valid"] = {m: np.ones(batch_size, bool) for m in cfg.modalities}
    return batch


def features_loss(model: Raceformer, batch: dict, key: jax.Array) -> jax.Array:
    del key
    return jnp.mean(jnp.square(model.features(batch, batch["valid"])))


def masked_loss(model: Raceformer, batch: dict, key: jax.Array) -> jax.Array:
    return masked_modeling_loss(model, batch, key, mask_ratio=0.5)[0]


def time_grad(model: Raceformer, loss, batch: dict, iters: int) -> tuple[float, float]:
    """(compile + first step seconds, samples/s of forward+backward) of `loss` w.r.t. the parameters."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def grad(params, batch, key):
        return jax.grad(lambda p: loss(nnx.merge(graphdef, p, rest), batch, key))(params)

    key = jax.random.key(0)
    t0 = time.perf_counter()
    jax.block_until_ready(grad(params, batch, key))
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(grad(params, batch, key))  # warm-up
    t0 = time.perf_counter()
    for i in range(iters):
        out = grad(params, batch, jax.random.fold_in(key, i))
    jax.block_until_ready(out)
    elapsed = time.perf_counter() - t0
    return compile_s, iters * len(batch["valid"][next(iter(batch["valid"]))]) / elapsed


def report(name: str, cfg: ModelConfig, batch_size: int, iters: int, dtype) -> None:
    model = Raceformer(cfg, rngs=nnx.Rngs(0), dtype=dtype)
    total = count(nnx.state(model, nnx.Param))
    enc, fus = count(nnx.state(model.encoders, nnx.Param)), count(nnx.state(model.fusion, nnx.Param))
    print(f"{name}: {total:,} parameters (encoders {enc:,}, fusion {fus:,}, heads {total - enc - fus:,})")
    tokens = sum(model.num_patches(m) for m in model.modalities)
    print(f"  {list(model.modalities)}: {tokens} tokens a sample, batch {batch_size}, {jnp.dtype(dtype)}")
    batch = random_batch(cfg, batch_size)
    for label, loss in (("features", features_loss), ("masked", masked_loss)):
        compile_s, rate = time_grad(model, loss, batch, iters)
        print(f"  {label:8s} forward+backward: {rate:8.1f} samples/s  (compile {compile_s:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per workload")
    parser.add_argument("--tiny-batch", type=int, default=16)
    parser.add_argument("--cmht-batch", type=int, default=4)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    default_config = Path(__file__).resolve().parents[1] / "configs" / "pretrain_cmht.toml"
    parser.add_argument("--config", default=str(default_config), help="pretraining config to measure")
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s))")
    report("tiny", TINY, args.tiny_batch, args.iters, dtype)
    cmht = config.load(PretrainConfig, args.config).model
    report(Path(args.config).name, cmht, args.cmht_batch, args.iters, dtype)


if __name__ == "__main__":
    main()
