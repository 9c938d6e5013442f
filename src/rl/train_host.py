"""The host PPO engine: a Python loop over a `gymnasium.vector` env (PyBullet, gymnasium's own envs) calling the
jitted `Learner.policy_step`, then the same jitted GAE + update as the jitted engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from src.rl.episode_stats import info_at_end, summarize_episodes
from src.rl.ppo import Learner, TrainState


class HostEngine:
    """A Python loop over a `gymnasium.vector` env (SAME_STEP autoreset) with the jitted policy and update.

    `obs_fn` maps the vector env's batched observation to the agent input (identity for array observations),
    `action_fn` the batched action vector to what the env takes (e.g. racecar_gym's dict); `episode_info` names
    scalar entries of the step info reported at episode end.
    """

    def __init__(
        self,
        learner: Learner,
        env: Any,
        obs_fn: Callable = lambda o: o,
        episode_info: tuple[str, ...] = (),
        action_fn: Callable = lambda a: a,
    ):
        self.learner, self.env, self.obs_fn, self.action_fn = learner, env, obs_fn, action_fn
        self.episode_info = episode_info
        self.num_envs = env.num_envs
        self.policy_step = jax.jit(learner.policy_step)
        self.value = jax.jit(learner.value)
        self.scale_reward = jax.jit(learner.scale_reward)
        self.learn = jax.jit(learner.learn)
        self.obs: Any = None
        self.reward_acc = np.zeros(self.num_envs, np.float32)
        self.ep_ret = np.zeros(self.num_envs, np.float64)
        self.ep_len = np.zeros(self.num_envs, np.int64)

    def close(self) -> None:
        self.env.close()

    def reset(self, seed: int) -> Any:
        obs, _ = self.env.reset(seed=seed)
        self.obs = self.obs_fn(obs)
        self.reward_acc[:] = 0.0
        self.ep_ret[:] = 0.0
        self.ep_len[:] = 0
        return self.obs

    def _final_obs(self, info: dict, done: np.ndarray, raw_next: Any) -> Any:
        """The agent input of each env's last observation: the finished episode's final one where done."""
        finals = info.get("final_obs")
        rows = [
            finals[i]
            if done[i] and finals is not None
            else jax.tree.map(lambda x, i=i: np.asarray(x)[i], raw_next)
            for i in range(self.num_envs)
        ]
        return self.obs_fn(jax.tree.map(lambda *xs: np.stack(xs), *rows))

    def run_iteration(self, state: TrainState) -> tuple[TrainState, dict[str, float]]:
        cfg = self.learner.cfg
        t0 = time.perf_counter()
        steps, records = [], {"ret": [], "len": [], "done": [], **{k: [] for k in self.episode_info}}
        for _ in range(cfg.num_steps):
            state, out = self.policy_step(state, self.obs)
            raw_next, reward, terminated, truncated, info = self.env.step(
                self.action_fn(np.asarray(out["action"]))
            )
            next_obs = self.obs_fn(raw_next)
            done = np.logical_or(terminated, truncated)
            final_value = np.zeros(self.num_envs, np.float32)
            if cfg.bootstrap_truncation and truncated.any():
                final_value = np.asarray(self.value(state, self._final_obs(info, done, raw_next)))
            self.ep_ret += reward
            self.ep_len += 1
            records["ret"].append(self.ep_ret.copy())
            records["len"].append(self.ep_len.copy())
            records["done"].append(done)
            for k in self.episode_info:
                records[k].append(info_at_end(info, k, done))
            self.ep_ret[done] = 0.0
            self.ep_len[done] = 0
            state, acc, learn_reward = self.scale_reward(
                state, self.reward_acc, jnp.asarray(reward, jnp.float32), done
            )
            self.reward_acc = np.asarray(acc)
            steps.append(
                self.learner.transition(
                    out,
                    learn_reward,
                    jnp.asarray(terminated),
                    jnp.asarray(truncated),
                    jnp.asarray(final_value),
                )
            )
            self.obs = next_obs
        traj = jax.tree.map(lambda *xs: jnp.stack(xs), *steps)
        rollout_s = time.perf_counter() - t0
        state, metrics = self.learn(state, traj, self.value(state, self.obs))
        state = state._replace(env_steps=state.env_steps + cfg.num_steps * self.num_envs)
        out_metrics = {k: float(v) for k, v in metrics.items()}
        stack = {k: np.stack(v) for k, v in records.items()}
        out_metrics.update(
            summarize_episodes(
                stack["ret"], stack["len"], stack["done"], {k: stack[k] for k in self.episode_info}
            )
        )
        elapsed = time.perf_counter() - t0
        out_metrics["perf/sps"] = cfg.num_steps * self.num_envs / elapsed
        out_metrics["perf/rollout_frac"] = rollout_s / elapsed
        return state, out_metrics
