"""The sensor contract: what every source (CMHT, ROS2 bags, episode logs, every simulator) feeds each modality.

One definition per modality, used by the CMHT pipeline, the episode sources and the simulator wrappers, and
stored with every exported encoder (`contract.toml` beside `weights.npz`), so that a fine-tuning run builds
its inputs exactly as the encoder's pretraining did.

- LiDAR BEV: the grid of `[model.bev]` (`config.BevConfig`: metric extent, kept height band, intensity scale)
  at the (H, W) of `model.modalities.lidar.shape` (resolution = extent / cells). Points are in the LiDAR
  frame: x forward, y left, z up, metres, z relative to the LiDAR (not the ground). A simulator's planar scan
  becomes points in that frame, in the scan plane (z = 0), every return with `SIM_WALL_INTENSITY` on the
  Velodyne's raw 0..255 scale, and goes through the same projection. Channels: `LIDAR_CHANNELS`.
- GPS [5]: `GPS_LAYOUT`: east and north of the GPS point relative to where the sequence / episode started,
  divided by `GPS_POSITION_SCALE`; heading (ENU yaw: 0 = east, counter-clockwise) as cos, sin; speed divided
  by `GPS_SPEED_SCALE`. Fixed scales, never per-run statistics.
- IMU [6]: `IMU_LAYOUT`: what a strapdown IMU measures, in SI units (rad/s, m/s^2), in the IMU's body frame
  with axes forward, right, down (FRD): angular rates, then specific force (acceleration minus gravity). A car
  at rest reads accel (0, 0, -g), as CMHT's records do (about -0.9 to -1.0 G on z); a car turning left at
  speed v on radius r reads accel y = -v^2 / r (its centripetal acceleration points left, to -y); a car
  speeding up reads accel x > 0. CMHT's records are passed on as recorded (`cmht.readers.read_gps_imu`: G -> m/s^2);
  ROS2 `sensor_msgs/Imu` messages (REP 103: forward-left-up, +g on z at rest) have y and z flipped.
  Their x/y axis convention could not be measured from the shipped sample (too few GPS fixes to correlate);
  FRD is the frame in which their z sign is that of a specific force.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from src.config import BevConfig

CONTRACT_VERSION = 2  # bump on any change of a layout or scale below: exported encoders record it

GRAVITY = 9.80665  # m/s^2, the value CMHT's G is converted with

LIDAR_CHANNELS = ("occupancy", "max_height", "mean_intensity", "log_density")
SIM_WALL_INTENSITY = 80.0
"""Raw intensity of a simulated wall return (Velodyne 0..255 scale, diffuse surfaces 0..100): the value the
synthetic CMHT walls carry, so the mean-intensity channel of a wall reads the same in both domains."""

GPS_LAYOUT = ("east", "north", "cos_heading", "sin_heading", "speed")
GPS_POSITION_SCALE = 100.0  # m: a position 100 m from the start reads 1
GPS_SPEED_SCALE = 10.0  # m/s
IMU_LAYOUT = ("gyro_x", "gyro_y", "gyro_z", "accel_x", "accel_y", "accel_z")
FLU_TO_FRD = (1.0, -1.0, -1.0)  # a body-frame vector in forward-left-up axes (ROS REP 103) -> the contract's
VECTOR_SHAPES = {"gps": (len(GPS_LAYOUT),), "imu": (len(IMU_LAYOUT),)}


class ContractError(ValueError):
    """An encoder export or a config does not fit the sensor contract; the message names each mismatch."""


# --------------------------------------------------------------------------------------------- BEV grid


@dataclasses.dataclass(frozen=True)
class BevGrid:
    """A bird's-eye-view raster: metric extent (sensor frame, metres), size in cells, kept height band.

    `intensity_max` maps raw intensities to [0, 1] in the mean-intensity channel. Build it with `bev_grid`
    from a `[model.bev]` section: the grid has no defaults of its own.
    """

    x_range: tuple[float, float]
    y_range: tuple[float, float]
    z_range: tuple[float, float]
    height: int
    width: int
    intensity_max: float

    def __post_init__(self) -> None:
        for name in ("x_range", "y_range", "z_range"):
            lo, hi = getattr(self, name)
            if not hi > lo:
                raise ValueError(f"BevGrid.{name}={getattr(self, name)}: need min < max")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"BevGrid: height/width must be >= 1, got {self.height}x{self.width}")
        if self.intensity_max <= 0:
            raise ValueError(f"BevGrid.intensity_max must be > 0, got {self.intensity_max}")

    @property
    def cell_size(self) -> tuple[float, float]:
        """(dx, dy): metres per row and per column."""
        return (
            (self.x_range[1] - self.x_range[0]) / self.height,
            (self.y_range[1] - self.y_range[0]) / self.width,
        )

    def cell_index(self, x: Any, y: Any, z: Any, xp: Any = np) -> Any:
        """Flat cell index r * W + c (int32) per point; H * W (one past the end) for dropped points. NumPy
        (`xp=np`) or jnp, in float32 either way, so both give the same cells.

        Using an overflow bin instead of boolean compaction keeps every later pass a single contiguous sweep.
        """
        h, w = self.height, self.width
        dx, dy = self.cell_size
        # r + 1 = (x_max + dx - x) / dx: in-range points land in [1, H + 1) so truncation acts as floor for them,
        # and everything at or beyond the edges (negative values truncate towards 0) falls outside [1, H].
        r = xp.asarray(x, xp.float32) * xp.float32(-1.0 / dx) + xp.float32((self.x_range[1] + dx) / dx)
        c = xp.asarray(y, xp.float32) * xp.float32(-1.0 / dy) + xp.float32((self.y_range[1] + dy) / dy)
        with np.errstate(invalid="ignore"):  # NaN points (no return) cast to INT_MIN and are dropped
            ri = r.astype(xp.int32) - 1
            ci = c.astype(xp.int32) - 1
        zf = xp.asarray(z, xp.float32)
        keep = (ri.view(xp.uint32) < h) & (ci.view(xp.uint32) < w)  # 0 <= ri < h, 0 <= ci < w
        keep = keep & (zf >= xp.float32(self.z_range[0])) & (zf < xp.float32(self.z_range[1]))
        return xp.where(keep, ri * w + ci, np.int32(h * w))

    def cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Metric (x [H, 1], y [1, W]) of every cell centre, broadcastable to [H, W]."""
        dx, dy = self.cell_size
        x = self.x_range[1] - (np.arange(self.height, dtype=np.float64) + 0.5) * dx
        y = self.y_range[1] - (np.arange(self.width, dtype=np.float64) + 0.5) * dy
        return x[:, None], y[None, :]

    def to_pixel(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Metric (x, y) -> continuous (column, row) image coordinates (for drawing)."""
        dx, dy = self.cell_size
        return (self.y_range[1] - np.asarray(y)) / dy, (self.x_range[1] - np.asarray(x)) / dx


def bev_grid(bev: BevConfig, shape: tuple[int, ...] | Any) -> BevGrid:
    """The BEV raster of a `[model.bev]` section at the (H, W) of a modality shape (H, W, C)."""
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3:
        raise ContractError(f"a BEV modality needs a shape (H, W, C), got {shape}")
    return BevGrid(bev.x_range, bev.y_range, bev.z_range, shape[0], shape[1], bev.intensity_max)


# --------------------------------------------------------------------------------------------- vectors


def check_modality_shapes(modalities: dict[str, Any], where: str = "model.modalities") -> None:
    """The vector modalities (gps, imu) of a model config must have the contract's layouts."""
    problems = []
    for name, m in modalities.items():
        shape = tuple(getattr(m, "shape", m))
        if name in VECTOR_SHAPES and shape != VECTOR_SHAPES[name]:
            layout = GPS_LAYOUT if name == "gps" else IMU_LAYOUT
            problems.append(f"{where}.{name}.shape={shape}: the sensor contract is {VECTOR_SHAPES[name]} {layout}")
    if problems:
        raise ContractError("; ".join(problems))


def gps_vector(east: Any, north: Any, heading: Any, speed: Any, xp: Any = np) -> Any:
    """Contract `gps` [..., 5] from a planar track: `east`/`north` in metres from the start, ENU heading (rad),
    speed (m/s). `xp` is np or jnp; the one layout of CMHT sync, episodes and the simulators."""
    columns = (
        xp.asarray(east) / GPS_POSITION_SCALE,
        xp.asarray(north) / GPS_POSITION_SCALE,
        xp.cos(heading),
        xp.sin(heading),
        xp.asarray(speed) / GPS_SPEED_SCALE,
    )
    return xp.stack(columns, axis=-1).astype(xp.float32)


def planar_gps(position: Any, origin: Any, heading: Any, velocity: Any, xp: Any = np) -> Any:
    """Contract `gps` [..., 5] of a planar ego state, the one mapping of simulators and episode logs: `position`
    [..., 2] (m) relative to `origin` [..., 2] (the episode's start), ENU `heading` (rad), and a velocity whose
    first two entries are the planar components (m/s), any frame (only the speed is used)."""
    position, origin, velocity = xp.asarray(position), xp.asarray(origin), xp.asarray(velocity)
    speed = xp.sqrt(velocity[..., 0] ** 2 + velocity[..., 1] ** 2)
    return gps_vector(position[..., 0] - origin[..., 0], position[..., 1] - origin[..., 1], heading, speed, xp)


def gps_pose(gps: np.ndarray) -> np.ndarray:
    """The planar pose [..., 3] (east, north in metres from the start, ENU heading in rad) of contract `gps`
    vectors: the inverse of `gps_vector` for the position and heading columns."""
    gps = np.asarray(gps, np.float64)
    heading = np.arctan2(gps[..., 3], gps[..., 2])
    return np.stack([gps[..., 0] * GPS_POSITION_SCALE, gps[..., 1] * GPS_POSITION_SCALE, heading], axis=-1)


def imu_vector(gyro_flu: Any, specific_force_flu: Any, xp: Any = np) -> Any:
    """Contract `imu` [..., 6] from body-frame (forward, left, up) angular rates and specific force: the same
    vectors in the contract's forward-right-down axes (y and z flip sign)."""
    flip = xp.asarray(FLU_TO_FRD, xp.float32)
    return xp.concatenate([gyro_flu * flip, specific_force_flu * flip], axis=-1).astype(xp.float32)


def planar_imu(omega: Any, vx: Any, vy: Any, dvx_dt: Any, dvy_dt: Any, xp: Any = np) -> Any:
    """Contract `imu` of a rigid body moving on level ground: yaw rate `omega` (rad/s, counter-clockwise),
    body-frame velocity (vx forward, vy left, m/s) and its time derivative in the body frame.

    The inertial acceleration in the rotating body frame is dv/dt + omega x v (in a steady turn the second
    term is the centripetal acceleration v^2 / r), and the accelerometer adds the ground's support (+g up).
    """
    zero = xp.zeros_like(xp.asarray(omega, xp.float32))
    gyro = xp.stack([zero, zero, omega], axis=-1)
    force = xp.stack([dvx_dt - omega * vy, dvy_dt + omega * vx, zero + GRAVITY], axis=-1)
    return imu_vector(gyro, force, xp)


# --------------------------------------------------------------------------------------------- export record


CONTRACT_TOML = "contract.toml"


def contract_record() -> dict[str, Any]:
    """The fixed layouts and scales of this code's contract, recorded beside an exported encoder (its BEV grid
    and input shapes are in its model.toml)."""
    return {
        "version": CONTRACT_VERSION,
        "lidar_channels": list(LIDAR_CHANNELS),
        "sim_wall_intensity": SIM_WALL_INTENSITY,
        "gps_layout": list(GPS_LAYOUT),
        "gps_position_scale": GPS_POSITION_SCALE,
        "gps_speed_scale": GPS_SPEED_SCALE,
        "imu_layout": list(IMU_LAYOUT),
        "imu_frame": "FRD, SI units, specific force",
    }


def write_contract(path: str | Path) -> Path:
    path = Path(path) / CONTRACT_TOML
    path.write_text(tomli_w.dumps(_lists(contract_record())))
    return path


def read_contract(path: str | Path) -> dict[str, Any]:
    file = Path(path) / CONTRACT_TOML
    if not file.is_file():
        raise ContractError(
            f"{file}: missing; this encoder was exported before the sensor contract was recorded, so what its "
            "inputs meant is unknown: re-run the pretraining export"
        )
    try:
        return tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ContractError(f"{file}: invalid TOML: {e}") from e


def _lists(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_lists(v) for v in obj]
    return obj


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: obj}


def mismatches(encoder: dict[str, Any], run: dict[str, Any], prefix: str = "") -> list[str]:
    """'key: encoder X, this run Y' for every (nested) key where two records differ."""
    want, have = _flatten(_lists(encoder), prefix), _flatten(_lists(run), prefix)
    return [
        f"{key}: encoder {want.get(key, 'missing')!r}, this run {have.get(key, 'missing')!r}"
        for key in sorted(set(want) | set(have))
        if want.get(key) != have.get(key)
    ]
