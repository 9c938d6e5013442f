"""gymnax environments (Lange 2022, JAX ports of the gym classics) as functional envs for the jitted PPO engine.

    env = make("Pendulum-v1")
    obs, state = env.reset(key)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action)

The adapter calls gymnax's `reset_env` / `step_env`, not `reset` / `step`: those auto-reset inside the env,
while our engine resets ended episodes itself and needs the final observation of each one. gymnax reports a
single `done`; an episode that ends when its step counter reaches `max_steps_in_episode` is a time limit, so it
is reported as `truncated` (PPO then bootstraps from the final state's value), any other end as `terminated`.
Only continuous (Box) action spaces fit the Gaussian policy. gymnax is a test dependency (the `dev` group).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class GymnaxEnv:
    """One gymnax env bound to its params: single-env `reset(key)` / `step(key, state, action)`."""

    env_id: str
    reset: Callable[[jax.Array], tuple[jax.Array, Any]]
    step: Callable[[jax.Array, Any, jax.Array], tuple]
    obs_shape: tuple[int, ...]
    action_dim: int
    action_low: float
    action_high: float


def make(env_id: str, max_episode_steps: int = 0) -> GymnaxEnv:
    """The registered gymnax env `env_id` (e.g. "Pendulum-v1"); `max_episode_steps` > 0 replaces its time limit."""
    try:
        import gymnax
        from gymnax.environments import spaces
    except ImportError as err:  # a dev dependency: `uv sync` installs it, `uv sync --no-dev` does not
        raise ImportError(
            f"env.kind = 'gymnax' needs the gymnax package (uv sync --group dev): {err}"
        ) from err
    if env_id not in gymnax.registered_envs:
        raise ValueError(f"env.id = {env_id!r} is not a gymnax env; registered: {gymnax.registered_envs}")
    env, params = gymnax.make(env_id)
    if max_episode_steps:
        params = params.replace(max_steps_in_episode=int(max_episode_steps))
    space = env.action_space(params)
    if not isinstance(space, spaces.Box):
        raise ValueError(
            f"env.id = {env_id!r}: action space {type(space).__name__} is not continuous (Box); the PPO "
            "policy here is a Gaussian over continuous actions"
        )
    action_shape = tuple(space.shape) or (1,)

    def strong(state: Any) -> Any:
        """gymnax states hold weakly typed scalars (`time=0`) that a step makes strong; a carry whose types
        change after one iteration would compile the engine twice."""
        return jax.tree.map(lambda x: jnp.asarray(x, jnp.asarray(x).dtype), state)

    def reset(key: jax.Array) -> tuple[jax.Array, Any]:
        obs, state = env.reset_env(key, params)
        return obs.astype(jnp.float32), strong(state)

    def step(key: jax.Array, state: Any, action: jax.Array) -> tuple:
        action = jnp.reshape(action, space.shape)
        obs, state, reward, done, info = env.step_env(key, state, action, params)
        time_limit = state.time >= params.max_steps_in_episode
        truncated = done & time_limit
        terminated = done & ~time_limit
        return obs.astype(jnp.float32), strong(state), reward.astype(jnp.float32), terminated, truncated, info

    obs_shape = tuple(env.observation_space(params).shape)
    low, high = float(jnp.min(space.low)), float(jnp.max(space.high))
    return GymnaxEnv(env_id, reset, step, obs_shape, int(jnp.prod(jnp.asarray(action_shape))), low, high)
