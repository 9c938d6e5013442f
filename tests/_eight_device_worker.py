"""The tiny train step on 8 fake CPU devices, run as a script by `test_sharding` (XLA_FLAGS must be set before
JAX starts): three steps on one device and on a data x fsdp = 4 x 2 mesh with FSDP parameters, same batches, and
with --reshard three steps of a run checkpointed on the 4 x 2 mesh and resumed on an 8 x 1 one. Prints one JSON
line: the loss sequences and how many parameters the FSDP layout actually split.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from src import config  # noqa: E402
from src.infra import sharding  # noqa: E402
from src.pretraining import loop as pretrain_loop
from src.pretraining import step as pretrain_step
from tests._pretrain_fakes import tiny_config, tiny_data_fn  # noqa: E402


def losses(cfg, devices) -> tuple[list[float], int]:
    s = pretrain_step.setup(cfg, sharding.make_mesh(cfg.mesh, devices))
    it = tiny_data_fn()(cfg, batch_size=cfg.training.batch_size, shard_index=0, shard_count=1)
    state, out = s.state, []
    for _ in range(3):
        batch = sharding.shard_batch(pretrain_step.model_inputs(next(it), s.model.modalities), s.mesh)
        state, metrics = s.step_fn(state, batch)
        out.append(float(metrics["loss"]))
    split = sum(any(a is not None for a in x.sharding.spec) for x in jax.tree.leaves(state["model"]))
    return out, split


def terrain_losses() -> dict[str, list[float]]:
    """Three triplet steps of the terrain encoder, data parallel over 8 devices and on one; and the error for a
    batch that does not split over the devices."""
    import numpy as np

    from src.terrain import training
    from src.terrain.config import TerrainConfig

    rng = np.random.default_rng(0)
    batch = {k: rng.integers(0, 255, (16, 12, 12, 3), dtype=np.uint8) for k in ("anchor", "positive", "negative")}
    out = {}
    for name, data in (("one", 1), ("eight", 8)):
        cfg = config.from_dict(TerrainConfig, {"scan": {"patch_px": 12}, "represent": {"embed_dim": 8},
                                               "mesh": {"data": data}})
        model = training.make_encoder(cfg, 3)
        optimizer = training.encoder_optimizer(cfg, model)
        mesh, place = training.data_parallel(cfg, 16, "represent.batch", jax.devices()[:data])
        step = training.representation_step("triplet", 1.0, 25.0, 25.0, 1.0)
        out[name] = training.train_loop(model, optimizer, step, lambda s, place=place: place(batch), 3,
                                        Path(sys.argv[1]) / f"terrain_{name}", checkpoint_every=100, keep=1,
                                        log_every=1, resume=False, mesh=mesh)
        out[f"{name}_devices"] = len(place(batch)["anchor"].sharding.device_set)
        out[f"{name}_param_devices"] = len(jax.tree.leaves(nnx.state(model))[0].sharding.device_set)
    try:
        training.data_parallel(cfg, 12, "represent.batch")
    except config.ConfigError as e:
        out["error"] = str(e)
    return out


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    base = tiny_config(Path(sys.argv[1]), modalities=("lidar", "gps"))
    one, _ = losses(config.replace(base, mesh={"data": 1, "fsdp": 1}), jax.devices()[:1])
    fsdp = config.replace(base, mesh={"data": 4, "fsdp": 2, "param_sharding": "fsdp"})
    eight, split = losses(fsdp, jax.devices())
    figures = {"one": one, "eight": eight, "fsdp_split_params": split, "terrain": terrain_losses()}
    if "--reshard" in sys.argv:
        # A run checkpointed on the FSDP mesh and resumed on a replicated 8 x 1 mesh (Orbax reshards on restore).
        first = pretrain_loop.train(config.replace(fsdp, run={"name": "reshard"}), data_fn=tiny_data_fn(),
                                 stop_after=2, progress=False)
        replicated = config.replace(base, run={"name": "reshard"}, mesh={"data": 8, "fsdp": 1})
        second = pretrain_loop.train(replicated, data_fn=tiny_data_fn(), stop_after=3, progress=False)
        figures["resharded"] = [first.losses[1], first.losses[2], second.losses[3]]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
