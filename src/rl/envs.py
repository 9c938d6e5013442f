"""The envs a PPO run trains on, as the trainer needs them (`TrainingEnv`): the pure-JAX racing env with its
observations mapped to the sensor contract inside jit, a gymnax env, or a `gymnasium.vector` env (PyBullet
racing, gymnasium's classics), each with its engine, evaluation rollout and action size."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from src import config
from src.config import RLConfig
from src.envs import gymnax_adapter, observations, wrappers
from src.envs.racecar import env as racecar
from src.envs.racecar.params import make_params
from src.envs.surfaces import SurfaceConfig
from src.envs.tracks.registry import get_track
from src.rl.evaluate import RACING_INFO, eval_starts, host_eval_rollout, jitted_eval
from src.rl.ppo import Learner, TrainState
from src.rl.train_host import HostEngine
from src.rl.train_jax import JaxEngine, JaxEnv
from src.terrain.cost import ground_cost_fn


@dataclasses.dataclass
class TrainingEnv:
    """What the trainer needs from an env kind: the engine's env, an eval runner and the action size."""

    action_dim: int
    obs_example: Any  # one agent observation, no batch axis
    make_engine: Callable[[Learner], Any]
    evaluate: Callable[[Learner, TrainState, int], dict[str, np.ndarray]]
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


def host_training_env(cfg: RLConfig) -> TrainingEnv:
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

    def make_engine(learner: Learner) -> HostEngine:
        env = _vector_env(cfg, cfg.env.num_envs)
        return HostEngine(learner, env, obs_fn, info_keys, action_fn)

    def evaluate(learner: Learner, state: TrainState, episodes: int) -> dict[str, np.ndarray]:
        env = _vector_env(cfg, episodes)
        try:
            return host_eval_rollout(
                learner, state, env, obs_fn, action_fn, cfg.eval.max_steps, cfg.run.seed + 10_000
            )
        finally:
            env.close()

    return TrainingEnv(action_dim, example, make_engine, evaluate, dt, track)


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


def racing_env(cfg: RLConfig) -> tuple[JaxEnv, Any]:
    """The pure-JAX racing env as the engine sees it: functional reset/step bound to its params, observations
    mapped to Contract 1 inside jit."""
    params = make_params(cfg.env.track or "default", **env_settings(cfg))
    obs_fn = contract_obs_fn(cfg, params)
    step = functools.partial(racecar.step, params=params)
    if cfg.env.terrain_cost_weight:
        step = terrain_cost_step(cfg, params)
    env = JaxEnv(
        reset=lambda key: racecar.reset(key, params),
        step=step,
        obs_fn=obs_fn,
        episode_info=RACING_INFO,
    )
    return env, params


def terrain_cost_step(cfg: RLConfig, params: Any) -> Callable:
    """`step(key, state, action)` whose reward adds -terrain_cost_weight * the learned cost (`env.terrain_cost_run`)
    of the patch under the car in its own top-down ground image at the step's end (never the true surface)."""
    if params.terrain is None or not cfg.env.terrain_cost_run:
        raise config.ConfigError("env.terrain_cost_weight needs env.surfaces = true and env.terrain_cost_run")
    cost_of = ground_cost_fn(cfg.env.terrain_cost_run, params.terrain)
    weight = cfg.env.terrain_cost_weight

    def step(key: jax.Array, state: Any, action: jax.Array):
        obs, state, reward, terminated, truncated, info = racecar.step(key, state, action, params)
        cost = cost_of(info["pose"][jnp.array([0, 1, 5])])
        return obs, state, reward - weight * cost, terminated, truncated, {**info, "terrain_cost": cost}

    return step


def racecar_training_env(cfg: RLConfig) -> TrainingEnv:
    """The pure-JAX racing env: jitted engine and a jitted, vmapped evaluation rollout whose episodes start
    from `eval.start_positions` poses spread evenly around the track (`eval_starts`)."""
    env, params = racing_env(cfg)
    example = jax.jit(lambda k: env.obs_fn(env.reset(k)[0]))(jax.random.PRNGKey(0))
    track = get_track(cfg.env.track or "default")
    eval_starts(cfg, cfg.eval.episodes)  # a bad eval.start_positions is an error before training starts

    def make_engine(learner: Learner) -> JaxEngine:
        return JaxEngine(learner, env, cfg.env.num_envs)

    def reset_for(episodes: int) -> Callable[[jax.Array], tuple[Any, Any]]:
        starts = jnp.asarray(eval_starts(cfg, episodes), jnp.float32)
        return lambda keys: jax.vmap(lambda k, p: racecar.reset_at(k, params, p))(keys, starts)

    rollout = jitted_eval(cfg, env, reset_for)

    def evaluate(learner: Learner, state: TrainState, episodes: int) -> dict[str, np.ndarray]:
        return {**rollout(learner, state, episodes), "start": eval_starts(cfg, episodes)}

    return TrainingEnv(2, example, make_engine, evaluate, float(params.control_dt), track)


def gymnax_training_env(cfg: RLConfig) -> TrainingEnv:
    """A gymnax env (e.g. Pendulum-v1, array observations, MLP agent) on the jitted engine."""
    genv = gymnax_adapter.make(cfg.env.id, cfg.env.max_episode_steps)
    env = JaxEnv(reset=genv.reset, step=genv.step)

    def make_engine(learner: Learner) -> JaxEngine:
        return JaxEngine(learner, env, cfg.env.num_envs)

    return TrainingEnv(
        genv.action_dim, jnp.zeros(genv.obs_shape, jnp.float32), make_engine, jitted_eval(cfg, env)
    )


def make_training_env(cfg: RLConfig) -> TrainingEnv:
    if cfg.env.kind != "jax_racecar" and cfg.eval.start_positions != 1:
        raise config.ConfigError(
            f"eval.start_positions={cfg.eval.start_positions}: start positions around a track are an option of "
            f"env.kind = 'jax_racecar' only (this run has {cfg.env.kind!r}); set it to 1"
        )
    if cfg.env.kind == "jax_racecar":
        return racecar_training_env(cfg)
    return gymnax_training_env(cfg) if cfg.env.kind == "gymnax" else host_training_env(cfg)
