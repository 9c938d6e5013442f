"""PPO runs: `python -m src.training.rl_agent --config configs/rl_racecar.toml [--eval] [--no-resume]`.

A run lives in `runs/<name>/` (Contract 3): the resolved `config.toml`, Orbax checkpoints in `ckpt/` (the whole
engine carry, so a resumed JAX-engine run continues exactly; host-engine runs restart their episodes),
`metrics.jsonl` + TensorBoard events (episodic return, lap progress, laps, collision rate, env steps/s, losses,
approximate KL, clip fraction, entropy), periodic deterministic evaluations, `learning_curve.png` and, for the
Raceformer agent, `encoder.json` (the imported encoder's path and sha256: resuming on another encoder is an error).
`--eval` restores the latest checkpoint, drives `eval.episodes` deterministic episodes (from
`eval.start_positions` starts spread around the track), prints the mean and spread of return, lap time and
clean laps, and writes `eval.gif` of the lap from the start line (top-down: walls, the car's trail and pose).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from src import config, processes
from src.config import RLConfig
from src.contract import ContractError
from src.envs import gymnax_adapter, observations, wrappers
from src.envs.racecar import env as racecar
from src.envs.racecar.params import make_params
from src.envs.surfaces import SurfaceConfig
from src.envs.tracks.registry import get_track
from src.training import ppo, run_dir
from src.training.agent import (
    FROZEN_PREFIXES,
    UNUSED_PREFIXES,
    build_agent,
    check_pretrained,
    load_pretrained,
    normalized_modalities,
)
from src.training.checkpoint import Checkpointer, check_encoder_record
from src.training.logging import MetricLogger

RACING_INFO = ("total_progress", "lap", "wall_collision")


# --------------------------------------------------------------------------------------------- envs


@dataclasses.dataclass
class EnvBundle:
    """What the trainer needs from an env kind: the engine's env, an eval runner and the action size."""

    action_dim: int
    obs_example: Any  # one agent observation, no batch axis
    make_engine: Callable[[ppo.Learner], Any]
    evaluate: Callable[[ppo.Learner, ppo.TrainState, int], dict[str, np.ndarray]]
    control_dt: float = 0.0  # seconds per env step (0: not a racing env)
    track: Any = None


def _vector_env(cfg: RLConfig, num_envs: int, seed_offset: int = 0) -> Any:
    kwargs: dict[str, Any] = {}
    if cfg.env.max_episode_steps:
        kwargs["max_episode_steps"] = cfg.env.max_episode_steps
    if cfg.env.kind == "bullet":
        e = cfg.env
        if e.signed_progress or e.reset_mode != "grid" or e.surfaces or e.terrain_cost_weight:
            raise config.ConfigError(
                "env.signed_progress / env.reset_mode / env.surfaces / env.terrain_cost_weight are options of the "
                "jax_racecar env only"
            )
        env_id = "raceformer/BulletRace-v0"  # registered by importing src.envs
        kwargs.update(
            lidar_rays=e.lidar_rays,
            camera=e.camera,
            time_limit=e.time_limit,
            collision_reward=e.collision_reward,
            terminate_on_collision=e.terminate_on_collision,
        )
        if e.track:
            kwargs["track"] = e.track
    else:
        env_id = cfg.env.id
    env = gymnasium.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gymnasium.vector.AutoresetMode.SAME_STEP},
        **kwargs,
    )
    if cfg.env.kind == "bullet":
        # Contract-1 samples (final observations included) on the BEV grid of `[model.bev]`, which a
        # fine-tuning run has checked against its encoder's; flat [motor, steering] actions
        return wrappers.ContractObsVectorWrapper(env, cfg.model.modalities, cfg.model.bev)
    return env


def _agent_input(sample: dict) -> dict:
    """A Contract-1 sample as the agent takes it: the modalities and their valid flags, no timestamp."""
    return {k: v for k, v in sample.items() if k != "timestamp"}


def host_bundle(cfg: RLConfig) -> EnvBundle:
    """gymnasium (array observations, MLP agent) or our PyBullet env (Contract-1 observations)."""
    probe = _vector_env(cfg, 1)
    if cfg.env.kind == "bullet":
        obs_fn, action_fn = _agent_input, (lambda a: a)  # the wrapper maps observations and actions
        action_dim, info_keys = 2, RACING_INFO
        dt = float(probe.unwrapped.get_attr("sim_config")[0].control_dt)
        track = probe.unwrapped.get_attr("track")[0]
    else:
        obs_fn, action_fn = (lambda o: np.asarray(o, np.float32)), (lambda a: a)
        action_dim, info_keys, dt, track = int(np.prod(probe.single_action_space.shape)), (), 0.0, None
    obs0, _ = probe.reset(seed=0)
    example = jax.tree.map(lambda x: np.asarray(x)[0], obs_fn(obs0))
    probe.close()

    def make_engine(learner: ppo.Learner) -> ppo.HostEngine:
        env = _vector_env(cfg, cfg.env.num_envs)
        return ppo.HostEngine(learner, env, obs_fn, info_keys, action_fn)

    def evaluate(learner: ppo.Learner, state: ppo.TrainState, episodes: int) -> dict[str, np.ndarray]:
        env = _vector_env(cfg, episodes)
        try:
            return host_eval_rollout(
                learner, state, env, obs_fn, action_fn, cfg.eval.max_steps, cfg.run.seed + 10_000
            )
        finally:
            env.close()

    return EnvBundle(action_dim, example, make_engine, evaluate, dt, track)


def host_eval_rollout(
    learner: ppo.Learner,
    state: ppo.TrainState,
    env: Any,
    obs_fn: Callable,
    action_fn: Callable,
    max_steps: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Deterministic episodes on a vector env, recorded time-major [T, E] up to every env's first episode end."""
    act = jax.jit(learner.act_deterministic)
    obs, _ = env.reset(seed=seed)
    n = env.num_envs
    ended = np.zeros(n, bool)
    rec: dict[str, list] = {"reward": [], "done": [], "pose": [], **{k: [] for k in RACING_INFO}}
    for _ in range(max_steps):
        action = np.asarray(act(state, obs_fn(obs)))
        obs, reward, terminated, truncated, info = env.step(action_fn(action))
        done = np.logical_or(terminated, truncated)
        rec["reward"].append(np.asarray(reward, np.float64))
        rec["done"].append(done)
        for k in RACING_INFO:
            rec[k].append(ppo.info_at_end(info, k, done))
        pose = info.get("pose")
        rec["pose"].append(
            np.asarray(pose, np.float64)[:, [0, 1, 5]] if pose is not None else np.full((n, 3), np.nan)
        )
        ended |= done
        if ended.all():
            break
    return {k: np.stack(v) for k, v in rec.items()}


def env_settings(cfg: RLConfig) -> dict[str, Any]:
    """The `make_params` settings of a run's env (besides its track), shared with the recorder."""
    e = cfg.env
    return {
        "lidar_rays": e.lidar_rays,
        "camera": e.camera,
        "time_limit": e.time_limit,
        "signed_progress": e.signed_progress,
        "collision_reward": e.collision_reward,
        "terminate_on_collision": e.terminate_on_collision,
        "reset_mode": e.reset_mode,
        "terrain": (
            SurfaceConfig(seed=e.surface_seed, offroad=e.surface_offroad, road_patches=e.surface_patches)
            if e.surfaces
            else None
        ),
    }


def contract_obs_fn(cfg: RLConfig, params: Any) -> Callable[[dict], dict]:
    """The jit-able map of a jax_racecar observation to the agent's Contract-1 input (radar/IR zeros, invalid;
    the lidar BEV on the grid of `[model.bev]`, which a fine-tuning run has checked against its encoder's)."""
    spec = observations.ScanSpec(params.lidar_rays, params.lidar_fov, params.lidar_range)

    def obs_fn(env_obs: dict) -> dict:
        sample, valid = observations.contract_obs_jax(env_obs, cfg.model.modalities, cfg.model.bev, spec)
        sample = {k: v for k, v in sample.items() if k != "timestamp"}
        return {**sample, "valid": valid}

    return obs_fn


def racing_env(cfg: RLConfig) -> tuple[ppo.JaxEnv, Any]:
    """The pure-JAX racing env as the engine sees it: functional reset/step bound to its params, observations
    mapped to Contract 1 inside jit."""
    params = make_params(cfg.env.track or "default", **env_settings(cfg))
    obs_fn = contract_obs_fn(cfg, params)
    step = functools.partial(racecar.step, params=params)
    if cfg.env.terrain_cost_weight:
        step = terrain_cost_step(cfg, params)
    env = ppo.JaxEnv(
        reset=lambda key: racecar.reset(key, params),
        step=step,
        obs_fn=obs_fn,
        episode_info=RACING_INFO,
    )
    return env, params


def terrain_cost_step(cfg: RLConfig, params: Any) -> Callable:
    """`step(key, state, action)` whose reward adds -terrain_cost_weight * the learned cost (`env.terrain_cost_run`)
    of the patch under the car in its own top-down ground image at the step's end (never the true surface)."""
    from src.training.terrain import ground_cost_fn

    if params.terrain is None or not cfg.env.terrain_cost_run:
        raise config.ConfigError("env.terrain_cost_weight needs env.surfaces = true and env.terrain_cost_run")
    cost_of = ground_cost_fn(cfg.env.terrain_cost_run, params.terrain)
    weight = cfg.env.terrain_cost_weight

    def step(key: jax.Array, state: Any, action: jax.Array):
        obs, state, reward, terminated, truncated, info = racecar.step(key, state, action, params)
        cost = cost_of(info["pose"][jnp.array([0, 1, 5])])
        return obs, state, reward - weight * cost, terminated, truncated, {**info, "terrain_cost": cost}

    return step


def eval_starts(cfg: RLConfig, episodes: int) -> np.ndarray:
    """Lap fraction at which each evaluation episode starts: episode e at (e % K) / K, K = eval.start_positions,
    so episode 0 starts on the start line and K starts are spread evenly around the track."""
    k = cfg.eval.start_positions
    if k < 1 or episodes < k:
        raise config.ConfigError(
            f"eval.start_positions={k} must be at least 1 and at most eval.episodes={episodes} "
            "(every start position is driven at least once)"
        )
    return (np.arange(episodes) % k) / k


def jax_bundle(cfg: RLConfig) -> EnvBundle:
    """The pure-JAX racing env: jitted engine and a jitted, vmapped evaluation rollout whose episodes start
    from `eval.start_positions` poses spread evenly around the track (`eval_starts`)."""
    env, params = racing_env(cfg)
    example = jax.jit(lambda k: env.obs_fn(env.reset(k)[0]))(jax.random.PRNGKey(0))
    track = get_track(cfg.env.track or "default")
    eval_starts(cfg, cfg.eval.episodes)  # a bad eval.start_positions is an error before training starts

    def make_engine(learner: ppo.Learner) -> ppo.JaxEngine:
        return ppo.JaxEngine(learner, env, cfg.env.num_envs)

    def reset_for(episodes: int) -> Callable[[jax.Array], tuple[Any, Any]]:
        starts = jnp.asarray(eval_starts(cfg, episodes), jnp.float32)
        return lambda keys: jax.vmap(lambda k, p: racecar.reset_at(k, params, p))(keys, starts)

    rollout = jitted_eval(cfg, env, reset_for)

    def evaluate(learner: ppo.Learner, state: ppo.TrainState, episodes: int) -> dict[str, np.ndarray]:
        return {**rollout(learner, state, episodes), "start": eval_starts(cfg, episodes)}

    return EnvBundle(2, example, make_engine, evaluate, float(params.control_dt), track)


def gymnax_bundle(cfg: RLConfig) -> EnvBundle:
    """A gymnax env (e.g. Pendulum-v1, array observations, MLP agent) on the jitted engine."""
    genv = gymnax_adapter.make(cfg.env.id, cfg.env.max_episode_steps)
    env = ppo.JaxEnv(reset=genv.reset, step=genv.step)

    def make_engine(learner: ppo.Learner) -> ppo.JaxEngine:
        return ppo.JaxEngine(learner, env, cfg.env.num_envs)

    return EnvBundle(
        genv.action_dim, jnp.zeros(genv.obs_shape, jnp.float32), make_engine, jitted_eval(cfg, env)
    )


def jitted_eval(
    cfg: RLConfig, env: ppo.JaxEnv, reset_for: Callable[[int], Callable] | None = None
) -> Callable[[ppo.Learner, ppo.TrainState, int], dict[str, np.ndarray]]:
    """`evaluate(learner, state, episodes)`: `jax_eval_rollout` compiled once per learner and episode count;
    `reset_for(episodes)` gives the rollout's batched reset (default `env.reset` per episode)."""
    compiled: dict[tuple[int, int], Callable] = {}

    def evaluate(learner: ppo.Learner, state: ppo.TrainState, episodes: int) -> dict[str, np.ndarray]:
        key = (id(learner), episodes)
        if key not in compiled:
            reset = reset_for(episodes) if reset_for is not None else None
            compiled[key] = jax.jit(
                lambda s, k: jax_eval_rollout(learner, env, s, k, episodes, cfg.eval.max_steps, reset)
            )
        return jax.tree.map(np.asarray, compiled[key](state, jax.random.PRNGKey(cfg.run.seed + 10_000)))

    return evaluate


def jax_eval_rollout(
    learner: ppo.Learner,
    env: ppo.JaxEnv,
    state: ppo.TrainState,
    key: jax.Array,
    episodes: int,
    max_steps: int,
    reset: Callable[[jax.Array], tuple[Any, Any]] | None = None,
) -> dict[str, jax.Array]:
    """Deterministic episodes without auto-reset, recorded [T, E] (steps after an episode's end are ignored).
    `reset` maps the [E] episode keys to the initial (obs, state) batch (default: `env.reset` per episode)."""
    keys = jax.random.split(key, episodes + 1)
    obs, env_state = (reset or jax.vmap(env.reset))(keys[1:])

    def step(carry: tuple, k: jax.Array) -> tuple[tuple, dict]:
        obs, env_state = carry
        action = learner.act_deterministic(state, jax.vmap(env.obs_fn)(obs))
        obs, env_state, reward, terminated, truncated, info = jax.vmap(env.step)(
            jax.random.split(k, episodes), env_state, action
        )
        rec = {"reward": reward, "done": terminated | truncated}
        if isinstance(obs, dict) and "pose" in obs:
            rec["pose"] = obs["pose"][:, jnp.array([0, 1, 5])]
        rec.update({name: info[name] for name in env.episode_info})
        return (obs, env_state), rec

    _, rec = jax.lax.scan(step, (obs, env_state), jax.random.split(keys[0], max_steps))
    return rec


def episode_figures(rec: dict[str, np.ndarray], control_dt: float) -> dict[str, np.ndarray]:
    """Per-episode figures [E] from a [T, E] record: return, and for racing laps, progress, collision, clean
    lap and lap time (NaN where no lap was completed)."""
    done = np.asarray(rec["done"], bool)
    t_len, n = done.shape
    ended = done.any(0)
    last = np.where(ended, done.argmax(0), t_len - 1)  # index of each episode's final step
    live = np.arange(t_len)[:, None] <= last[None, :]
    out = {"return": (np.asarray(rec["reward"], np.float64) * live).sum(0)}
    if control_dt > 0:
        lap = np.asarray(rec["lap"], np.float64)
        laps_done = np.where(live, lap - 1.0, 0.0).max(0)
        first_lap = np.where(live & (lap >= 2.0), np.arange(t_len)[:, None], t_len).min(0)
        collided = (np.asarray(rec["wall_collision"], bool) & live).any(0)
        out.update(
            {
                "laps": laps_done,
                # laps + lap fraction at the episode's end (a start just behind the line counts from 0)
                "progress": np.maximum(
                    np.asarray(rec["total_progress"], np.float64)[last, np.arange(n)], 0.0
                ),
                "collided": collided.astype(np.float64),
                "clean": ((laps_done >= 1.0) & ~collided).astype(np.float64),
                "lap_time": np.where(laps_done >= 1.0, (first_lap + 1) * control_dt, np.nan),
            }
        )
    return out


def _spread(name: str, values: np.ndarray) -> dict[str, float]:
    """Mean, std, min and max of `values` (NaNs left out; all NaN if none is finite)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    stats = (v.mean(), v.std(), v.min(), v.max()) if v.size else (np.nan,) * 4
    return dict(zip((name, f"{name}_std", f"{name}_min", f"{name}_max"), map(float, stats), strict=True))


def summarize_eval(rec: dict[str, np.ndarray], control_dt: float) -> dict[str, Any]:
    """Evaluation figures from a [T, E] record: mean and spread (std, min, max) of the return over episodes;
    for racing also of the lap time (over the episodes that completed a lap) and of the clean-lap fraction
    over start positions (`rec["start"]`, each episode's start lap fraction, where given), and the mean laps,
    progress and collision rate."""
    per = episode_figures(rec, control_dt)
    n = per["return"].shape[0]
    out: dict[str, Any] = {"episodes": n, **_spread("return", per["return"])}
    if control_dt > 0:
        starts = np.asarray(rec.get("start", np.zeros(n)), np.float64)
        groups = np.unique(starts)
        clean = np.array([per["clean"][starts == g].mean() for g in groups])
        out.update(
            {
                "start_positions": len(groups),
                "laps": float(per["laps"].mean()),
                "progress": float(per["progress"].mean()),
                "collision_rate": float(per["collided"].mean()),
                **_spread("lap_completed_clean", clean),
                **_spread("lap_time", per["lap_time"]),
            }
        )
    return out


def make_bundle(cfg: RLConfig) -> EnvBundle:
    if cfg.env.kind != "jax_racecar" and cfg.eval.start_positions != 1:
        raise config.ConfigError(
            f"eval.start_positions={cfg.eval.start_positions}: start positions around a track are an option of "
            f"env.kind = 'jax_racecar' only (this run has {cfg.env.kind!r}); set it to 1"
        )
    if cfg.env.kind == "jax_racecar":
        return jax_bundle(cfg)
    return gymnax_bundle(cfg) if cfg.env.kind == "gymnax" else host_bundle(cfg)


# --------------------------------------------------------------------------------------------- setup


def num_iterations(cfg: RLConfig) -> int:
    per_iteration = cfg.ppo.num_steps * cfg.env.num_envs
    n = cfg.ppo.total_env_steps // per_iteration
    if n < 1:
        raise config.ConfigError(
            f"ppo.total_env_steps={cfg.ppo.total_env_steps} is less than one iteration "
            f"(ppo.num_steps * env.num_envs = {per_iteration})"
        )
    if (cfg.ppo.num_steps * cfg.env.num_envs) % cfg.ppo.num_minibatches:
        raise config.ConfigError(
            f"ppo.num_minibatches={cfg.ppo.num_minibatches} does not divide the batch of {per_iteration}"
        )
    return n


@dataclasses.dataclass
class Setup:
    cfg: RLConfig
    bundle: EnvBundle
    learner: ppo.Learner
    params: Any
    iterations: int


def setup(cfg: RLConfig, bundle: EnvBundle | None = None) -> Setup:
    """Env, agent (optionally with pretrained, frozen encoders) and learner for `cfg`."""
    if cfg.finetune.pretrained_ckpt:
        check_pretrained(cfg)  # before the env: its inputs must follow the encoder's contract
    bundle = bundle or make_bundle(cfg)
    iterations = num_iterations(cfg)
    agent = build_agent(cfg, bundle.obs_example, bundle.action_dim, rngs=nnx.Rngs(cfg.run.seed))
    frozen = UNUSED_PREFIXES if cfg.ppo.agent == "raceformer" else ()
    if cfg.finetune.pretrained_ckpt:
        load_pretrained(agent, cfg.finetune.pretrained_ckpt, cfg.model)
    if cfg.finetune.freeze_encoders:
        if cfg.ppo.agent != "raceformer":
            raise config.ConfigError("finetune.freeze_encoders = true needs ppo.agent = 'raceformer'")
        frozen = frozen + FROZEN_PREFIXES
    updates = iterations * cfg.ppo.update_epochs * cfg.ppo.num_minibatches
    learner, params = ppo.Learner.create(agent, cfg.ppo, updates, frozen, normalized_modalities(cfg))
    return Setup(cfg, bundle, learner, params, iterations)


# --------------------------------------------------------------------------------------------- training


@dataclasses.dataclass
class TrainResult:
    learner: ppo.Learner
    state: ppo.TrainState
    carry: Any  # the engine carry (Runner for the JAX engine, TrainState for the host engine)
    run_dir: Path
    history: list[dict[str, float]]
    wall_s: float


def _state_of(carry: Any) -> ppo.TrainState:
    return carry.train if isinstance(carry, ppo.Runner) else carry


def train(
    cfg: RLConfig,
    *,
    resume: bool | None = None,
    stop_after: int | None = None,
    bundle: EnvBundle | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or continue) the run `cfg` names; `stop_after` ends early after that many iterations in total.

    `resume` (default `run.resume`) continues from the latest checkpoint; `bundle` replaces the env that
    `cfg.env` names (tests bring their own small JAX envs).
    """
    t0 = time.perf_counter()
    processes.prepare_process()
    s = setup(cfg, bundle)
    rd = run_dir.prepare(cfg, resume=resume)
    out = rd.path
    engine = s.bundle.make_engine(s.learner)
    state = s.learner.init_state(s.params, s.bundle.obs_example, jax.random.PRNGKey(cfg.run.seed))
    jax_engine = isinstance(engine, ppo.JaxEngine)
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
                    s.bundle.evaluate(s.learner, state, cfg.eval.episodes), s.bundle.control_dt
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


# --------------------------------------------------------------------------------------------- plots and GIF


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_learning_curve(metrics_path: Path, png: Path, title: str) -> Path | None:
    """Training episodic return and deterministic evaluation return against env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)

    def series(key: str) -> list[tuple[float, float]]:
        return [(r["env_steps"], r[key]) for r in rows if r.get(key) is not None and "env_steps" in r]

    train, evals = series("episode/return"), series("eval/return")
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="training episodes (stochastic)", alpha=0.7)
    if evals:
        ax.plot(*zip(*evals), "o-", label="evaluation (policy mean)")
    ax.set_xlabel("env steps")
    ax.set_ylabel("episodic return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def write_gif(path: Path, walls: np.ndarray, poses: np.ndarray, frame_every: int, size: int = 320) -> Path:
    """Top-down GIF: wall segments [S, 2, 2] (m), the car's trail and a triangle at its pose (x, y, yaw) [T, 3]."""
    from PIL import Image, ImageDraw

    pts = np.concatenate([walls.reshape(-1, 2), poses[:, :2]])
    lo, hi = pts.min(0) - 1.0, pts.max(0) + 1.0
    scale = (size - 1) / float((hi - lo).max())

    def px(xy: np.ndarray) -> list[tuple[float, float]]:
        p = (np.asarray(xy).reshape(-1, 2) - lo) * scale
        return [(float(a), float(size - 1 - b)) for a, b in p]

    base = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(base)
    for seg in walls:
        draw.line(px(seg), fill=(40, 40, 40), width=2)
    frames = []
    car = np.array([[0.5, 0.0], [-0.3, 0.25], [-0.3, -0.25]])
    for t in range(0, len(poses), max(frame_every, 1)):
        im = base.copy()
        d = ImageDraw.Draw(im)
        if t > 0:
            d.line(px(poses[: t + 1, :2]), fill=(30, 120, 220), width=2)
        x, y, yaw = poses[t]
        rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
        d.polygon(px(car @ rot.T + np.array([x, y])), fill=(220, 40, 40))
        frames.append(im)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=60, loop=0)
    return path


# --------------------------------------------------------------------------------------------- eval mode


def restore_state(s: Setup, step: int | None = None) -> tuple[ppo.TrainState, int]:
    """The train state saved at `step` (default latest) in the run `s.cfg` names, and that step."""
    out = run_dir.run_path(s.cfg)
    engine = s.bundle.make_engine(s.learner)
    state = s.learner.init_state(s.params, s.bundle.obs_example, jax.random.PRNGKey(s.cfg.run.seed))
    template: Any = (
        engine.init(state, jax.random.PRNGKey(s.cfg.run.seed + 1))
        if isinstance(engine, ppo.JaxEngine)
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
    rec = s.bundle.evaluate(s.learner, state, cfg.eval.episodes)
    figures = summarize_eval(rec, s.bundle.control_dt)
    figures["checkpoint"] = int(step)
    per = episode_figures(rec, s.bundle.control_dt)
    if "start" in rec:
        per["start"] = np.asarray(rec["start"], np.float64)
    figures["per_episode"] = [
        {k: (float(v[e]) if np.isfinite(v[e]) else None) for k, v in per.items()}
        for e in range(len(per["return"]))
    ]
    if (cfg.eval.gif if gif is None else gif) and s.bundle.track is not None:
        done = np.asarray(rec["done"], bool)[:, 0]
        last = int(done.argmax()) if done.any() else len(done) - 1
        walls = np.asarray(s.bundle.track.walls(), np.float64)
        figures["gif"] = str(
            write_gif(
                out / "eval.gif", walls, np.asarray(rec["pose"])[: last + 1, 0], cfg.eval.gif_frame_every
            )
        )
    (out / "eval.json").write_text(json.dumps(figures, indent=2))
    return figures


def evaluate_gymnasium(
    cfg: RLConfig, learner: ppo.Learner, state: ppo.TrainState, episodes: int
) -> dict[str, Any]:
    """Deterministic figures of a trained state on the configured env (the Pendulum validation)."""
    return summarize_eval(make_bundle(cfg).evaluate(learner, state, episodes), 0.0)


# --------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    config.add_config_args(parser)
    parser.add_argument(
        "--eval", action="store_true", help="evaluate the latest checkpoint instead of training"
    )
    parser.add_argument(
        "--step", type=int, default=None, help="with --eval: the checkpoint step (default latest)"
    )
    parser.add_argument(
        "--no-resume", action="store_true", help="start over (= --set run.resume=false): an existing run is moved aside"
    )
    args = parser.parse_args(argv)
    cfg = config.load_from_args(RLConfig, args)
    if args.eval:
        figures = evaluate_checkpoint(cfg, args.step)
        print(json.dumps(figures, indent=2))
        return 0
    result = train(cfg, resume=False if args.no_resume else None)
    returns = [h["episode/return"] for h in result.history if "episode/return" in h]
    evals = [h for h in result.history if "eval/return" in h]
    print(
        f"done: {len(result.history)} iterations in {result.wall_s:.0f} s; "
        f"last episodic return {returns[-1] if returns else float('nan'):.2f}; "
        f"last eval {({k[5:]: round(v, 3) for k, v in evals[-1].items() if k.startswith('eval/')}) if evals else '-'}; "
        f"run dir {result.run_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
