"""The pretraining loop: restore or start over, step, log, checkpoint, stop cleanly on SIGTERM/SIGINT (all processes
agree on the step), export the encoder at the end."""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from src.config import PretrainConfig
from src.infra import processes, run_dir, sharding
from src.infra.checkpoint import Checkpointer, export_encoder
from src.infra.logging import MetricLogger
from src.models.raceformer import Raceformer
from src.pretraining.data import DataFn, build_data
from src.pretraining.step import Setup, model_inputs, setup


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/Inf; the run stopped without saving the bad state."""


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
