"""Training the terrain models: the patch encoder (`represent`: triplet or VICReg on multi-view patches) and the
cost head on its frozen embeddings (`train_cost`: pairwise preferences), with one jitted step and one resumable,
data-parallel loop for both; restoring them from a run and embedding patches.

Writes under runs/<run.name>/: represent/ckpt (Orbax: encoder, optimizer; resumes), represent/metrics.jsonl,
cost/ckpt (the cost head), cost/metrics.jsonl.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from src.config import ConfigError
from src.infra.checkpoint import Checkpointer
from src.infra.logging import MetricLogger
from src.infra.run_dir import run_path
from src.infra.sharding import make_mesh, replicated, shard_batch
from src.objectives.contrastive import l2_normalize
from src.terrain import dataset, spec
from src.terrain.config import TerrainConfig
from src.terrain.models import CostHead, PatchEncoder, PatchModel, PatchViT
from src.terrain.objectives import preference_loss, triplet_margin_loss, vicreg_loss


def make_encoder(cfg: TerrainConfig, channels: int) -> PatchModel:
    rc, rngs = cfg.represent, nnx.Rngs(cfg.run.seed)
    if rc.encoder == "conv":
        return PatchEncoder(channels, rc.embed_dim, widths=rc.widths, rngs=rngs)
    if cfg.scan.patch_px % rc.vit_patch:
        raise ConfigError(f"represent.vit_patch = {rc.vit_patch} does not divide scan.patch_px = {cfg.scan.patch_px}")
    return PatchViT(channels, cfg.scan.patch_px, rc.embed_dim, patch_size=rc.vit_patch, dim=rc.vit_dim,
                    depth=rc.vit_depth, num_heads=rc.vit_heads, rngs=rngs)


def data_parallel(cfg: TerrainConfig, batch: int, what: str, devices: list[jax.Device] | None = None):
    """The mesh a stage trains on (all devices unless given) and a function that places its batches there."""
    mesh = make_mesh(cfg.mesh, devices)
    if batch % mesh.devices.size:
        raise ConfigError(f"{what} = {batch} is not divisible by the {mesh.devices.size} devices of the mesh")
    return mesh, lambda b: shard_batch(b, mesh)


@functools.cache
def representation_step(
    objective: str, margin: float, sim: float, std: float, cov: float
) -> Callable[[nnx.Module, nnx.Optimizer, Any], jax.Array]:
    """The jitted step of one representation objective (cached: every run in a process shares its compilation)."""
    if objective == "triplet":
        return make_step(lambda m, b: triplet_margin_loss(m(b["anchor"]), m(b["positive"]), m(b["negative"]), margin))
    return make_step(lambda m, b: vicreg_loss(m(b["view1"]), m(b["view2"]), sim, std, cov)[0])


@functools.cache
def cost_step(margin: float) -> Callable[[nnx.Module, nnx.Optimizer, Any], jax.Array]:
    return make_step(lambda h, b: preference_loss(h(b["z1"]), h(b["z2"]), b["label"], margin))


def make_step(loss_fn: Callable[[Any, Any], jax.Array]) -> Callable:
    """A jitted train step `step(model, optimizer, batch) -> loss` (updates both in place).

    The jit is over the split (graphdef, state), with the graphdef static: a fresh model of the same structure
    (a resumed run, a second run in one process) reuses the compiled step.
    """

    @functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
    def pure(graphdef: nnx.GraphDef, state: nnx.State, batch: Any) -> tuple[jax.Array, nnx.State]:
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
        optimizer.update(model, grads)
        return loss, nnx.state((model, optimizer))

    def step(model: nnx.Module, optimizer: nnx.Optimizer, batch: Any) -> jax.Array:
        graphdef, state = nnx.split((model, optimizer))
        loss, state = pure(graphdef, state, batch)
        nnx.update((model, optimizer), state)
        return loss

    return step


def train_loop(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    step_fn: Callable,
    batch_at: Callable[[int], Any],
    steps: int,
    out: Path,
    *,
    checkpoint_every: int,
    keep: int,
    log_every: int,
    resume: bool,
    mesh: jax.sharding.Mesh | None = None,
) -> list[float]:
    """Run steps [restored, steps) with Orbax checkpoints under out/ckpt; returns the losses of the steps run.

    Batches are a pure function of the step (`batch_at`), so a resumed run sees exactly the batches it would
    have seen without the interruption. With a `mesh`, model and optimizer are replicated over it (the batches
    `batch_at` gives are split over it: data parallel).
    """
    ckpt = Checkpointer(out / "ckpt", save_every=max(checkpoint_every, 1), keep=keep)
    start = 0
    latest = ckpt.latest_step() if resume else None
    if latest is not None:
        state = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
        restored, meta = ckpt.restore(latest, state)
        nnx.update(model, restored["model"])
        nnx.update(optimizer, restored["optimizer"])
        start = int(meta["step"])
    if mesh is not None:
        nnx.update((model, optimizer), jax.device_put(nnx.state((model, optimizer)), replicated(mesh)))
    logger = MetricLogger(out, total_steps=steps, progress=False, initial_step=start)
    losses = []
    try:
        for step in range(start, steps):
            loss = float(step_fn(model, optimizer, batch_at(step)))
            if not np.isfinite(loss):
                raise FloatingPointError(f"{out}: non-finite loss {loss} at step {step}")
            losses.append(loss)
            logger.update({"loss": loss})
            done = step + 1
            if done % log_every == 0 or done == steps:
                logger.log(done)
            state = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
            ckpt.save(done, state, meta={"step": done}, force=done == steps)
    finally:
        ckpt.close()
        logger.close()
    return losses


def restore_model(model: nnx.Module, optimizer: nnx.Optimizer, out: Path) -> None:
    """Load the latest checkpoint under out/ckpt into `model`; an error when there is none."""
    ckpt = Checkpointer(out / "ckpt", save_every=1, keep=1)
    try:
        latest = ckpt.latest_step()
        if latest is None:
            raise FileNotFoundError(f"{out / 'ckpt'}: no checkpoint (run the previous stage first)")
        restored, _ = ckpt.restore(latest, {"model": nnx.state(model), "optimizer": nnx.state(optimizer)})
        nnx.update(model, restored["model"])
    finally:
        ckpt.close()


def represent_source(ps: dataset.PatchSet, cfg: TerrainConfig) -> grain.MapDataset:
    rc = cfg.represent
    length = rc.steps * rc.batch
    src = (
        dataset.TripletSource(ps, length, cfg.run.seed)
        if rc.objective == "triplet"
        else dataset.ViewPairSource(ps, length, cfg.run.seed)
    )
    return grain.MapDataset.source(src).batch(rc.batch)


@functools.cache
def _adam(lr: float) -> optax.GradientTransformation:
    """One optax object per learning rate: it is part of the optimizer's graphdef, so sharing it lets a new run
    (or a resumed one) in the same process reuse the compiled step."""
    return optax.adam(lr)


def encoder_optimizer(cfg: TerrainConfig, model: PatchModel) -> nnx.Optimizer:
    return nnx.Optimizer(model, _adam(cfg.represent.lr), wrt=nnx.Param)


def represent(cfg: TerrainConfig, ps: dataset.PatchSet) -> tuple[PatchModel, list[float]]:
    """Train the encoder with the configured objective; resumes from represent/ckpt when run.resume."""
    model = make_encoder(cfg, ps.patches.shape[-1])
    optimizer = encoder_optimizer(cfg, model)
    ds = represent_source(ps, cfg)
    rc = cfg.represent
    mesh, place = data_parallel(cfg, rc.batch, "represent.batch")
    losses = train_loop(
        model,
        optimizer,
        representation_step(rc.objective, rc.margin, rc.vicreg_sim, rc.vicreg_std, rc.vicreg_cov),
        lambda s: place(ds[s]),
        rc.steps,
        run_path(cfg) / "represent",
        checkpoint_every=rc.checkpoint_every,
        keep=rc.keep_checkpoints,
        log_every=rc.log_every,
        resume=cfg.run.resume,
        mesh=mesh,
    )
    return model, losses


def trained_encoder(cfg: TerrainConfig, channels: int, run: Path) -> PatchModel:
    """The encoder `represent` trained in the run directory `run` (its latest checkpoint)."""
    model = make_encoder(cfg, channels)
    restore_model(model, encoder_optimizer(cfg, model), run / "represent")
    return model


@nnx.jit
def _embed_batch(model: PatchModel, patches: jax.Array) -> jax.Array:
    return l2_normalize(model(patches))


def embed(model: PatchModel, patches: np.ndarray, batch: int = 512) -> np.ndarray:
    """L2-normalised embeddings [M, D] of uint8 patches (the frozen representation); fixed-size padded batches
    so that one compilation serves every call."""
    out = []
    for a in range(0, len(patches), batch):
        chunk = patches[a : a + batch]
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(_embed_batch(model, jnp.asarray(padded)))[: len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, model.out.out_features), np.float32)


def _cost_batches(
    z: np.ndarray, category: np.ndarray, names: list[str], orderings: list[tuple[str, str, int]], batch: int, seed: int
) -> Callable[[int], dict[str, np.ndarray]]:
    """Step -> a batch of (first embedding, second embedding, label): random patches of the ordered categories."""
    members = {name: np.flatnonzero(category == k) for k, name in enumerate(names)}
    firsts = [members[a] for a, _, _ in orderings]
    seconds = [members[b] for _, b, _ in orderings]
    labels = np.array([label for _, _, label in orderings], np.float32)

    def batch_at(step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([seed, 1, step])
        which = rng.integers(len(orderings), size=batch)
        i, j = np.zeros(batch, np.int64), np.zeros(batch, np.int64)
        for o in range(len(orderings)):
            rows = which == o
            i[rows] = rng.choice(firsts[o], rows.sum())
            j[rows] = rng.choice(seconds[o], rows.sum())
        return {"z1": z[i], "z2": z[j], "label": labels[which]}

    return batch_at


def make_cost_head(cfg: TerrainConfig) -> CostHead:
    cc = cfg.cost
    return CostHead(cfg.represent.embed_dim, cc.hidden, cc.scale, rngs=nnx.Rngs(cfg.run.seed + 1))


def cost_optimizer(cfg: TerrainConfig, head: CostHead) -> nnx.Optimizer:
    return nnx.Optimizer(head, _adam(cfg.cost.lr), wrt=nnx.Param)


def trained_cost_head(cfg: TerrainConfig, run: Path) -> CostHead:
    """The cost head `train_cost` trained in the run directory `run` (its latest checkpoint)."""
    head = make_cost_head(cfg)
    restore_model(head, cost_optimizer(cfg, head), run / "cost")
    return head


def train_cost(cfg: TerrainConfig, ps: dataset.PatchSet, z: np.ndarray, train_spec: spec.Spec) -> tuple[CostHead, list[float]]:
    """Fit the cost head on frozen embeddings `z` [M, D] of `ps` from the train spec's orderings."""
    if not train_spec.orderings:
        raise spec.SpecError("the train spec has no orderings to learn a cost from")
    head = make_cost_head(cfg)
    optimizer = cost_optimizer(cfg, head)
    cc = cfg.cost
    mesh, place = data_parallel(cfg, cc.batch, "cost.batch")
    batch_at = _cost_batches(z, ps.category, ps.categories, train_spec.orderings, cc.batch, cfg.run.seed)
    losses = train_loop(
        head,
        optimizer,
        cost_step(cc.margin),
        lambda s: place(batch_at(s)),
        cc.steps,
        run_path(cfg) / "cost",
        checkpoint_every=cc.checkpoint_every,
        keep=1,
        log_every=cc.log_every,
        resume=cfg.run.resume,
        mesh=mesh,
    )
    return head, losses
