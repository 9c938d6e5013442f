"""Proximal Policy Optimization (Schulman et al. 2017): the math, one update function, two rollout engines.

Reading order follows the paper: a Gaussian policy over pre-squash actions `u`, generalised advantage
estimation (Schulman et al. 2016), the clipped surrogate objective, the (optionally clipped) value loss and an
entropy bonus, optimised for a few epochs of shuffled minibatches. Every implementation detail that the PPO
literature names is a switch in `PPOConfig` (CleanRL's names: `norm_adv`, `clip_vloss`, `anneal_lr`,
`norm_obs`, `norm_reward`, `bootstrap_truncation`, ...).

Everything is functional (PureJaxRL style): the model is split once into a graph definition and a parameter
pytree, and `TrainState` / `Runner` are pytrees of arrays, so one `Learner.update` serves

* `JaxEngine`: rollout (`lax.scan` over time, `vmap` over envs) + GAE + update as ONE jitted function, with the
  env batch sharded over a device mesh on the env axis (on one CPU device the mesh has one entry);
* `HostEngine`: a Python loop over a `gymnasium.vector` env (PyBullet, racecar_gym, Pendulum) calling the
  jitted `Learner.policy_step`, then the same jitted GAE + update.

Actions. The policy is a diagonal Gaussian over `u` whose mean the agent returns unbounded (no tanh in the
head); what the env receives is `squash(u)`, the one squashing, and the evaluation action is `squash(mean)`:
* `action_dist = "clip"`: `scale * clip(u, -1, 1)`. The clip belongs to the env, not the policy, so the
  log-probability is the Gaussian one (CleanRL's choice; no correction is needed or applied).
* `action_dist = "tanh"`: `scale * tanh(u)`, a bounded distribution with density
  log p(a) = log N(u) - sum log(scale * (1 - tanh(u)^2)). The buffer stores `u`, so the Jacobian term is the
  same number under the old and the new policy and cancels in the PPO ratio; `log_prob` still returns the
  corrected density. Its entropy has no closed form: the bonus uses the Gaussian entropy of `u`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from src.config import PPOConfig

# --------------------------------------------------------------------------------------------- running stats


class RunningMeanStd(NamedTuple):
    """Elementwise running mean/variance of a pytree (Chan et al. parallel update), a jit-friendly state."""

    mean: Any
    var: Any
    count: jax.Array


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


def rms_init(example: Any) -> RunningMeanStd:
    """Stats for one sample (no batch axis); non-float leaves (validity flags) keep mean 0 / var 1 and pass
    through unnormalised."""
    zeros = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), example)
    ones = jax.tree.map(lambda x: jnp.ones(jnp.shape(x), jnp.float32), example)
    return RunningMeanStd(zeros, ones, jnp.asarray(1e-4, jnp.float32))


def rms_update(rms: RunningMeanStd, batch: Any) -> RunningMeanStd:
    """Fold a batch (leading axis) into the running statistics."""
    n = jnp.asarray(jax.tree.leaves(batch)[0].shape[0], jnp.float32)
    total = rms.count + n

    def merge(mean: jax.Array, var: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if not _is_float(x):
            return mean, var
        x = x.astype(jnp.float32)
        b_mean, b_var = x.mean(0), x.var(0)
        delta = b_mean - mean
        new_mean = mean + delta * n / total
        m2 = var * rms.count + b_var * n + delta**2 * rms.count * n / total
        return new_mean, m2 / total

    pairs = jax.tree.map(merge, rms.mean, rms.var, batch)
    is_pair = lambda t: isinstance(t, tuple)  # noqa: E731
    mean = jax.tree.map(lambda t: t[0], pairs, is_leaf=is_pair)
    var = jax.tree.map(lambda t: t[1], pairs, is_leaf=is_pair)
    return RunningMeanStd(mean, var, total)


def rms_normalize(rms: RunningMeanStd, x: Any, clip: float) -> Any:
    """(x - mean) / std, clipped to [-clip, clip]; non-float leaves unchanged."""

    def norm(m: jax.Array, v: jax.Array, a: jax.Array) -> jax.Array:
        if not _is_float(a):
            return a
        return jnp.clip((a - m) / jnp.sqrt(v + 1e-8), -clip, clip).astype(a.dtype)

    return jax.tree.map(norm, rms.mean, rms.var, x)


def normalize_reward(
    ret_rms: RunningMeanStd, acc: jax.Array, reward: jax.Array, done: jax.Array, gamma: float, clip: float
) -> tuple[RunningMeanStd, jax.Array, jax.Array]:
    """Scale rewards by the running std of the discounted return (what gymnasium's NormalizeReward does)."""
    acc = acc * gamma + reward
    ret_rms = rms_update(ret_rms, acc)
    scaled = jnp.clip(reward / jnp.sqrt(ret_rms.var + 1e-8), -clip, clip)
    return ret_rms, jnp.where(done, 0.0, acc), scaled


# --------------------------------------------------------------------------------------------- the policy


def log_prob(mean: jax.Array, log_std: jax.Array, u: jax.Array, dist: str, scale: float) -> jax.Array:
    """log density of the env action squash(u) [B]; for "tanh" including the change-of-variables term."""
    log_std = jnp.broadcast_to(log_std, mean.shape)
    gauss = -0.5 * ((u - mean) / jnp.exp(log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    logp = gauss.sum(-1)
    if dist == "tanh":
        logp = logp - jnp.log(scale * (1.0 - jnp.tanh(u) ** 2) + 1e-6).sum(-1)
    return logp


def entropy(log_std: jax.Array, batch_shape: tuple[int, ...]) -> jax.Array:
    """Entropy of the Gaussian over u [B] (the bonus for both action distributions, see the module doc)."""
    ent = (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)
    return jnp.broadcast_to(ent, batch_shape)


def squash(u: jax.Array, dist: str, scale: float) -> jax.Array:
    """Pre-squash sample -> the action sent to the env."""
    bounded = jnp.tanh(u) if dist == "tanh" else jnp.clip(u, -1.0, 1.0)
    return scale * bounded


# --------------------------------------------------------------------------------------------- GAE and losses


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminal: jax.Array,
    done: jax.Array,
    gamma: float,
    lam: float,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over time-major arrays [T, N] -> (advantages, returns).

    next_values[t] is V of the state that step t reached (the episode's final state when it ended at t);
    `terminal` cuts the bootstrap (a true end, value 0), `done` cuts the advantage recursion (any episode end,
    truncations included, since the next row belongs to a new episode):
        delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminal_t) - V(s_t)
        A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}
    """
    deltas = rewards + gamma * next_values * (1.0 - terminal) - values

    def backward(next_adv: jax.Array, xs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        delta, d = xs
        adv = delta + gamma * lam * (1.0 - d) * next_adv
        return adv, adv

    _, adv = jax.lax.scan(
        backward, jnp.zeros_like(deltas[0]), (deltas, done.astype(deltas.dtype)), reverse=True
    )
    return adv, adv + values


def clipped_surrogate_loss(ratio: jax.Array, adv: jax.Array, clip: float) -> jax.Array:
    """-E[min(r A, clip(r, 1-eps, 1+eps) A)]: no gradient once the ratio has moved past the clip in A's favour."""
    return jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)).mean()


def value_loss(value: jax.Array, old_value: jax.Array, returns: jax.Array, clip: float | None) -> jax.Array:
    """0.5 E[(V - R)^2]; with `clip`, the pessimistic max with the loss of a value kept within +-clip of the old."""
    unclipped = (value - returns) ** 2
    if clip is None:
        return 0.5 * unclipped.mean()
    clipped = (old_value + jnp.clip(value - old_value, -clip, clip) - returns) ** 2
    return 0.5 * jnp.maximum(unclipped, clipped).mean()


# --------------------------------------------------------------------------------------------- state


class Batch(NamedTuple):
    """Flat training batch [B, ...]: what one minibatch step needs."""

    obs: Any
    u: jax.Array
    logp: jax.Array
    values: jax.Array
    advantages: jax.Array
    returns: jax.Array


class Transition(NamedTuple):
    """One rollout step for N envs (arrays [N, ...]); time-stacked to [T, N, ...] by the engines."""

    obs: Any  # normalised observation the policy saw
    u: jax.Array
    logp: jax.Array
    value: jax.Array
    reward: jax.Array  # (normalised) reward used for learning
    terminal: jax.Array  # bootstrap cut: terminated, or truncated when bootstrap_truncation is off
    done: jax.Array  # terminated | truncated
    final_value: jax.Array  # V(final observation) where truncated (0 elsewhere)


class TrainState(NamedTuple):
    """Everything an update changes, as a pytree (what checkpoints hold besides the engine's env carry)."""

    params: Any
    opt_state: Any
    obs_rms: RunningMeanStd
    ret_rms: RunningMeanStd
    key: jax.Array
    iteration: jax.Array
    env_steps: jax.Array


def path_names(path: tuple) -> tuple[str, ...]:
    """A tree path as attribute/key names (Variable `.value` wrappers left out)."""
    names = []
    for k in path:
        name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", None)))
        if name != "value":
            names.append(str(name))
    return tuple(names)


def frozen_mask(params: Any, frozen_prefixes: tuple[tuple[str, ...], ...]) -> Any:
    """Bool pytree over `params`: True where the parameter path starts with one of `frozen_prefixes`."""

    def is_frozen(path: tuple, _: Any) -> bool:
        names = path_names(path)
        return any(names[: len(p)] == p for p in frozen_prefixes)

    return jax.tree_util.tree_map_with_path(is_frozen, params)


def make_optimizer(cfg: PPOConfig, total_updates: int, mask: Any) -> optax.GradientTransformation:
    """Adam with global-norm clipping and (optionally) linear LR annealing; frozen params get zero updates."""
    lr = (
        optax.linear_schedule(cfg.learning_rate, 0.0, max(total_updates, 1))
        if cfg.anneal_lr
        else cfg.learning_rate
    )
    trainable = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(lr, eps=cfg.adam_eps))
    labels = jax.tree.map(lambda f: "frozen" if f else "trainable", mask)
    return optax.multi_transform({"trainable": trainable, "frozen": optax.set_to_zero()}, labels)


# --------------------------------------------------------------------------------------------- learner


@dataclasses.dataclass
class Learner:
    """Binds an actor-critic module to the PPO math: `policy_step`, `value`, `update`, all pure functions.

    The agent module maps an observation batch to (mean [B, A], log_std [A] or [B, A], value [B]).
    """

    cfg: PPOConfig
    graphdef: Any
    rest: Any
    mask: Any
    tx: optax.GradientTransformation
    norm_keys: tuple[str, ...] | None = None  # with cfg.norm_obs: the observation keys normalised (None: all)

    @classmethod
    def create(
        cls,
        agent: nnx.Module,
        cfg: PPOConfig,
        total_updates: int,
        frozen_prefixes: tuple[tuple[str, ...], ...] = (),
        norm_keys: tuple[str, ...] | None = None,
    ) -> tuple[Learner, Any]:
        """Split `agent` into graph + params; returns the learner and the initial params."""
        graphdef, params, rest = nnx.split(agent, nnx.Param, ...)
        mask = frozen_mask(params, frozen_prefixes)
        return cls(cfg, graphdef, rest, mask, make_optimizer(cfg, total_updates, mask), norm_keys), params

    def init_state(self, params: Any, obs_example: Any, key: jax.Array) -> TrainState:
        return TrainState(
            params=params,
            opt_state=self.tx.init(params),
            obs_rms=rms_init(obs_example),
            ret_rms=rms_init(jnp.zeros((), jnp.float32)),
            key=key,
            iteration=jnp.zeros((), jnp.int32),
            env_steps=jnp.zeros((), jnp.int32),
        )

    def module(self, params: Any) -> nnx.Module:
        return nnx.merge(self.graphdef, params, self.rest)

    def apply(self, params: Any, obs: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
        frozen = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, self.mask)
        return self.module(frozen)(obs)

    def normalize_obs(self, state: TrainState, obs: Any) -> Any:
        """With `norm_obs`, z-score the observation by the running statistics: all float leaves, or only the
        keys `norm_keys` names (the others, e.g. the inputs of imported encoders, pass through untouched)."""
        if not self.cfg.norm_obs:
            return obs
        if self.norm_keys is None:
            return rms_normalize(state.obs_rms, obs, self.cfg.clip_obs)
        picked = {k: obs[k] for k in self.norm_keys}
        normed = rms_normalize(
            state.obs_rms._replace(
                mean={k: state.obs_rms.mean[k] for k in picked}, var={k: state.obs_rms.var[k] for k in picked}
            ),
            picked,
            self.cfg.clip_obs,
        )
        return {**obs, **normed}

    def policy_step(self, state: TrainState, raw_obs: Any) -> tuple[TrainState, dict[str, Any]]:
        """Observe (update obs stats), sample u ~ pi(.|obs): the state advances its key and obs statistics."""
        cfg = self.cfg
        obs_rms = rms_update(state.obs_rms, raw_obs) if cfg.norm_obs else state.obs_rms
        state = state._replace(obs_rms=obs_rms)
        obs = self.normalize_obs(state, raw_obs)
        key, sub = jax.random.split(state.key)
        mean, log_std, value = self.apply(state.params, obs)
        u = mean + jnp.exp(log_std) * jax.random.normal(sub, mean.shape)
        out = {
            "obs": obs,
            "u": u,
            "action": squash(u, cfg.action_dist, cfg.action_scale),
            "logp": log_prob(mean, log_std, u, cfg.action_dist, cfg.action_scale),
            "value": value,
        }
        return state._replace(key=key), out

    def value(self, state: TrainState, raw_obs: Any) -> jax.Array:
        """V(obs) under the current statistics, without updating them (bootstraps)."""
        return self.apply(state.params, self.normalize_obs(state, raw_obs))[2]

    def act_deterministic(self, state: TrainState, raw_obs: Any) -> jax.Array:
        """The policy mean, squashed: the evaluation action."""
        mean, _, _ = self.apply(state.params, self.normalize_obs(state, raw_obs))
        return squash(mean, self.cfg.action_dist, self.cfg.action_scale)

    def reward(
        self, state: TrainState, acc: jax.Array, reward: jax.Array, done: jax.Array
    ) -> tuple[TrainState, jax.Array, jax.Array]:
        if not self.cfg.norm_reward:
            return state, acc, reward
        ret_rms, acc, scaled = normalize_reward(
            state.ret_rms, acc, reward, done, self.cfg.gamma, self.cfg.clip_reward
        )
        return state._replace(ret_rms=ret_rms), acc, scaled

    # ------------------------------------------------------------------ loss and update

    def loss(self, params: Any, mb: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        cfg = self.cfg
        mean, log_std, value = self.apply(params, mb.obs)
        logp = log_prob(mean, log_std, mb.u, cfg.action_dist, cfg.action_scale)
        logratio = logp - mb.logp
        ratio = jnp.exp(logratio)
        adv = mb.advantages
        if cfg.norm_adv:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg_loss = clipped_surrogate_loss(ratio, adv, cfg.clip_coef)
        v_loss = value_loss(value, mb.values, mb.returns, cfg.clip_coef if cfg.clip_vloss else None)
        ent = entropy(log_std, value.shape).mean()
        total = pg_loss - cfg.ent_coef * ent + cfg.vf_coef * v_loss
        metrics = {
            "loss/policy": pg_loss,
            "loss/value": v_loss,
            "loss/entropy": ent,
            "loss/approx_kl": ((ratio - 1.0) - logratio).mean(),
            "loss/clip_frac": (jnp.abs(ratio - 1.0) > cfg.clip_coef).mean(),
        }
        return total, metrics

    def update(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        """`update_epochs` passes over `batch` in `num_minibatches` shuffled minibatches."""
        cfg = self.cfg
        size = batch.u.shape[0]
        mb_size = size // cfg.num_minibatches
        grad_fn = jax.value_and_grad(self.loss, has_aux=True)

        def minibatch(carry: tuple, idx: jax.Array) -> tuple[tuple, dict]:
            params, opt_state = carry
            mb = jax.tree.map(lambda x: x[idx], batch)
            (_, metrics), grads = grad_fn(params, mb)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            metrics["grad_norm"] = optax.tree.norm(grads)
            return (optax.apply_updates(params, updates), opt_state), metrics

        def epoch(carry: tuple, key: jax.Array) -> tuple[tuple, dict]:
            perm = jax.random.permutation(key, size)[: mb_size * cfg.num_minibatches]
            return jax.lax.scan(minibatch, carry, perm.reshape(cfg.num_minibatches, mb_size))

        key, sub = jax.random.split(state.key)
        (params, opt_state), metrics = jax.lax.scan(
            epoch, (state.params, state.opt_state), jax.random.split(sub, cfg.update_epochs)
        )
        state = state._replace(params=params, opt_state=opt_state, key=key, iteration=state.iteration + 1)
        return state, jax.tree.map(jnp.mean, metrics)

    def advantages(self, traj: Transition, last_value: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(advantages, returns) [T, N] of a trajectory: V(s_{t+1}) is the next row's value inside an episode,
        the ended episode's own final value where it ended at t (0 for a true end, V(final obs) for a
        truncation), and `last_value` after the last row."""
        cfg = self.cfg
        following = jnp.concatenate([traj.value[1:], last_value[None]], 0)
        next_values = jnp.where(traj.done, traj.final_value, following)
        return gae(traj.reward, traj.value, next_values, traj.terminal, traj.done, cfg.gamma, cfg.gae_lambda)

    def learn(
        self, state: TrainState, traj: Transition, last_value: jax.Array
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """GAE over a [T, N] trajectory, then `update` on the flattened batch."""
        adv, ret = self.advantages(traj, last_value)
        flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
        batch = Batch(
            jax.tree.map(flat, traj.obs),
            flat(traj.u),
            flat(traj.logp),
            flat(traj.value),
            flat(adv),
            flat(ret),
        )
        state, metrics = self.update(state, batch)
        metrics["value/mean"] = traj.value.mean()
        metrics["value/explained_var"] = 1.0 - jnp.var(ret - traj.value) / (jnp.var(ret) + 1e-8)
        return state, metrics

    def transition(
        self,
        out: dict[str, Any],
        reward: jax.Array,
        terminated: jax.Array,
        truncated: jax.Array,
        final_value: jax.Array,
    ) -> Transition:
        terminal = terminated if self.cfg.bootstrap_truncation else terminated | truncated
        return Transition(
            obs=out["obs"],
            u=out["u"],
            logp=out["logp"],
            value=out["value"],
            reward=reward.astype(jnp.float32),
            terminal=terminal.astype(jnp.float32),
            done=(terminated | truncated),
            final_value=jnp.where(truncated, final_value, 0.0),
        )


# --------------------------------------------------------------------------------------------- episode stats


class EpisodeStats(NamedTuple):
    """Per-env accumulators of the raw (unnormalised) episode return and length."""

    ret: jax.Array
    length: jax.Array

    @classmethod
    def zeros(cls, n: int) -> EpisodeStats:
        return cls(jnp.zeros(n, jnp.float32), jnp.zeros(n, jnp.int32))


def summarize_episodes(
    returns: np.ndarray, lengths: np.ndarray, done: np.ndarray, extra: dict[str, Any]
) -> dict:
    """Mean over the episodes that ended in this iteration ([T, N] arrays; `extra` values at episode end)."""
    done = np.asarray(done, bool)
    n = int(done.sum())
    out: dict[str, float] = {"episodes": float(n)}
    if n:
        out["episode/return"] = float(np.asarray(returns)[done].mean())
        out["episode/length"] = float(np.asarray(lengths)[done].mean())
        for k, v in extra.items():
            out[f"episode/{k}"] = float(np.asarray(v, np.float64)[done].mean())
    return out


# --------------------------------------------------------------------------------------------- JAX engine


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


class Runner(NamedTuple):
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

    def init(self, train: TrainState, key: jax.Array) -> Runner:
        obs, env_state = jax.jit(self._reset)(key)
        runner = Runner(train, env_state, obs, jnp.zeros(self.num_envs), EpisodeStats.zeros(self.num_envs))
        return self.shard(runner)

    def shard(self, runner: Runner) -> Runner:
        """Params/optimizer replicated, every env-batched leaf split over the mesh's env axis."""
        train = jax.device_put(runner.train, self.replicated)
        rest = jax.device_put(runner._replace(train=None), self.env_sharding)
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

    def _iteration(self, runner: Runner) -> tuple[Runner, dict[str, jax.Array]]:
        learner, cfg = self.learner, self.learner.cfg
        constrain = lambda t: jax.lax.with_sharding_constraint(t, self.env_sharding)  # noqa: E731

        def step(r: Runner, _: Any) -> tuple[Runner, tuple]:
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
            train, acc, learn_reward = learner.reward(train, r.reward_acc, reward, done)
            ep = EpisodeStats(r.episode.ret + reward, r.episode.length + 1)
            record = (ep.ret, ep.length, done, {k: info[k] for k in self.env.episode_info})
            ep = EpisodeStats(jnp.where(done, 0.0, ep.ret), jnp.where(done, 0, ep.length))
            trans = learner.transition(out, learn_reward, terminated, truncated, final_value)
            r = Runner(train, constrain(env_state), constrain(next_obs), acc, ep)
            return r, (trans, record)

        runner, (traj, record) = jax.lax.scan(step, runner, None, cfg.num_steps)
        last_value = learner.value(runner.train, runner.obs)
        train, metrics = learner.learn(runner.train, traj, last_value)
        train = train._replace(env_steps=train.env_steps + cfg.num_steps * self.num_envs)
        return runner._replace(train=train), {**metrics, "_record": record}

    def run_iteration(self, runner: Runner) -> tuple[Runner, dict[str, float]]:
        t0 = time.perf_counter()
        runner, metrics = self.iteration(runner)
        record = metrics.pop("_record")
        out = {k: float(v) for k, v in metrics.items()}
        out.update(summarize_episodes(*record[:3], record[3]))
        out["perf/sps"] = self.learner.cfg.num_steps * self.num_envs / (time.perf_counter() - t0)
        return runner, out


class SeedBatch:
    """S seeds of one config as a vmap axis of `JaxEngine`'s jitted iteration (PureJaxRL style): the runners
    of the seeds are stacked on a leading axis and one compiled function advances all of them, so S seeds cost
    one program's dispatch and S-fold wider operations instead of S runs. Seed s of the batch computes what
    the same seed computes alone (up to float reassociation in the wider ops)."""

    def __init__(self, engine: JaxEngine):
        self.engine = engine
        # inputs and outputs replicated on the engine's mesh: the runner an iteration returns is placed as the
        # one it took, so the next call reuses the compiled program (the seed axis is not sharded)
        self.iteration = jax.jit(
            jax.vmap(engine._iteration), donate_argnums=0, out_shardings=engine.replicated
        )
        self._reset = jax.jit(jax.vmap(engine._reset), out_shardings=engine.replicated)

    def init(self, trains: list[TrainState], keys: list[jax.Array]) -> Runner:
        """The runners `engine.init` builds for each seed alone (the same reset per key), stacked on a leading
        seed axis; one compiled reset for all seeds."""
        n, s = self.engine.num_envs, len(trains)
        obs, env_state = self._reset(jnp.stack(keys))
        episode = EpisodeStats(jnp.zeros((s, n), jnp.float32), jnp.zeros((s, n), jnp.int32))
        train = jax.tree.map(lambda *xs: jnp.stack(xs), *trains)
        return jax.device_put(Runner(train, env_state, obs, jnp.zeros((s, n)), episode), self.engine.replicated)

    @staticmethod
    def seed(runner: Runner, s: int) -> Runner:
        return jax.tree.map(lambda x: x[s], runner)

    def run_iteration(self, runner: Runner) -> tuple[Runner, list[dict[str, float]]]:
        """One iteration of every seed; per seed the metrics `JaxEngine.run_iteration` reports."""
        t0 = time.perf_counter()
        runner, metrics = self.iteration(runner)
        record = jax.device_get(metrics.pop("_record"))
        metrics = jax.device_get(metrics)
        n = jax.tree.leaves(runner.train.iteration)[0].shape[0]
        sps = n * self.engine.learner.cfg.num_steps * self.engine.num_envs / (time.perf_counter() - t0)
        out = []
        for s in range(n):
            m = {k: float(v[s]) for k, v in metrics.items()}
            rec = jax.tree.map(lambda x, s=s: x[s], record)
            m.update(summarize_episodes(*rec[:3], rec[3]))
            m["perf/sps"] = sps
            out.append(m)
        return runner, out


# --------------------------------------------------------------------------------------------- host engine


def info_at_end(info: dict, key: str, done: np.ndarray) -> np.ndarray:
    """info[key] per env, taken from the finished episode's `final_info` where it ended (SAME_STEP autoreset)."""
    n = done.shape[0]
    now = np.asarray(info.get(key, np.full(n, np.nan)), np.float64).reshape(n)
    final = info.get("final_info", {})
    if key in final:
        now = np.where(done, np.asarray(final[key], np.float64).reshape(n), now)
    return now


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
        self.reward = jax.jit(learner.reward)
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
            state, acc, learn_reward = self.reward(
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
