"""Actor-critic modules for PPO: obs batch -> (mean [B, A], log_std [A], value [B]).

Both agents return the Gaussian's mean over pre-squash actions `u`, unbounded; `ppo.squash` (the configured
`action_dist`) is the one place that bounds it.

`MLPAgent` is the reference agent for vector observations (gymnasium classics such as Pendulum-v1): separate
policy and value torsos (orthogonal init, small last policy layer), as PPO implementations commonly use.
`RaceformerAgent` wraps the Raceformer: encoders + fusion give one feature vector, its policy and value heads
read it. Its encoder/fusion parameters live under `FROZEN_PREFIXES`, the paths a `[finetune]` run imports and
optionally freezes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from src.config import ModelConfig, RLConfig
from src.models.raceformer import Raceformer
from src.training.checkpoint import import_encoder


class MLPAgent(nnx.Module):
    """Two tanh MLPs (policy mean, value) and a state-independent log std."""

    def __init__(
        self, obs_dim: int, action_dim: int, hidden: tuple[int, ...], init_log_std: float, *, rngs: nnx.Rngs
    ):
        def torso(out_dim: int, last_scale: float) -> nnx.List:
            dims = (obs_dim, *hidden)
            layers = [
                nnx.Linear(i, o, kernel_init=nnx.initializers.orthogonal(math.sqrt(2)), rngs=rngs)
                for i, o in zip(dims[:-1], dims[1:])
            ]
            layers.append(
                nnx.Linear(dims[-1], out_dim, kernel_init=nnx.initializers.orthogonal(last_scale), rngs=rngs)
            )
            return nnx.List(layers)

        self.actor = torso(action_dim, 0.01)
        self.critic = torso(1, 1.0)
        self.log_std = nnx.Param(jnp.full((action_dim,), init_log_std, jnp.float32))

    @staticmethod
    def _run(layers: nnx.List, x: jax.Array) -> jax.Array:
        for layer in layers[:-1]:
            x = jnp.tanh(layer(x))
        return layers[-1](x)

    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        x = obs.reshape(obs.shape[0], -1).astype(jnp.float32)
        return self._run(self.actor, x), self.log_std[...], self._run(self.critic, x)[:, 0]


FROZEN_PREFIXES: tuple[tuple[str, ...], ...] = (("model", "encoders"), ("model", "fusion"))
"""Parameter paths of a `RaceformerAgent` that pretraining exports and `[finetune] freeze_encoders` freezes."""

UNUSED_PREFIXES: tuple[tuple[str, ...], ...] = (("model", "pretrain_head"), ("model", "projection_head"))
"""Pretraining heads that PPO never evaluates: always excluded from the optimizer."""


class RaceformerAgent(nnx.Module):
    """The Raceformer as an actor-critic: fused features -> PolicyHead (pre-squash mean, log std) and ValueHead.

    Takes a Contract-1 observation batch: one array per configured modality plus `valid` (absent modalities,
    radar and IR in simulation, carry valid = False and are masked out by the fusion).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        self.model = Raceformer(cfg, rngs=rngs, dtype=dtype)
        self.modalities = tuple(cfg.modalities)

    def __call__(self, obs: dict[str, Any]) -> tuple[jax.Array, jax.Array, jax.Array]:
        missing = [m for m in (*self.modalities, "valid") if m not in obs]
        if missing:
            raise ValueError(f"RaceformerAgent: observation lacks {missing}; got {sorted(obs)}")
        batch = {m: obs[m] for m in self.modalities}
        valid = {m: obs["valid"][m] for m in self.modalities}
        features = self.model.features(batch, valid, deterministic=True)
        mean, log_std = self.model.policy_head(features)
        return mean, log_std, self.model.value_head(features)


def load_pretrained(agent: nnx.Module, path: str | Path) -> None:
    """Load a pretraining run's exported encoder + fusion weights into `agent` (strict: every mismatched
    parameter path and shape is listed in the raised ValueError)."""
    if not isinstance(agent, RaceformerAgent):
        raise ValueError(f"finetune.pretrained_ckpt={str(path)!r} needs ppo.agent = 'raceformer'")
    if not Path(path).exists():
        raise FileNotFoundError(f"finetune.pretrained_ckpt: {path} does not exist")
    import_encoder(agent.model, Path(path), strict=True)


def build_agent(cfg: RLConfig, obs_example: Any, action_dim: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """The agent the config names, sized for one observation sample `obs_example` (no batch axis)."""
    if cfg.ppo.agent == "mlp":
        obs_dim = int(jnp.size(obs_example))
        return MLPAgent(obs_dim, action_dim, cfg.ppo.mlp_hidden, cfg.model.init_log_std, rngs=rngs)
    return RaceformerAgent(cfg.model, rngs=rngs)
