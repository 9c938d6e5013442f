"""Proximal Policy Optimization (Schulman et al. 2017): the math and one update function.

Reading order follows the paper: a Gaussian policy over pre-squash actions `u`, generalised advantage
estimation (Schulman et al. 2016), the clipped surrogate objective, the (optionally clipped) value loss and an
entropy bonus, optimised for a few epochs of shuffled minibatches. Every implementation detail that the PPO
literature names is a switch in `PPOConfig` (CleanRL's names: `norm_adv`, `clip_vloss`, `anneal_lr`,
`norm_obs`, `norm_reward`, `bootstrap_truncation`, ...).

Everything is functional (PureJaxRL style): the model is split once into a graph definition and a parameter
pytree, and `TrainState` is a pytree of arrays, so one `Learner` serves both engines: `src.rl.train_jax`
(rollout + GAE + update as one jitted function; `make_train(...)` -> `train(key)`) and `src.rl.train_host`
(a Python loop over a `gymnasium.vector` env).

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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from src.config import ConfigError, PPOConfig, RLConfig
from src.rl.normalize import RunningMeanStd, normalize_reward, rms_init, rms_normalize, rms_update

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
    other_state: Any  # the module's non-parameter variables (nnx.split's remainder), merged back unchanged
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
        graphdef, params, other_state = nnx.split(agent, nnx.Param, ...)
        mask = frozen_mask(params, frozen_prefixes)
        return cls(cfg, graphdef, other_state, mask, make_optimizer(cfg, total_updates, mask), norm_keys), params

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
        return nnx.merge(self.graphdef, params, self.other_state)

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

    def scale_reward(
        self, state: TrainState, acc: jax.Array, reward: jax.Array, done: jax.Array
    ) -> tuple[TrainState, jax.Array, jax.Array]:
        """With `norm_reward`, the reward divided by the running std of the discounted return (else unchanged);
        `acc` is each env's running discounted return."""
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


def num_iterations(cfg: RLConfig) -> int:
    """PPO iterations of a run: whole rollouts of `num_steps` x `num_envs` within `total_env_steps`, each split
    evenly into `num_minibatches` (a clear error otherwise)."""
    per_iteration = cfg.ppo.num_steps * cfg.env.num_envs
    n = cfg.ppo.total_env_steps // per_iteration
    if n < 1:
        raise ConfigError(
            f"ppo.total_env_steps={cfg.ppo.total_env_steps} is less than one iteration "
            f"(ppo.num_steps * env.num_envs = {per_iteration})"
        )
    if (cfg.ppo.num_steps * cfg.env.num_envs) % cfg.ppo.num_minibatches:
        raise ConfigError(
            f"ppo.num_minibatches={cfg.ppo.num_minibatches} does not divide the batch of {per_iteration}"
        )
    return n
