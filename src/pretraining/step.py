"""The pretraining model, optimiser and jitted train step: the weighted objective losses, AdamW with warmup +
cosine decay, global-norm clipping and weight decay on Dense kernels only, over a (data, fsdp) device mesh."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from src import config
from src.config import ConfigError, PretrainConfig
from src.infra import sharding
from src.models.raceformer import Raceformer
from src.objectives.contrastive import CONTRASTIVE_OBJECTIVES, LatentDecoder, contrastive_loss
from src.objectives.masked_modeling import masked_modeling_loss


def compute_loss(model: Raceformer, batch: dict, key: jax.Array, cfg: PretrainConfig) -> tuple[jax.Array, dict]:
    """The weighted sum of the `[objectives]` losses; aux holds each objective's loss and its own diagnostics.

    Each objective draws its randomness from `key` folded with its own index, so enabling one objective does
    not change another's masks.
    """
    obj, tr = cfg.objectives, cfg.training
    total: jax.Array | None = None
    aux: dict[str, jax.Array] = {}
    if obj.masked_modeling:
        loss, mm_aux = masked_modeling_loss(
            model, batch, jax.random.fold_in(key, 0), mask_ratio=tr.mask_ratio,
            dirichlet_alpha=tr.dirichlet_alpha, norm_pix_loss=tr.norm_pix_loss, deterministic=False,
        )
        aux.update(mm_aux)
        aux["loss/masked_modeling"] = loss
        total = obj.masked_modeling * loss
    weights = {name: getattr(obj, name) for name in CONTRASTIVE_OBJECTIVES}
    if any(w > 0 for w in weights.values()):
        loss, c_aux = contrastive_loss(
            model, batch, jax.random.fold_in(key, 1), weights, cfg.data.episode_cameras, obj.temperature,
            decoder=getattr(model, "latent_decoder", None), deterministic=False,
        )
        aux.update(c_aux)
        total = loss if total is None else total + loss
    if total is None:
        raise ConfigError("[objectives]: every objective weight is 0; enable at least one")
    return total, aux


def model_inputs(batch: dict, modalities: tuple[str, ...]) -> dict:
    """The parts of a pipeline batch the model reads (drops timestamps and anything else)."""
    missing = [m for m in modalities if m not in batch]
    if missing:
        raise ValueError(f"batch lacks modalities {missing}; got keys {sorted(batch)}")
    valid = batch.get("valid", {})
    out = {
        **{m: batch[m] for m in modalities},
        "valid": {m: np.asarray(valid[m], bool) if m in valid else np.ones(len(batch[m]), bool) for m in modalities},
    }
    for key in ("images_by_cam", "image_valid_by_cam"):  # episode batches: every camera view and its mask
        if key in batch:
            out[key] = batch[key]
    if "t1" in batch:  # temporal-pair batches: the frame at t + dt
        out["t1"] = model_inputs(batch["t1"], modalities)
    return out


def make_schedule(cfg: PretrainConfig) -> optax.Schedule:
    tr = cfg.training
    warmup = min(tr.warmup_steps, max(tr.steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        0.0, tr.learning_rate, warmup, max(tr.steps, warmup + 1), end_value=tr.learning_rate * tr.min_lr_ratio
    )


def decay_mask(params: Any) -> Any:
    """Bool tree over `params`: True only for the weight matrices (`kernel`) of Dense layers. Biases, norm scales
    and learned tables (position and modality-type embeddings, missing-modality / mask / CLS tokens, nnx.Embed)
    are not decayed: pulling them toward zero erases what they encode rather than regularising a map."""

    def is_kernel(path: tuple, _: Any) -> bool:
        names = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
        return [n for n in names if n != "value"][-1] == "kernel"  # ".value" is the Variable's array

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(cfg: PretrainConfig) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW with weight decay on Dense kernels only (`decay_mask`)."""
    tr = cfg.training
    return optax.chain(
        optax.clip_by_global_norm(tr.grad_clip),
        optax.adamw(make_schedule(cfg), weight_decay=tr.weight_decay, mask=decay_mask),
    )


@dataclasses.dataclass
class Setup:
    """Everything a run needs besides data: the model/optimizer structure, the placed state and the step."""

    model: Raceformer
    optimizer: nnx.Optimizer
    mesh: jax.sharding.Mesh
    state: dict[str, Any]  # {"model", "optimizer", "rng"}: global arrays
    state_shardings: Any
    step_fn: Callable[[dict, dict], tuple[dict, dict]]  # jitted; donates the state
    schedule: optax.Schedule


def _step_key(cfg: PretrainConfig, mesh: jax.sharding.Mesh) -> tuple:
    ids = tuple(int(d.id) for d in mesh.devices.flat)
    # Logging / checkpoint cadence does not enter the step: runs that differ only there share one compile.
    training = dataclasses.replace(cfg.training, log_every=1, checkpoint_every=1, keep_checkpoints=1,
                                   export_encoder=False)
    return (config.to_toml(cfg.model), config.to_toml(training), config.to_toml(cfg.objectives),
            cfg.data.episode_cameras, ids, tuple(mesh.shape.items()), cfg.mesh.param_sharding)


def _build_step(cfg: PretrainConfig, mesh, model_def, opt_def, state_sh) -> Callable:
    def step(state: dict, batch: dict) -> tuple[dict, dict]:
        model = nnx.merge(model_def, state["model"])
        optimizer = nnx.merge(opt_def, state["optimizer"])
        key = jax.random.fold_in(state["rng"], optimizer.step[...])

        def loss_fn(m: Raceformer) -> tuple[jax.Array, dict]:
            return compute_loss(m, batch, key, cfg)

        (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        new_state = {"model": nnx.state(model), "optimizer": nnx.state(optimizer), "rng": state["rng"]}
        return new_state, metrics

    return jax.jit(
        step,
        in_shardings=(state_sh, sharding.batch_sharding(mesh)),
        out_shardings=(state_sh, sharding.replicated(mesh)),
        donate_argnums=0,
    )


def setup(cfg: PretrainConfig, mesh: jax.sharding.Mesh | None = None) -> Setup:
    """Model, optimizer and jitted step for `cfg` on `mesh` (default: the configured mesh over all devices)."""
    mesh = mesh or sharding.make_mesh(cfg.mesh)
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[cfg.training.dtype]
    model = Raceformer(cfg.model, rngs=nnx.Rngs(cfg.run.seed), dtype=dtype)
    if cfg.objectives.latent_recon:
        # Trained and checkpointed with the model; not part of the exported encoder + fusion.
        model.latent_decoder = LatentDecoder(
            cfg.model.embed_dim, len(cfg.data.episode_cameras), cfg.objectives.latent_decoder_hidden,
            rngs=nnx.Rngs(cfg.run.seed + 2),
        )
    optimizer = nnx.Optimizer(model, make_optimizer(cfg), wrt=nnx.Param)
    model_def, model_state = nnx.split(model)
    opt_def, opt_state = nnx.split(optimizer)
    host_state = {"model": model_state, "optimizer": opt_state, "rng": jax.random.key(cfg.run.seed + 1)}
    state_sh = sharding.state_shardings(host_state, mesh, cfg.mesh.param_sharding)
    state = sharding.put_global(host_state, state_sh)
    key = _step_key(cfg, mesh)
    if key not in _STEP_CACHE:
        _STEP_CACHE[key] = _build_step(cfg, mesh, model_def, opt_def, state_sh)
    return Setup(model, optimizer, mesh, state, state_sh, _STEP_CACHE[key], make_schedule(cfg))


_STEP_CACHE: dict[tuple, Callable] = {}
"""Jitted steps by (model, training, objectives, mesh): runs of one config in one process compile once."""
