"""Pretraining runs: `python -m src.training.pretrainer --config configs/pretrain_cmht.toml [--set k=v ...]`.

One jitted train step (AdamW with warmup + cosine decay and global-norm clipping) over a (data, fsdp) device
mesh, fed by a per-process Grain pipeline. A run lives in `runs/<name>/` (Contract 3): the resolved
`config.toml`, Orbax checkpoints in `ckpt/` (model, optimizer, RNG key, step and the data iterator's position,
so a restarted run continues exactly), `metrics.jsonl` + TensorBoard events, and at the end `encoder/`, the
encoder + fusion weights a PPO run imports. A non-finite loss stops the run and leaves the last good
checkpoint; SIGTERM (SLURM pre-emption or time-limit warning) and Ctrl-C save a checkpoint before exiting, and
the CLI then exits with EXIT_STOPPED_EARLY (75) so that a job script can requeue itself. Shared files (synthetic
data, converted bags) are written by process 0 while the others wait at a barrier.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from src import config, processes
from src.config import ConfigError, PretrainConfig
from src.models.raceformer import Raceformer
from src.training import run_dir, sharding
from src.training.checkpoint import Checkpointer, export_encoder
from src.training.logging import MetricLogger
from src.training.objectives import (
    CONTRASTIVE_OBJECTIVES,
    LatentDecoder,
    contrastive_loss,
    masked_modeling_loss,
)

DataFn = Callable[..., Iterator[dict[str, Any]]]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/Inf; the run stopped without saving the bad state."""


# --------------------------------------------------------------------------------------------- data and loss


def _written_by_process_zero(name: str, write: Callable[[], Any]) -> None:
    """Run `write` (creates shared files: synthetic data, converted bags) on process 0 only; the other processes
    wait at a barrier until it is done, so that no file is written twice and nobody reads half a set."""
    if jax.process_index() == 0:
        write()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"raceformer:{name}")


def build_data(cfg: PretrainConfig, *, batch_size: int, shard_index: int, shard_count: int) -> Iterator[dict]:
    """This process's batch iterator (a Grain DatasetIterator with get_state/set_state) for `cfg.data.source`."""
    if cfg.data.source == "episodes":
        from src.data.episodes import sources
        from src.envs import recorder

        _written_by_process_zero(
            "episodes_ready", lambda: recorder.ensure_episodes(cfg.data, cfg.model, seed=cfg.run.seed)
        )
        return sources.build_iterator(cfg.data, cfg.model, batch_size=batch_size, seed=cfg.run.seed,
                                       shard_index=shard_index, shard_count=shard_count)
    from src.data import synthetic
    from src.data.cmht import dataset

    if cfg.data.source == "cmht":
        _written_by_process_zero("cmht_ready", lambda: synthetic.ensure_dataset(cfg.data))
        source = dataset.build_cmht_source(cfg.data, cfg.model)
    elif cfg.data.source == "rosbag":
        from src.data import rosbag

        _written_by_process_zero(
            "rosbag_converted", lambda: rosbag.convert_bags(cfg.data.root, on_error=cfg.data.on_error)
        )
        converted = Path(cfg.data.root) / rosbag.CONVERTED
        source = dataset.build_cmht_source(dataclasses.replace(cfg.data, root=str(converted)), cfg.model)
    else:
        raise ConfigError(
            f"data.source={cfg.data.source!r}: the pretrainer reads 'cmht', 'rosbag' and 'episodes' sources"
        )
    return dataset.build_pipeline(
        source,
        batch_size=batch_size,
        seed=cfg.run.seed,
        num_workers=cfg.data.num_workers,
        prefetch=cfg.data.prefetch,
        shuffle=cfg.data.shuffle,
        shard_index=shard_index,
        shard_count=shard_count,
    )


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


# --------------------------------------------------------------------------------------------- the train step


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


_STEP_CACHE: dict[tuple, Callable] = {}
"""Jitted steps by (model, training, objectives, mesh): runs of one config in one process compile once."""


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


# --------------------------------------------------------------------------------------------- signals


EXIT_STOPPED_EARLY = 75
"""`python -m src.training.pretrainer` exit status when a signal (SLURM's time-limit warning, pre-emption, Ctrl-C)
stopped the run before its last step after saving a checkpoint: run it again to continue (EX_TEMPFAIL). The SLURM
scripts requeue the job on it."""


class StopFlag:
    """Why the loop should save and exit: SIGTERM / SIGINT in a single process; with several processes, JAX's
    preemption sync point, which all processes reach at the same step (a signal seen by one process at step k
    and by another at k+1 would otherwise leave them in different collectives).

    `install` it before anything slow so that an early SIGTERM is kept, not fatal. It may arrive more than once
    (under `srun uv run`, uv forwards the signal that SLURM also sends to its child); that is one request.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._multi = False

    def handler(self, signum: int, frame: Any = None) -> None:
        self.signum = signum

    def should_stop(self, step: int) -> bool:
        if self.signum is None and self._multi:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.signum = signal.SIGTERM
        return self.signum is not None

    def install(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> StopFlag:
        """Catch `signals` from now on (main thread only; those already caught stay as they are)."""
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                if sig not in self._previous:
                    self._previous[sig] = signal.signal(sig, self.handler)
        return self

    def attach_distributed(self) -> None:
        """With several processes, hand SIGTERM to JAX's preemption service (`jax.distributed` installs its own
        handler) and give SIGINT back its previous handler (processes could see it at different steps): a signal
        caught before is raised again for them, so that every process stops at the same step."""
        self._multi = jax.process_count() > 1
        if not self._multi:
            return
        if signal.SIGINT in self._previous:
            signal.signal(signal.SIGINT, self._previous.pop(signal.SIGINT))
        if self.signum is not None:
            signum, self.signum = self.signum, None
            signal.raise_signal(signum)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


# --------------------------------------------------------------------------------------------- the run


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    start_step: int  # the step this invocation resumed from (0 for a fresh run)
    step: int  # the last completed step
    losses: dict[int, float]  # step -> loss, for the steps this invocation ran
    stopped_by: str  # "completed", "stop_after" or the signal name
    encoder_dir: Path | None
    wall_s: float
    state: dict[str, Any]  # the final {"model", "optimizer", "rng"} state (global arrays)


def _replicated_model(s: Setup, state: dict) -> Raceformer:
    """The model with `state`'s parameters gathered onto every device (for export on any process)."""
    gather = jax.jit(lambda x: x, out_shardings=sharding.replicated(s.mesh))
    nnx.update(s.model, gather(state["model"]))
    return s.model


def train(
    cfg: PretrainConfig,
    *,
    data_fn: DataFn | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    stop_flag: StopFlag | None = None,
) -> TrainResult:
    """Train (or continue, when `run.resume` and a checkpoint exists) the run `cfg` names.

    data_fn(cfg, batch_size=, shard_index=, shard_count=) replaces `build_data` (tests bring small sources);
    `stop_after` ends this invocation after that many steps in total (with a checkpoint), as a pre-emption would.
    """
    t_start = time.perf_counter()
    processes.prepare_process()
    owns_flag = stop_flag is None
    flag = (stop_flag or StopFlag()).install()
    sharding.initialize_distributed(cfg.mesh)
    try:
        flag.attach_distributed()
        return _train(cfg, flag, data_fn=data_fn, stop_after=stop_after, progress=progress, t_start=t_start)
    finally:
        if owns_flag:
            flag.restore()


def _train(cfg: PretrainConfig, flag: StopFlag, *, data_fn: DataFn | None, stop_after: int | None,
           progress: bool, t_start: float) -> TrainResult:
    tr = cfg.training
    primary = jax.process_index() == 0
    rd = run_dir.prepare(cfg, primary=primary)
    if jax.process_count() > 1:  # the primary may have moved an old run aside: nobody writes before that
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("raceformer:run_dir")
    out = rd.path
    s = setup(cfg)
    print(sharding.describe(s.mesh), flush=True)
    local_bs = sharding.local_batch_size(tr.batch_size, s.mesh)
    data_iter = (data_fn or build_data)(
        cfg, batch_size=local_bs, shard_index=jax.process_index(), shard_count=jax.process_count()
    )
    ckpt = Checkpointer(rd.ckpt, save_every=max(tr.checkpoint_every, 1), keep=tr.keep_checkpoints)
    state, start = s.state, 0
    latest = ckpt.latest_step() if rd.resumable else None
    layout = sharding.layout(s.mesh)
    if latest is not None:
        reshard = sharding.check_resume_layout(
            ckpt.meta(latest).get("layout"), layout, str(ckpt.directory / str(latest))
        )
        if reshard and primary:
            print(reshard, flush=True)
        state, meta = ckpt.restore(latest, state, data_iter=data_iter)
        start = int(meta.get("step", latest))
    end = tr.steps if stop_after is None else min(stop_after, tr.steps)
    logger = MetricLogger(out, total_steps=tr.steps, enabled=primary, progress=progress, initial_step=start)
    if latest is not None:
        logger.write(f"resumed {out} at step {start}")
    if rd.moved_aside is not None:
        logger.write(f"started over: the previous run in {out} was moved to {rd.moved_aside}")
    losses: dict[int, float] = {}
    step, stopped_by, saved_at = start, "completed", latest
    modalities = s.model.modalities
    batch = None
    try:
        while step < end:
            if flag.should_stop(step) and step > start:  # one step at least: requeued runs always progress
                stopped_by = signal.Signals(flag.signum).name
                logger.write(f"{stopped_by} received: saving a checkpoint at step {step} and exiting")
                break
            t0 = time.perf_counter()
            batch = sharding.shard_batch(model_inputs(next(data_iter), modalities), s.mesh)
            t_data = time.perf_counter() - t0
            state, metrics = s.step_fn(state, batch)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            dt = time.perf_counter() - t0
            if not math.isfinite(metrics["loss"]):
                good = ckpt.latest_step()
                raise NonFiniteLossError(
                    f"non-finite loss ({metrics['loss']}) at step {step + 1} of run {out}; stopped without saving "
                    f"it. The last good checkpoint is "
                    + (f"step {good} in {ckpt.directory}" if good is not None else "none (no checkpoint yet)")
                )
            step += 1
            losses[step] = metrics["loss"]
            metrics.update(
                lr=float(s.schedule(step - 1)),
                samples_per_s=tr.batch_size / dt,
                step_time_s=dt,
                data_wait_s=t_data,
                data_wait_frac=t_data / dt,
            )
            logger.update(metrics)
            if step % tr.log_every == 0 or step == end:
                logger.log(step)
            if ckpt.save(step, state, data_iter=data_iter, meta={"step": step, "layout": layout}):
                saved_at = step
        if step != saved_at:
            t_save = time.perf_counter()
            ckpt.save(step, state, data_iter=data_iter, meta={"step": step, "layout": layout}, force=True)
            ckpt.wait()
            logger.write(f"saved the checkpoint of step {step} in {time.perf_counter() - t_save:.2f} s")
        ckpt.wait()
        if stopped_by == "completed" and end < tr.steps:
            stopped_by = "stop_after"
        encoder_dir = None
        if stopped_by == "completed" and tr.export_encoder:
            model = _replicated_model(s, state)
            if primary:
                encoder_dir = export_encoder(model, out / "encoder", cfg.model)
                logger.write(f"exported encoder + fusion weights to {encoder_dir}")
    finally:
        logger.close()
        ckpt.close()
        close = getattr(data_iter, "close", None)
        if close is not None:
            close()
        # On CPU the batch's JAX arrays alias Grain's shared memory: drop them, then let Grain unlink it all.
        batch = None
        processes.release_shared_memory()
    return TrainResult(out, start, step, losses, stopped_by, encoder_dir, time.perf_counter() - t_start, state)


def main(argv: list[str] | None = None) -> int:
    """The CLI; exits 0 when the run is complete, EXIT_STOPPED_EARLY after a signal stopped it with a checkpoint."""
    # SIGTERM from the start: one during start-up (data synthesis, compiling) is kept, not fatal; Ctrl-C still
    # aborts the start-up and saves once training runs.
    flag = StopFlag().install((signal.SIGTERM,))
    parser = config.add_config_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    cfg = config.load_from_args(PretrainConfig, args)
    try:
        result = train(cfg, stop_flag=flag)
    except NonFiniteLossError as e:
        print(f"error: {e}")
        return 1
    if jax.process_index() == 0:
        first = [result.losses[k] for k in sorted(result.losses)[:5]]
        last = [result.losses[k] for k in sorted(result.losses)[-5:]]
        summary = f"{result.stopped_by} at step {result.step} in {result.wall_s:.1f} s"
        if first:
            summary += f"; loss {np.mean(first):.4f} (first steps) -> {np.mean(last):.4f} (last steps)"
        print(f"{summary}; run dir {result.run_dir}")
    if result.stopped_by not in ("completed", "stop_after") and result.step < cfg.training.steps:
        return EXIT_STOPPED_EARLY
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
