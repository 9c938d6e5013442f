"""gymnasium wrappers that show a racecar_gym-style env (single or vector) as Contract-1 samples with flat
[motor, steering] actions, their observation spaces, and `make_host_step`: a host env's step callable from jitted
JAX code. The observation mapping itself is `src.envs.observations`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium
import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces

from src.config import BevConfig, ModalityConfig
from src.envs.observations import ScanSpec, contract_obs, modality_shape

ACTION_KEYS = ("motor", "steering")


# --------------------------------------------------------------------------------------------- actions


def flatten_action(action: Mapping[str, Any]) -> np.ndarray:
    """{'motor': [..., 1], 'steering': [..., 1]} -> [..., 2] float32 vector [motor, steering]."""
    missing = [k for k in ACTION_KEYS if k not in action]
    if missing:
        raise ValueError(f"action: missing key(s) {missing}; expected {list(ACTION_KEYS)}")
    parts = [np.asarray(action[k], np.float32) for k in ACTION_KEYS]
    return np.concatenate([p.reshape(1) if p.ndim == 0 else p for p in parts], axis=-1)


def unflatten_action(vector: Any) -> dict[str, np.ndarray]:
    """[..., 2] vector [motor, steering] -> {'motor': [..., 1], 'steering': [..., 1]} float32."""
    v = np.asarray(vector, np.float32)
    if v.shape[-1:] != (2,):
        raise ValueError(f"action: expected a vector [..., 2] = [motor, steering], got shape {v.shape}")
    return {k: v[..., i : i + 1] for i, k in enumerate(ACTION_KEYS)}


# --------------------------------------------------------------------------------------------- gymnasium wrappers


def contract_space(modalities: Mapping[str, ModalityConfig | tuple[int, ...]]) -> spaces.Dict:
    """Observation space of one Contract-1 sample: modality arrays, `timestamp` and a `valid` flag per modality."""
    entries: dict[str, spaces.Space] = {
        name: spaces.Box(-np.inf, np.inf, modality_shape(m), np.float32) for name, m in modalities.items()
    }
    entries["timestamp"] = spaces.Box(0.0, np.inf, (), np.float64)
    entries["valid"] = spaces.Dict({name: spaces.Box(0, 1, (), np.bool_) for name in modalities})
    return spaces.Dict(entries)


def _to_contract(env_obs: Mapping[str, Any], modalities: Any, bev: BevConfig, spec: ScanSpec) -> dict[str, Any]:
    sample, valid = contract_obs(env_obs, modalities, bev, spec)
    return {**sample, "valid": valid}


class _ContractIO:
    """reset/step of both wrappers: env observations -> Contract-1 samples, flat actions -> racecar_gym dicts."""

    env: Any
    modalities: dict[str, Any]
    bev: BevConfig
    scan_spec: ScanSpec

    def _observe(self, obs: Mapping[str, Any], start: bool) -> dict[str, Any]:
        return _to_contract(obs, self.modalities, self.bev, self.scan_spec)

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._observe(obs, True), info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(unflatten_action(action))
        return self._observe(obs, False), reward, terminated, truncated, info


class ContractObsWrapper(_ContractIO, gymnasium.Wrapper):
    """A racecar_gym-style env seen as Contract-1 samples (no batch axis) with flat [motor, steering] actions.

    For an env whose observations have no `origin` (racecar_gym), the pose at reset is recorded as the origin.
    """

    def __init__(
        self, env: gymnasium.Env, modalities: Mapping[str, Any], bev: BevConfig, spec: ScanSpec | None = None
    ):
        super().__init__(env)
        self.modalities = dict(modalities)
        self.bev = bev
        self.scan_spec = spec or ScanSpec.from_env(env)
        self._origin = np.zeros(2, np.float32)
        self.observation_space = contract_space(self.modalities)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _observe(self, obs: Mapping[str, Any], start: bool) -> dict[str, Any]:
        if "origin" not in obs:
            if start:
                self._origin = np.asarray(obs["pose"], np.float32)[:2].copy()
            obs = {**obs, "origin": self._origin}
        return super()._observe(obs, start)


class ContractObsVectorWrapper(_ContractIO, gymnasium.vector.VectorWrapper):
    """The same for a `gymnasium.vector` env (Sync or Async): batched samples [B, ...], actions [B, 2].

    With SAME_STEP autoreset, the finished episodes' last observations in `info["final_obs"]` (what a learner
    bootstraps a truncated episode from) are mapped too, so no raw observation reaches the agent.
    """

    def __init__(self, env: Any, modalities: Mapping[str, Any], bev: BevConfig, spec: ScanSpec | None = None):
        super().__init__(env)
        self.modalities = dict(modalities)
        self.bev = bev
        self.scan_spec = spec or self._spec_from(env)
        self.single_observation_space = contract_space(self.modalities)
        self.observation_space = gymnasium.vector.utils.batch_space(
            self.single_observation_space, env.num_envs
        )
        self.single_action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gymnasium.vector.utils.batch_space(self.single_action_space, env.num_envs)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = super().step(action)
        if info.get("final_obs") is not None:
            finals = np.full(self.num_envs, None, object)
            for i, final in enumerate(info["final_obs"]):
                if final is not None:
                    finals[i] = self._observe(final, False)
            info = {**info, "final_obs": finals}
        return obs, reward, terminated, truncated, info

    @staticmethod
    def _spec_from(env: Any) -> ScanSpec:
        try:
            cfg = env.get_attr("sim_config")[0]
        except AttributeError:  # not our env (e.g. racecar_gym): its documented defaults
            return ScanSpec()
        return ScanSpec(cfg.lidar_rays, cfg.lidar_fov, cfg.lidar_range)


# --------------------------------------------------------------------------------------------- host step


def _space_struct(space: spaces.Space, where: str = "observation_space") -> Any:
    if isinstance(space, spaces.Dict):
        return {k: _space_struct(v, f"{where}[{k!r}]") for k, v in space.spaces.items()}
    if isinstance(space, spaces.Box):
        return jax.ShapeDtypeStruct(space.shape, jax.dtypes.canonicalize_dtype(space.dtype))
    raise ValueError(f"{where}: only Dict and Box spaces can cross into JAX, got {type(space).__name__}")


def make_host_step(env: gymnasium.Env, autoreset: bool = False) -> Callable[[jax.Array], tuple]:
    """A JAX-callable step for a host (e.g. PyBullet) env, usable inside `jax.jit` / `lax.scan`.

    `step_fn(action [2]) -> (obs pytree, reward f32, terminated bool, truncated bool)` calls `env.step` through
    an ordered `io_callback`, so steps happen exactly once each and in program order. Dict action spaces get the
    flat [motor, steering] vector unflattened. With `autoreset`, a finished episode is reset inside the same call
    and the returned obs is the new episode's first one (the flags still report the end).

    Who: code whose env loop is one jitted program (a `lax.scan` rollout such as `ppo.JaxEngine`'s or a gymnax-
    style evaluation) and that should drive a host simulator without being rewritten as a Python loop. PPO on a
    host env (`env.kind = "bullet"` / `"gymnasium"`) does not need it: `ppo.HostEngine` steps a whole vector env
    per call from Python, cheaper than one callback per env step.
    """
    obs_struct = _space_struct(env.observation_space)
    result = (
        obs_struct,
        jax.ShapeDtypeStruct((), jnp.float32),
        jax.ShapeDtypeStruct((), jnp.bool_),
        jax.ShapeDtypeStruct((), jnp.bool_),
    )
    dict_actions = isinstance(env.action_space, spaces.Dict)

    def host(action: np.ndarray) -> tuple:
        act = unflatten_action(action) if dict_actions else np.asarray(action)
        obs, reward, terminated, truncated, _ = env.step(act)
        if autoreset and (terminated or truncated):
            obs, _ = env.reset()
        obs = jax.tree.map(lambda x, s: np.asarray(x, s.dtype).reshape(s.shape), obs, obs_struct)
        return obs, np.float32(reward), np.bool_(terminated), np.bool_(truncated)

    def step_fn(action: jax.Array) -> tuple:
        return jax.experimental.io_callback(host, result, action, ordered=True)

    return step_fn
