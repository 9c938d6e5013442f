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
from src.infra.checkpoint import ENCODER_PARTS, check_encoder_fits, import_encoder
from src.models.raceformer import Raceformer


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


FROZEN_PREFIXES: tuple[tuple[str, ...], ...] = tuple(("model", part) for part in ENCODER_PARTS)
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


def check_pretrained(cfg: RLConfig) -> None:
    """The export `[finetune] pretrained_ckpt` names fits this run: it exists, the agent is a Raceformer, and its
    [model] (BEV grid and modality shapes included) and sensor contract equal the run's (`check_encoder_fits`
    names every mismatch). Called before the env is built, so the env's inputs follow the encoder's contract."""
    path = cfg.finetune.pretrained_ckpt
    if cfg.ppo.agent != "raceformer":
        raise ValueError(f"finetune.pretrained_ckpt={path!r} needs ppo.agent = 'raceformer'")
    if not Path(path).exists():
        raise FileNotFoundError(f"finetune.pretrained_ckpt: {path} does not exist")
    check_encoder_fits(path, cfg.model)


def load_pretrained(agent: nnx.Module, path: str | Path, model_cfg: ModelConfig | None = None) -> None:
    """Load a pretraining run's exported encoder + fusion weights into `agent` (strict: every mismatched
    parameter path and shape, and with `model_cfg` every differing setting, is listed in the ValueError)."""
    if not isinstance(agent, RaceformerAgent):
        raise ValueError(f"finetune.pretrained_ckpt={str(path)!r} needs ppo.agent = 'raceformer'")
    if not Path(path).exists():
        raise FileNotFoundError(f"finetune.pretrained_ckpt: {path} does not exist")
    import_encoder(agent.model, Path(path), strict=True, model_cfg=model_cfg)


def normalized_modalities(cfg: RLConfig) -> tuple[str, ...] | None:
    """The observation keys `ppo.norm_obs` z-scores: None (every float leaf) for the MLP agent; for the
    Raceformer `ppo.norm_obs_modalities` (default: its vector modalities), minus every modality whose encoder
    is imported, since pretraining fed those their raw contract inputs."""
    if cfg.ppo.agent != "raceformer":
        return None
    mods = cfg.model.modalities
    unknown = [m for m in cfg.ppo.norm_obs_modalities if m not in mods]
    if unknown:
        raise ValueError(f"ppo.norm_obs_modalities: {unknown} are not model modalities {sorted(mods)}")
    chosen = cfg.ppo.norm_obs_modalities or tuple(m for m, c in mods.items() if len(c.shape) == 1)
    imported = set(mods) if cfg.finetune.pretrained_ckpt else set()
    return tuple(m for m in chosen if m not in imported)


def build_agent(cfg: RLConfig, obs_example: Any, action_dim: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """The agent the config names, sized for one observation sample `obs_example` (no batch axis)."""
    if cfg.ppo.agent == "mlp":
        obs_dim = int(jnp.size(obs_example))
        return MLPAgent(obs_dim, action_dim, cfg.ppo.mlp_hidden, cfg.model.init_log_std, rngs=rngs)
    return RaceformerAgent(cfg.model, rngs=rngs)
