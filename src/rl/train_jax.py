"""The jitted PPO engine: rollout (`lax.scan` over time, `vmap` over envs) + GAE + update as ONE jitted
iteration, the env batch sharded over a device mesh on its env axis; seeds as a vmap axis (`SeedBatch`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from src.config import PPOConfig
from src.rl.episode_stats import EpisodeStats, summarize_episodes
from src.rl.ppo import Learner, TrainState


class JaxEnv(NamedTuple):
    """A single-env functional env (vmapped by the engine; auto-reset is the engine's job).

    reset(key) -> (obs, env_state); step(key, env_state, action) -> (obs, env_state, reward, terminated,
    truncated, info). `obs_fn` maps the env observation to the agent's input; `episode_info` names scalar info
    entries reported as means at episode end (e.g. progress, lap, wall_collision).
    """

    reset: Callable
    step: Callable
    obs_fn: Callable = lambda obs: obs
    episode_info: tuple[str, ...] = ()
    # Optional batched forms (keys [N] -> batch; keys [N], state [N], action [N] -> batch) for envs that are not
    # one function vmapped over N, e.g. N envs split over several tracks; default: `reset` / `step` vmapped.
    reset_batch: Callable | None = None
    step_batch: Callable | None = None


class EngineCarry(NamedTuple):
    """The complete carry of the jitted engine: learner state + env batch state (sharded on the env axis)."""

    train: TrainState
    env_state: Any
    obs: Any  # raw agent observations [N, ...]
    reward_acc: jax.Array
    episode: EpisodeStats


class JaxEngine:
    """Rollout + GAE + update in one jitted function per iteration, envs sharded over a 1-D device mesh."""

    def __init__(self, learner: Learner, env: JaxEnv, num_envs: int, mesh: Mesh | None = None):
        self.learner, self.env, self.num_envs = learner, env, num_envs
        self.mesh = mesh if mesh is not None else Mesh(np.asarray(jax.devices()), ("env",))
        if num_envs % self.mesh.size:
            raise ValueError(
                f"env.num_envs={num_envs} is not divisible by the {self.mesh.size} devices of the mesh"
            )
        self.env_sharding = NamedSharding(self.mesh, P("env"))
        self.replicated = NamedSharding(self.mesh, P())
        self.iteration = jax.jit(self._iteration, donate_argnums=0)

    def _reset(self, key: jax.Array) -> tuple[Any, Any]:
        obs, state = (self.env.reset_batch or jax.vmap(self.env.reset))(jax.random.split(key, self.num_envs))
        return jax.vmap(self.env.obs_fn)(obs), state

    def initial_carry(self, train: TrainState, key: jax.Array) -> EngineCarry:
        """The carry before the first iteration: `num_envs` fresh episodes (traceable; `init` jits and shards it)."""
        obs, env_state = self._reset(key)
        return EngineCarry(train, env_state, obs, jnp.zeros(self.num_envs), EpisodeStats.zeros(self.num_envs))

    def init(self, train: TrainState, key: jax.Array) -> EngineCarry:
        return self.shard(jax.jit(self.initial_carry)(train, key))

    def shard(self, carry: EngineCarry) -> EngineCarry:
        """Params/optimizer replicated, every env-batched leaf split over the mesh's env axis."""
        train = jax.device_put(carry.train, self.replicated)
        rest = jax.device_put(carry._replace(train=None), self.env_sharding)
        return rest._replace(train=train)

    def _env_step(self, key: jax.Array, env_state: Any, action: jax.Array) -> tuple:
        """vmapped step, then reset the envs whose episode ended; the final obs is returned separately."""
        keys = jax.random.split(key, self.num_envs + 1)
        obs, env_state, reward, terminated, truncated, info = (self.env.step_batch or jax.vmap(self.env.step))(
            keys[1:], env_state, action
        )
        final_obs = jax.vmap(self.env.obs_fn)(obs)
        done = terminated | truncated

        def reset_done(args: tuple) -> tuple:
            obs_, st_ = args
            new_obs, new_state = self._reset(keys[0])
            pick = lambda a, b: jnp.where(done.reshape(done.shape + (1,) * (a.ndim - 1)), a, b)  # noqa: E731
            return jax.tree.map(pick, new_obs, obs_), jax.tree.map(pick, new_state, st_)

        next_obs, env_state = jax.lax.cond(jnp.any(done), reset_done, lambda a: a, (final_obs, env_state))
        return next_obs, final_obs, env_state, reward, terminated, truncated, info

    def _iteration(self, carry: EngineCarry) -> tuple[EngineCarry, dict[str, jax.Array]]:
        learner, cfg = self.learner, self.learner.cfg
        constrain = lambda t: jax.lax.with_sharding_constraint(t, self.env_sharding)  # noqa: E731

        def step(r: EngineCarry, _: Any) -> tuple[EngineCarry, tuple]:
            train, out = learner.policy_step(r.train, r.obs)
            key, sub = jax.random.split(train.key)
            train = train._replace(key=key)
            next_obs, final_obs, env_state, reward, terminated, truncated, info = self._env_step(
                sub, r.env_state, out["action"]
            )
            final_value = jnp.zeros(self.num_envs)
            if cfg.bootstrap_truncation:  # V(final obs) only on the (rare) steps where some episode timed out
                final_value = jax.lax.cond(
                    jnp.any(truncated), lambda: learner.value(train, final_obs), lambda: final_value
                )
            done = terminated | truncated
            train, acc, learn_reward = learner.scale_reward(train, r.reward_acc, reward, done)
            ep = EpisodeStats(r.episode.ret + reward, r.episode.length + 1)
            record = (ep.ret, ep.length, done, {k: info[k] for k in self.env.episode_info})
            ep = EpisodeStats(jnp.where(done, 0.0, ep.ret), jnp.where(done, 0, ep.length))
            trans = learner.transition(out, learn_reward, terminated, truncated, final_value)
            r = EngineCarry(train, constrain(env_state), constrain(next_obs), acc, ep)
            return r, (trans, record)

        carry, (traj, record) = jax.lax.scan(step, carry, None, cfg.num_steps)
        last_value = learner.value(carry.train, carry.obs)
        train, metrics = learner.learn(carry.train, traj, last_value)
        train = train._replace(env_steps=train.env_steps + cfg.num_steps * self.num_envs)
        return carry._replace(train=train), {**metrics, "_record": record}

    def run_iteration(self, carry: EngineCarry) -> tuple[EngineCarry, dict[str, float]]:
        t0 = time.perf_counter()
        carry, metrics = self.iteration(carry)
        record = metrics.pop("_record")
        out = {k: float(v) for k, v in metrics.items()}
        out.update(summarize_episodes(*record[:3], record[3]))
        out["perf/sps"] = self.learner.cfg.num_steps * self.num_envs / (time.perf_counter() - t0)
        return carry, out


class SeedBatch:
    """S seeds of one config as a vmap axis of `JaxEngine`'s jitted iteration (PureJaxRL style): the runners
    of the seeds are stacked on a leading axis and one compiled function advances all of them, so S seeds cost
    one program's dispatch and S-fold wider operations instead of S runs. Seed s of the batch computes what
    the same seed computes alone (up to float reassociation in the wider ops)."""

    def __init__(self, engine: JaxEngine):
        self.engine = engine
        # inputs and outputs replicated on the engine's mesh: the carry an iteration returns is placed as the
        # one it took, so the next call reuses the compiled program (the seed axis is not sharded)
        self.iteration = jax.jit(
            jax.vmap(engine._iteration), donate_argnums=0, out_shardings=engine.replicated
        )
        self._reset = jax.jit(jax.vmap(engine._reset), out_shardings=engine.replicated)

    def init(self, trains: list[TrainState], keys: list[jax.Array]) -> EngineCarry:
        """The runners `engine.init` builds for each seed alone (the same reset per key), stacked on a leading
        seed axis; one compiled reset for all seeds."""
        n, s = self.engine.num_envs, len(trains)
        obs, env_state = self._reset(jnp.stack(keys))
        episode = EpisodeStats(jnp.zeros((s, n), jnp.float32), jnp.zeros((s, n), jnp.int32))
        train = jax.tree.map(lambda *xs: jnp.stack(xs), *trains)
        return jax.device_put(EngineCarry(train, env_state, obs, jnp.zeros((s, n)), episode), self.engine.replicated)

    @staticmethod
    def seed(carry: EngineCarry, s: int) -> EngineCarry:
        return jax.tree.map(lambda x: x[s], carry)

    def run_iteration(self, carry: EngineCarry) -> tuple[EngineCarry, list[dict[str, float]]]:
        """One iteration of every seed; per seed the metrics `JaxEngine.run_iteration` reports."""
        t0 = time.perf_counter()
        carry, metrics = self.iteration(carry)
        record = jax.device_get(metrics.pop("_record"))
        metrics = jax.device_get(metrics)
        n = jax.tree.leaves(carry.train.iteration)[0].shape[0]
        sps = n * self.engine.learner.cfg.num_steps * self.engine.num_envs / (time.perf_counter() - t0)
        out = []
        for s in range(n):
            m = {k: float(v[s]) for k, v in metrics.items()}
            rec = jax.tree.map(lambda x, s=s: x[s], record)
            m.update(summarize_episodes(*rec[:3], rec[3]))
            m["perf/sps"] = sps
            out.append(m)
        return carry, out


def make_train(
    cfg: PPOConfig,
    env: JaxEnv,
    agent: nnx.Module,
    obs_example: Any,
    *,
    num_envs: int,
    num_iterations: int,
    frozen_prefixes: tuple[tuple[str, ...], ...] = (),
    norm_keys: tuple[str, ...] | None = None,
) -> tuple[Callable[[jax.Array], tuple[EngineCarry, dict[str, jax.Array]]], Learner]:
    """PureJaxRL's shape of a whole PPO run: `train(key)` initialises the learner state and `num_envs` episodes,
    then runs `num_iterations` engine iterations as one `lax.scan`; jit it, and vmap it over keys for seeds.

    Returns `(train, learner)`; `train(key)` gives the final carry and the per-iteration metrics [I] (the
    learner's losses plus `episodes`, the number of episodes that ended, and `episode/return`, their mean raw
    return, NaN in an iteration where none ended). With `key` split into (learner key, env key), it computes
    what `JaxEngine.init` + `num_iterations` x `run_iteration` compute from those two keys: the trainer's
    checkpointed loop and this function run the same iteration.
    """
    updates = num_iterations * cfg.update_epochs * cfg.num_minibatches
    learner, params = Learner.create(agent, cfg, updates, frozen_prefixes, norm_keys)
    engine = JaxEngine(learner, env, num_envs)

    def iteration(carry: EngineCarry, _: Any) -> tuple[EngineCarry, dict[str, jax.Array]]:
        carry, metrics = engine._iteration(carry)
        returns, _, done, _ = metrics.pop("_record")
        ended = done.sum()
        metrics["episodes"] = ended
        metrics["episode/return"] = jnp.where(ended > 0, (returns * done).sum() / jnp.maximum(ended, 1), jnp.nan)
        return carry, metrics

    def train(key: jax.Array) -> tuple[EngineCarry, dict[str, jax.Array]]:
        learner_key, env_key = jax.random.split(key)
        carry = engine.initial_carry(learner.init_state(params, obs_example, learner_key), env_key)
        return jax.lax.scan(iteration, carry, None, num_iterations)

    return train, learner
