"""A PPO run from its config: set-up (env, actor-critic, optional pretrained and frozen encoders, learner), the
checkpointed and logged training loop, restoring a run's state and policy, and evaluating a checkpoint.

A run lives in `runs/<name>/` (Contract 3); `src.training.rl_agent` is its command line.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from src import config
from src.config import RLConfig
from src.contract import ContractError
from src.infra import processes, run_dir
from src.infra.checkpoint import Checkpointer, check_encoder_record
from src.infra.logging import MetricLogger
from src.infra.plots import plot_learning_curve, write_gif
from src.models.actor_critic import (
    FROZEN_PREFIXES,
    UNUSED_PREFIXES,
    build_agent,
    check_pretrained,
    load_pretrained,
    normalized_modalities,
)
from src.rl.envs import TrainingEnv, make_training_env, racing_env
from src.rl.evaluate import episode_figures, summarize_eval
from src.rl.ppo import Learner, TrainState, num_iterations
from src.rl.train_jax import EngineCarry, JaxEngine


@dataclasses.dataclass
class Setup:
    cfg: RLConfig
    env: TrainingEnv
    learner: Learner
    params: Any
    iterations: int


def setup(cfg: RLConfig, env: TrainingEnv | None = None) -> Setup:
    """Env, agent (optionally with pretrained, frozen encoders) and learner for `cfg`."""
    if cfg.finetune.pretrained_ckpt:
        check_pretrained(cfg)  # before the env: its inputs must follow the encoder's contract
    env = env or make_training_env(cfg)
    iterations = num_iterations(cfg)
    agent = build_agent(cfg, env.obs_example, env.action_dim, rngs=nnx.Rngs(cfg.run.seed))
    frozen = UNUSED_PREFIXES if cfg.ppo.agent == "raceformer" else ()
    if cfg.finetune.pretrained_ckpt:
        load_pretrained(agent, cfg.finetune.pretrained_ckpt, cfg.model)
    if cfg.finetune.freeze_encoders:
        if cfg.ppo.agent != "raceformer":
            raise config.ConfigError("finetune.freeze_encoders = true needs ppo.agent = 'raceformer'")
        frozen = frozen + FROZEN_PREFIXES
    updates = iterations * cfg.ppo.update_epochs * cfg.ppo.num_minibatches
    learner, params = Learner.create(agent, cfg.ppo, updates, frozen, normalized_modalities(cfg))
    return Setup(cfg, env, learner, params, iterations)


@dataclasses.dataclass
class TrainResult:
    learner: Learner
    state: TrainState
    carry: Any  # the engine carry (EngineCarry for the JAX engine, TrainState for the host engine)
    run_dir: Path
    history: list[dict[str, float]]
    wall_s: float


def _state_of(carry: Any) -> TrainState:
    return carry.train if isinstance(carry, EngineCarry) else carry


def train(
    cfg: RLConfig,
    *,
    resume: bool | None = None,
    stop_after: int | None = None,
    env: TrainingEnv | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or continue) the run `cfg` names; `stop_after` ends early after that many iterations in total.

    `resume` (default `run.resume`) continues from the latest checkpoint; `env` replaces the env that
    `cfg.env` names (tests bring their own small JAX envs).
    """
    t0 = time.perf_counter()
    processes.prepare_process()
    s = setup(cfg, env)
    rd = run_dir.prepare(cfg, resume=resume)
    out = rd.path
    engine = s.env.make_engine(s.learner)
    state = s.learner.init_state(s.params, s.env.obs_example, jax.random.PRNGKey(cfg.run.seed))
    jax_engine = isinstance(engine, JaxEngine)
    carry: Any = engine.init(state, jax.random.PRNGKey(cfg.run.seed + 1)) if jax_engine else state
    ckpt = Checkpointer(rd.ckpt, save_every=max(cfg.ppo.checkpoint_every, 1), keep=cfg.ppo.keep_checkpoints)
    start = 0
    latest = ckpt.latest_step() if rd.resumable else None
    if cfg.ppo.agent == "raceformer":
        try:
            check_encoder_record(out, cfg.finetune.pretrained_ckpt or None, resuming=latest is not None)
        except ContractError:
            ckpt.close()
            raise
    if latest is not None:
        carry, meta = ckpt.restore(latest, carry)
        carry = engine.shard(carry) if jax_engine else carry
        start = int(meta.get("iteration", latest))
    if not jax_engine:
        engine.reset(cfg.run.seed + start)
    end = s.iterations if stop_after is None else min(stop_after, s.iterations)
    # A log line aggregates its window of iterations: means, episode figures over every episode that ended in
    # it, the number of those episodes, and the env-step counter at its end.
    logger = MetricLogger(
        out, total_steps=s.iterations, progress=progress, initial_step=start, sums=("episodes",),
        latest=("env_steps",), weights={"episode/": "episodes"},
    )
    if latest is not None:
        logger.write(f"resumed {out} at iteration {start}")
    if rd.moved_aside is not None:
        logger.write(f"started over: the previous run in {out} was moved to {rd.moved_aside}")
    history: list[dict[str, float]] = []
    try:
        for it in range(start, end):
            carry, metrics = engine.run_iteration(carry)
            state = _state_of(carry)
            metrics["env_steps"] = float(state.env_steps)
            if cfg.eval.every and ((it + 1) % cfg.eval.every == 0 or it + 1 == s.iterations):
                figures = summarize_eval(
                    s.env.evaluate(s.learner, state, cfg.eval.episodes), s.env.control_dt
                )
                metrics.update({f"eval/{k}": float(v) for k, v in figures.items()})
            logger.update(metrics)
            if (it + 1) % cfg.ppo.log_every == 0 or it + 1 == end:
                logger.log(it + 1)
            history.append({"iteration": it + 1, **metrics})
            if cfg.ppo.checkpoint_every and (it + 1) % cfg.ppo.checkpoint_every == 0 or it + 1 == end:
                ckpt.save(
                    it + 1, carry, meta={"iteration": it + 1, "env_steps": int(state.env_steps)}, force=True
                )
            if "eval/return" in metrics:
                shown = {k[5:]: round(v, 3) for k, v in metrics.items() if k.startswith("eval/")}
                logger.write(f"iteration {it + 1} ({int(state.env_steps)} env steps): eval {shown}")
        ckpt.wait()
    finally:
        logger.close()
        ckpt.close()
        if not jax_engine:
            engine.close()
    wall = time.perf_counter() - t0
    plot_learning_curve(out / "metrics.jsonl", out / "learning_curve.png", cfg.run.name)
    return TrainResult(s.learner, _state_of(carry), carry, out, history, wall)


def restore_state(s: Setup, step: int | None = None) -> tuple[TrainState, int]:
    """The train state saved at `step` (default latest) in the run `s.cfg` names, and that step."""
    out = run_dir.run_path(s.cfg)
    engine = s.env.make_engine(s.learner)
    state = s.learner.init_state(s.params, s.env.obs_example, jax.random.PRNGKey(s.cfg.run.seed))
    template: Any = (
        engine.init(state, jax.random.PRNGKey(s.cfg.run.seed + 1))
        if isinstance(engine, JaxEngine)
        else state
    )
    ckpt = Checkpointer(out / "ckpt", save_every=1, keep=s.cfg.ppo.keep_checkpoints)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        ckpt.close()
        raise FileNotFoundError(f"{out / 'ckpt'}: no checkpoint in this run (train first)")
    restored, _ = ckpt.restore(step, template)
    ckpt.close()
    return _state_of(restored), int(step)


def load_policy(path: str | Path, step: int | None = None) -> tuple[Callable[[dict], jax.Array], RLConfig]:
    """A jax_racecar run's deterministic policy (the squashed mean) restored from `path` (`runs/<name>`).

    Returns (act, cfg): `act` maps ONE raw jax_racecar observation (no batch axis) to its [2] action and is
    jit/vmap-able; `cfg` is the run's config, whose `env_settings` and track the caller's env must use.
    """
    path = Path(path)
    toml = path / "config.toml"
    if not toml.is_file():
        raise FileNotFoundError(f"{path}: not a PPO run directory (no config.toml)")
    cfg = config.load(RLConfig, toml)
    if cfg.env.kind != "jax_racecar":
        raise config.ConfigError(f"{toml}: env.kind = {cfg.env.kind!r}; a policy to load needs 'jax_racecar'")
    if not (path / "ckpt").is_dir():
        raise FileNotFoundError(f"{path / 'ckpt'}: no checkpoint in this run (train first)")
    cfg = config.replace(cfg, run={"out_dir": str(path.parent), "name": path.name})
    s = setup(cfg)
    state, _ = restore_state(s, step)
    env, _ = racing_env(cfg)
    learner = s.learner

    def act(env_obs: dict) -> jax.Array:
        obs = jax.tree.map(lambda x: x[None], env.obs_fn(env_obs))
        return learner.act_deterministic(state, obs)[0]

    return act, cfg


def evaluate_checkpoint(cfg: RLConfig, step: int | None = None, gif: bool | None = None) -> dict[str, Any]:
    """Restore a run's checkpoint, drive `eval.episodes` deterministic episodes, report them (summary and
    one row per episode with its start) and write the GIF of the first episode (from the start line)."""
    s = setup(cfg)
    out = run_dir.run_path(cfg)
    state, step = restore_state(s, step)
    rec = s.env.evaluate(s.learner, state, cfg.eval.episodes)
    figures = summarize_eval(rec, s.env.control_dt)
    figures["checkpoint"] = int(step)
    per = episode_figures(rec, s.env.control_dt)
    if "start" in rec:
        per["start"] = np.asarray(rec["start"], np.float64)
    figures["per_episode"] = [
        {k: (float(v[e]) if np.isfinite(v[e]) else None) for k, v in per.items()}
        for e in range(len(per["return"]))
    ]
    if (cfg.eval.gif if gif is None else gif) and s.env.track is not None:
        done = np.asarray(rec["done"], bool)[:, 0]
        last = int(done.argmax()) if done.any() else len(done) - 1
        walls = np.asarray(s.env.track.walls(), np.float64)
        figures["gif"] = str(
            write_gif(
                out / "eval.gif", walls, np.asarray(rec["pose"])[: last + 1, 0], cfg.eval.gif_frame_every
            )
        )
    (out / "eval.json").write_text(json.dumps(figures, indent=2))
    return figures


def evaluate_gymnasium(
    cfg: RLConfig, learner: Learner, state: TrainState, episodes: int
) -> dict[str, Any]:
    """Deterministic figures of a trained state on the configured env (the Pendulum validation)."""
    return summarize_eval(make_training_env(cfg).evaluate(learner, state, episodes), 0.0)
