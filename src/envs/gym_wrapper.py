"""racecar_gym-style observations -> Contract-1 samples, for gymnasium envs, vector envs and jitted JAX code.

The adapter goes by observation keys only (`pose`, `velocity`, `acceleration`, `lidar`, optional `rgb_camera`,
`time`, and our envs' `imu` and `origin`), so it accepts our PyBullet env and racecar_gym itself. Every modality
follows the sensor contract (`src.contract`): the planar scan becomes points in the LiDAR frame (the scan plane,
z = 0) with the contract's simulated wall intensity and then a BEV image through `transforms.lidar_bev` on the
grid of `[model.bev]`, the same projection as real point clouds; GPS is relative to the episode's start; the IMU
is the env's `imu` reading (or, for an env without one, derived from racecar_gym's velocity and acceleration).
`contract_obs_jax` is the jnp twin for the pure-JAX env (equal to the NumPy path, tested). Radar and IR do not
exist in simulation: zeros with valid = False.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium
import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces

from src import contract
from src.config import BevConfig, ModalityConfig
from src.data import transforms

ACTION_KEYS = ("motor", "steering")
ABSENT_IN_SIM = ("radar", "ir")


@dataclasses.dataclass(frozen=True)
class ScanSpec:
    """Geometry of a planar scan: beams evenly spaced over `fov` centred on the heading (racecar_gym defaults)."""

    rays: int = 1080
    fov: float = 4.71
    max_range: float = 15.0

    def angles(self) -> np.ndarray:
        return np.linspace(-self.fov / 2.0, self.fov / 2.0, self.rays)

    @classmethod
    def from_env(cls, env: Any) -> ScanSpec:
        """Read the geometry from our envs (`sim_config`); racecar_gym defaults otherwise."""
        base = getattr(env, "unwrapped", env)
        cfg = getattr(base, "sim_config", None)
        if cfg is None:
            return cls()
        return cls(cfg.lidar_rays, cfg.lidar_fov, cfg.lidar_range)


def _shape(m: ModalityConfig | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(m.shape) if isinstance(m, ModalityConfig) else tuple(m)


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


# --------------------------------------------------------------------------------------------- NumPy mapping


def _beam_dirs(spec: ScanSpec) -> tuple[np.ndarray, np.ndarray]:
    """float32 cos/sin of the beam angles: the NumPy and JAX paths multiply the same float32 numbers."""
    a = spec.angles()
    return np.cos(a).astype(np.float32), np.sin(a).astype(np.float32)


def scan_points(ranges: np.ndarray, spec: ScanSpec) -> np.ndarray:
    """One scan [rays] -> points [K, 4] in the LiDAR frame (x, y, z = 0, contract.SIM_WALL_INTENSITY) for the
    beams that returned."""
    r = np.asarray(ranges, np.float32).reshape(-1)
    if r.shape[0] != spec.rays:
        raise ValueError(f"obs['lidar']: expected {spec.rays} ranges, got {r.shape[0]}")
    cos, sin = _beam_dirs(spec)
    hit = r < np.float32(spec.max_range - 1e-3)
    r, cos, sin = r[hit], cos[hit], sin[hit]
    return np.stack([r * cos, r * sin, np.zeros_like(r), np.full_like(r, contract.SIM_WALL_INTENSITY)], 1)


def scan_sequence(ranges: np.ndarray, length: int, max_range: float) -> np.ndarray:
    """A scan [..., rays] -> [..., length, 1] in [0, 1] (range / max_range), min-pooled to `length` beams."""
    r = np.asarray(ranges, np.float32)
    rays = r.shape[-1]
    if rays % length:
        raise ValueError(
            f"model lidar shape ({length}, 1): {rays} rays are not divisible into {length} beams"
        )
    pooled = r.reshape(*r.shape[:-1], length, rays // length).min(-1)
    return (pooled / max_range)[..., None]


def _gps(env_obs: Mapping[str, Any], xp: Any = np) -> Any:
    """racecar_gym pose (x, y, z, roll, pitch, yaw) relative to `origin`, and velocity -> contract gps [..., 5]."""
    pose, velocity = xp.asarray(env_obs["pose"]), xp.asarray(env_obs["velocity"])
    origin = xp.asarray(env_obs["origin"])
    speed = xp.sqrt(velocity[..., 0] ** 2 + velocity[..., 1] ** 2)
    return contract.gps_vector(
        pose[..., 0] - origin[..., 0], pose[..., 1] - origin[..., 1], pose[..., 5], speed, xp
    )


def _imu(env_obs: Mapping[str, Any], xp: Any = np) -> Any:
    """The env's contract `imu` reading; for an env without one (racecar_gym), the planar IMU from its body-frame
    velocity (vx, vy, ..., yaw rate) and velocity derivative `acceleration`."""
    if "imu" in env_obs:
        return xp.asarray(env_obs["imu"], xp.float32)
    v, a = xp.asarray(env_obs["velocity"]), xp.asarray(env_obs["acceleration"])
    return contract.planar_imu(v[..., 5], v[..., 0], v[..., 1], a[..., 0], a[..., 1], xp)


def _check_keys(env_obs: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in env_obs]
    if missing:
        raise ValueError(f"env observation: missing key(s) {missing}; got {sorted(env_obs)}")


def _contract(
    env_obs: Mapping[str, Any],
    modalities: Mapping[str, ModalityConfig | tuple[int, ...]],
    bev: BevConfig,
    spec: ScanSpec,
    xp: Any,
    lidar_fn: Callable,
    rgb_fn: Callable,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one mapping racecar_gym obs -> Contract-1 (sample, valid), for NumPy (`xp=np`) or jnp."""
    _check_keys(env_obs, ("pose", "velocity", "acceleration", "lidar"))
    contract.check_modality_shapes(dict(modalities))
    if "gps" in modalities and "origin" not in env_obs:
        raise ValueError(
            "env observation: no 'origin' (the episode's start, which GPS positions are relative to); our envs "
            "report it, and ContractObsWrapper records it at reset for envs that do not"
        )
    scan = xp.asarray(env_obs["lidar"], xp.float32)
    lead = scan.shape[:-1]
    out: dict[str, Any] = {}
    valid: dict[str, Any] = {}
    for name, m in modalities.items():
        shape = _shape(m)
        ok = True
        if name == "lidar":
            out[name] = lidar_fn(scan, shape, bev, spec)
        elif name == "rgb" and "rgb_camera" in env_obs:
            out[name] = rgb_fn(xp.asarray(env_obs["rgb_camera"]), shape)
        elif name == "gps":
            out[name] = _gps(env_obs, xp)
        elif name == "imu":
            out[name] = _imu(env_obs, xp)
        elif name in ABSENT_IN_SIM or name == "rgb":  # rgb without a camera is absent, like radar and IR
            out[name], ok = xp.zeros(lead + shape, xp.float32), False
        else:
            raise ValueError(f"modalities: unknown modality {name!r}")
        valid[name] = xp.full(lead, ok, xp.bool_)
    t = env_obs.get("time")
    # float64 with NumPy; under JAX float64 only where x64 is enabled, otherwise float32
    ttype = np.float64 if xp is np else None
    out["timestamp"] = xp.asarray(t, ttype).reshape(lead) if t is not None else xp.zeros(lead, ttype)
    return out, valid


def contract_obs(
    env_obs: Mapping[str, Any],
    modalities: Mapping[str, ModalityConfig | tuple[int, ...]],
    bev: BevConfig,
    spec: ScanSpec = ScanSpec(),
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """racecar_gym observation (leading batch axes allowed, e.g. [B] from a vector env) -> (sample, valid).

    `sample` has one array per configured modality plus `timestamp` (float64); `valid` one bool per modality.
    A BEV lidar modality is rasterised on `bev` at the modality's (H, W).
    """
    return _contract(env_obs, modalities, bev, spec, np, _lidar_numpy, _rgb_numpy)


def _bev_grid(bev: BevConfig, shape: tuple[int, ...]) -> contract.BevGrid:
    if len(shape) != 3 or shape[2] != len(contract.LIDAR_CHANNELS):
        raise ValueError(
            f"model lidar shape {shape}: expected an (H, W, {len(contract.LIDAR_CHANNELS)}) BEV "
            f"{contract.LIDAR_CHANNELS} or an (L, 1) scan sequence"
        )
    return contract.bev_grid(bev, shape)


def _lidar_numpy(scan: np.ndarray, shape: tuple[int, ...], bev: BevConfig, spec: ScanSpec) -> np.ndarray:
    if len(shape) == 2:
        return scan_sequence(scan, shape[0], spec.max_range)
    grid = _bev_grid(bev, shape)
    flat = scan.reshape(-1, scan.shape[-1])
    bevs = np.stack([transforms.lidar_bev(scan_points(s, spec), grid) for s in flat])
    return bevs.reshape(scan.shape[:-1] + shape)


def _rgb_numpy(images: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    flat = images.reshape(-1, *images.shape[-3:])
    out = np.stack([transforms.normalize_image(transforms.resize_image(im, shape[:2])) for im in flat])
    return out.reshape(images.shape[:-3] + out.shape[1:]).astype(np.float32)


# --------------------------------------------------------------------------------------------- gymnasium wrappers


def contract_space(modalities: Mapping[str, ModalityConfig | tuple[int, ...]]) -> spaces.Dict:
    """Observation space of one Contract-1 sample: modality arrays, `timestamp` and a `valid` flag per modality."""
    entries: dict[str, spaces.Space] = {
        name: spaces.Box(-np.inf, np.inf, _shape(m), np.float32) for name, m in modalities.items()
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


# --------------------------------------------------------------------------------------------- JAX mapping


def scan_points_jax(ranges: jax.Array, spec: ScanSpec) -> tuple[jax.Array, jax.Array]:
    """A scan [rays] -> (points [rays, 4], returned [rays] bool): fixed shapes, misses masked out."""
    cos, sin = (jnp.asarray(v) for v in _beam_dirs(spec))
    r = jnp.asarray(ranges, jnp.float32)
    pts = jnp.stack([r * cos, r * sin, jnp.zeros_like(r), jnp.full_like(r, contract.SIM_WALL_INTENSITY)], -1)
    return pts, r < jnp.float32(spec.max_range - 1e-3)


def lidar_bev_jax(points: jax.Array, mask: jax.Array, grid: contract.BevGrid) -> jax.Array:
    """jnp twin of `transforms.lidar_bev` for points [N, 4] (x, y, z, intensity) with a keep-mask [N].

    Same float32 cell arithmetic as `BevGrid.cell_index`; scatter-add / scatter-max replace bincount and
    maximum.at, so the result equals the NumPy BEV of the kept points (tested).
    """
    h, w = grid.height, grid.width
    n = h * w
    dx, dy = grid.cell_size
    x, y, z, inten = (points[:, i].astype(jnp.float32) for i in range(4))
    r = x * jnp.float32(-1.0 / dx) + jnp.float32((grid.x_range[1] + dx) / dx)
    c = y * jnp.float32(-1.0 / dy) + jnp.float32((grid.y_range[1] + dy) / dy)
    ri = r.astype(jnp.int32) - 1
    ci = c.astype(jnp.int32) - 1
    keep = mask & (ri >= 0) & (ri < h) & (ci >= 0) & (ci < w)
    keep &= (z >= jnp.float32(grid.z_range[0])) & (z < jnp.float32(grid.z_range[1]))
    flat = jnp.where(keep, ri * w + ci, n)
    count = jnp.zeros(n + 1, jnp.int32).at[flat].add(1)[:n]
    isum = jnp.zeros(n + 1, jnp.float32).at[flat].add(inten)[:n]
    z0, z1 = grid.z_range
    top = jnp.zeros(n + 1, jnp.float32).at[flat].max((z - jnp.float32(z0)) * jnp.float32(1.0 / (z1 - z0)))[:n]
    lut = jnp.asarray(transforms._DENSITY_LUT.astype(np.float32))
    channels = (
        (count > 0).astype(jnp.float32),
        top,
        isum * jnp.float32(1.0 / grid.intensity_max) / jnp.maximum(count, 1).astype(jnp.float32),
        lut[jnp.minimum(count, lut.shape[0] - 1)],
    )
    return jnp.stack(channels, axis=-1).reshape(h, w, 4)


def _lidar_jax(scan: jax.Array, shape: tuple[int, ...], bev: BevConfig, spec: ScanSpec) -> jax.Array:
    if len(shape) == 2:
        rays, length = scan.shape[-1], shape[0]
        if rays % length:
            raise ValueError(f"model lidar shape {shape}: {rays} rays are not divisible into {length} beams")
        pooled = scan.reshape(*scan.shape[:-1], length, rays // length).min(-1)
        return (pooled / jnp.float32(spec.max_range))[..., None].astype(jnp.float32)
    grid = _bev_grid(bev, shape)

    def one(s: jax.Array) -> jax.Array:
        return lidar_bev_jax(*scan_points_jax(s, spec), grid)

    flat = scan.reshape(-1, scan.shape[-1])
    return jax.vmap(one)(flat).reshape(scan.shape[:-1] + shape)


def _rgb_jax(images: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    x = images.astype(jnp.float32)
    if images.shape[-3:-1] != tuple(shape[:2]):  # bilinear, like the NumPy path (not bit-identical to PIL)
        x = jax.image.resize(x, images.shape[:-3] + tuple(shape[:2]) + (3,), "bilinear")
    x = x * jnp.float32(1.0 / 255.0)
    return (x - jnp.asarray(transforms.IMAGENET_MEAN)) / jnp.asarray(transforms.IMAGENET_STD)


def contract_obs_jax(
    env_obs: Mapping[str, jax.Array],
    modalities: Mapping[str, ModalityConfig | tuple[int, ...]],
    bev: BevConfig,
    spec: ScanSpec = ScanSpec(),
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """`contract_obs` in jnp for the JAX env's obs dict (leading batch axes allowed); jit-able."""
    return _contract(env_obs, modalities, bev, spec, jnp, _lidar_jax, _rgb_jax)
