"""racecar_gym-style observations -> Contract-1 samples (the contract mapping), NumPy and JAX.

The mapping goes by observation keys only (`pose`, `velocity`, `acceleration`, `lidar`, optional `rgb_camera`,
`time`, and our envs' `imu` and `origin`), so it accepts our PyBullet env, the pure-JAX env and racecar_gym
itself. Every modality follows the sensor contract (`src.contract`): the planar scan becomes points in the
LiDAR frame (the scan plane, z = 0) with the contract's simulated wall intensity and then a BEV image through
`bev.lidar_bev` on the grid of `[model.bev]`, the same projection as real point clouds; GPS is relative to the
episode's start; the IMU is the env's `imu` reading (or, for an env without one, derived from racecar_gym's
velocity and acceleration). One implementation serves NumPy (`contract_obs`, host envs) and jnp
(`contract_obs_jax`, jit-able, for the pure-JAX env). Radar and IR do not exist in simulation: zeros with
valid = False.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from src import contract
from src.config import BevConfig, ModalityConfig
from src.data import images
from src.data.bev import lidar_bev

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


def modality_shape(m: ModalityConfig | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(m.shape) if isinstance(m, ModalityConfig) else tuple(m)


# --------------------------------------------------------------------------------------------- scans


def _beam_dirs(spec: ScanSpec) -> tuple[np.ndarray, np.ndarray]:
    """float32 cos/sin of the beam angles: the NumPy and JAX paths multiply the same float32 numbers."""
    a = spec.angles()
    return np.cos(a).astype(np.float32), np.sin(a).astype(np.float32)


def scan_points(ranges: Any, spec: ScanSpec, xp: Any = np) -> tuple[Any, Any]:
    """One scan [rays] -> (points [rays, 4] in the LiDAR frame (x, y, z = 0, contract.SIM_WALL_INTENSITY),
    returned [rays] bool: the beams that hit something). Fixed shapes, so that it is jit-able with `xp=jnp`."""
    r = xp.asarray(ranges, xp.float32).reshape(-1)
    if r.shape[0] != spec.rays:
        raise ValueError(f"obs['lidar']: expected {spec.rays} ranges, got {r.shape[0]}")
    cos, sin = (xp.asarray(v) for v in _beam_dirs(spec))
    intensity = xp.full_like(r, contract.SIM_WALL_INTENSITY)
    points = xp.stack([r * cos, r * sin, xp.zeros_like(r), intensity], 1)
    return points, r < xp.float32(spec.max_range - 1e-3)


def scan_sequence(ranges: Any, length: int, max_range: float, xp: Any = np) -> Any:
    """A scan [..., rays] -> [..., length, 1] in [0, 1] (range / max_range), min-pooled to `length` beams."""
    r = xp.asarray(ranges, xp.float32)
    rays = r.shape[-1]
    if rays % length:
        raise ValueError(
            f"model lidar shape ({length}, 1): {rays} rays are not divisible into {length} beams"
        )
    pooled = r.reshape(*r.shape[:-1], length, rays // length).min(-1)
    return (pooled / xp.float32(max_range))[..., None]


def _bev_grid(bev: BevConfig, shape: tuple[int, ...]) -> contract.BevGrid:
    if len(shape) != 3 or shape[2] != len(contract.LIDAR_CHANNELS):
        raise ValueError(
            f"model lidar shape {shape}: expected an (H, W, {len(contract.LIDAR_CHANNELS)}) BEV "
            f"{contract.LIDAR_CHANNELS} or an (L, 1) scan sequence"
        )
    return contract.bev_grid(bev, shape)


def _lidar(scan: Any, shape: tuple[int, ...], bev: BevConfig, spec: ScanSpec, xp: Any) -> Any:
    """Scans [..., rays] -> the model's lidar input: a scan sequence (L, 1) or a BEV (H, W, 4) per scan."""
    if len(shape) == 2:
        return scan_sequence(scan, shape[0], spec.max_range, xp)
    grid = _bev_grid(bev, shape)

    def one(ranges: Any) -> Any:
        points, returned = scan_points(ranges, spec, xp)
        return lidar_bev(points, grid, keep=returned, xp=xp)

    flat = scan.reshape(-1, scan.shape[-1])
    bevs = jax.vmap(one)(flat) if xp is jnp else np.stack([one(s) for s in flat])
    return bevs.reshape(scan.shape[:-1] + shape)


def _rgb(frames: Any, shape: tuple[int, ...], xp: Any) -> Any:
    """Camera frames [..., h, w, 3] uint8 -> float32 [..., H, W, 3] model input: bilinear resize (PIL on the host,
    `jax.image.resize` under jit; not bit-identical), then the ImageNet normalisation."""
    size = tuple(shape[:2])
    if frames.shape[-3:-1] != size:
        if xp is jnp:
            frames = jax.image.resize(frames.astype(jnp.float32), frames.shape[:-3] + size + (3,), "bilinear")
        else:
            resized = [images.resize_image(f, size) for f in frames.reshape(-1, *frames.shape[-3:])]
            frames = np.stack(resized).reshape(frames.shape[:-3] + size + (3,))
    return images.normalize_image(frames, xp)


# --------------------------------------------------------------------------------------------- vectors


def _gps(env_obs: Mapping[str, Any], xp: Any = np) -> Any:
    """racecar_gym pose (x, y, z, roll, pitch, yaw) relative to `origin`, and velocity -> contract gps [..., 5]."""
    pose = xp.asarray(env_obs["pose"])
    origin = xp.asarray(env_obs["origin"])
    return contract.planar_gps(pose[..., :2], origin[..., :2], pose[..., 5], env_obs["velocity"], xp)


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


# --------------------------------------------------------------------------------------------- mapping


def _contract(
    env_obs: Mapping[str, Any],
    modalities: Mapping[str, ModalityConfig | tuple[int, ...]],
    bev: BevConfig,
    spec: ScanSpec,
    xp: Any,
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
        shape = modality_shape(m)
        ok = True
        if name == "lidar":
            out[name] = _lidar(scan, shape, bev, spec, xp)
        elif name == "rgb" and "rgb_camera" in env_obs:
            out[name] = _rgb(xp.asarray(env_obs["rgb_camera"]), shape, xp)
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
    return _contract(env_obs, modalities, bev, spec, np)


def contract_obs_jax(
    env_obs: Mapping[str, jax.Array],
    modalities: Mapping[str, ModalityConfig | tuple[int, ...]],
    bev: BevConfig,
    spec: ScanSpec = ScanSpec(),
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """`contract_obs` in jnp for the JAX env's obs dict (leading batch axes allowed); jit-able."""
    return _contract(env_obs, modalities, bev, spec, jnp)
