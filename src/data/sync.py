"""LiDAR-master-clock alignment: every LiDAR sweep is one sample; the other sensors are brought to its time.

Rules (all vectorised with `np.searchsorted`):
- IMU (gyro + accel): linear interpolation between the valid records around the sweep time.
- GPS: the receiver holds its position between fixes, so consecutive records are not samples of the track;
  the knots are the records where the fix changes (plus the first valid record), and the position is interpolated
  between those change points. Heading (ENU yaw: 0 = east, counter-clockwise) and speed come from the knot
  segment the sweep falls in; a standing segment keeps the last heading seen while moving.
- Interpolation never bridges a gap: a bracket of knots wider than `max_gap` gives an invalid sample. A GPS segment
  faster than `gps_max_speed` (a fix jump, not motion) is invalid too.
- GPS is never extrapolated. Before the first and after the last change point the edge fix is held (speed 0,
  heading as on the edge segment) for at most `gps_hold` seconds (default `GPS_HOLD_S` = 1 s); further out the
  sample's GPS is invalid. Whether the car stopped or its receiver has not updated yet cannot be told from the
  records, so a held fix is only trusted briefly (at 12 m/s a 1 s old fix is at most 12 m stale), and a car that
  stops at the end of a sequence never drifts on along its last segment.
- IMU records outside the first/last record are linearly extrapolated from the edge pair up to `imu_max_gap`.
- Cameras and radar: the nearest record within a tolerance (default: half that sensor's median period), else
  that modality is invalid for the sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from src.contract import GPS_LAYOUT, gps_vector

NEAREST_SENSORS = ("rgb", "ir", "radar")
GPS_HOLD_S = 1.0  # seconds a GPS fix is held beyond the first/last change point (`cmht.readers.read_gps_imu` documents the conversion)


@dataclasses.dataclass(frozen=True, eq=False)
class GpsImu:
    """The GPS/IMU records of a sequence, converted (`cmht.readers.read_gps_imu` documents the conversion).

    t [N] s; lat, lon [N] decimal degrees; enu [N, 2] east, north m (anchored at the first valid fix);
    gyro [N, 3] rad/s; accel [N, 3] m/s^2; fix_changed [N]: a new position (the receiver holds the last fix
    between updates; the first valid record counts as new); valid [N]: the record parsed and is finite.
    Invalid rows hold zeros.
    """

    t: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    enu: np.ndarray
    gyro: np.ndarray
    accel: np.ndarray
    fix_changed: np.ndarray
    valid: np.ndarray

    def __len__(self) -> int:
        return len(self.t)


@dataclasses.dataclass(frozen=True, eq=False)
class SyncTable:
    """One sequence aligned to its S LiDAR sweeps.

    timestamps: float64 [S] sweep times (s). index[sensor]: int64 [S] record index of that sensor used for each
    sweep (lidar: the sweep itself; -1 where invalid). valid[modality]: bool [S] for lidar, rgb, ir, radar, gps,
    imu. gps: float32 [S, 5] in the sensor contract's layout (`contract.gps_vector`: east, north from the first
    fix, cos/sin heading, speed, each scaled), imu: float32 [S, 6] as recorded (gyro x, y, z rad/s, accel x, y,
    z m/s^2; `src.contract` documents the frame); both zeros where invalid.
    """

    timestamps: np.ndarray
    index: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    gps: np.ndarray
    imu: np.ndarray

    def __len__(self) -> int:
        return len(self.timestamps)

    def valid_counts(self) -> dict[str, int]:
        """How many sweeps have each modality after sync."""
        return {m: int(v.sum()) for m, v in self.valid.items()}


def default_tolerance(t_ref: np.ndarray) -> float:
    """Half the median period of a stream (inf for a single record: any distance is 'nearest')."""
    t_ref = np.asarray(t_ref, np.float64)
    if len(t_ref) < 2:
        return float("inf")
    return 0.5 * float(np.median(np.diff(t_ref)))


def nearest(t_query: np.ndarray, t_ref: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """For each query time the index of the closest reference time (sorted), and whether it is within tolerance."""
    t_query, t_ref = np.asarray(t_query, np.float64), np.asarray(t_ref, np.float64)
    if len(t_ref) == 0:
        return np.full(len(t_query), -1, np.int64), np.zeros(len(t_query), np.bool_)
    right = np.clip(np.searchsorted(t_ref, t_query), 1, max(len(t_ref) - 1, 1))
    left = right - 1
    if len(t_ref) == 1:
        left = right = np.zeros(len(t_query), np.int64)
    pick = np.where(np.abs(t_ref[right] - t_query) < np.abs(t_query - t_ref[left]), right, left)
    ok = np.abs(t_ref[pick] - t_query) <= tolerance
    return np.where(ok, pick, -1).astype(np.int64), ok


def _segments(
    t_query: np.ndarray, t_knots: np.ndarray, max_gap: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left knot, right knot, valid) of the segment used for each query: the bracket inside, the edge segment
    outside (extrapolation), and validity by the gap rules of the module docstring."""
    n = len(t_knots)
    right = np.clip(np.searchsorted(t_knots, t_query, side="right"), 1, max(n - 1, 1))
    left = right - 1
    if n == 1:
        left = right = np.zeros(len(t_query), np.int64)
    inside = (t_query >= t_knots[0]) & (t_query <= t_knots[-1])
    beyond = np.maximum(t_knots[0] - t_query, t_query - t_knots[-1])
    valid = np.where(inside, (t_knots[right] - t_knots[left]) <= max_gap, beyond <= max_gap)
    return left, right, valid


def interpolate(
    t_query: np.ndarray, t_knots: np.ndarray, values: np.ndarray, max_gap: float
) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-linear values [Q, D] at the query times from knots (t [K] strictly increasing, values [K, D]).

    Returns (values, valid); invalid rows are zeros. Outside the knots the edge segment is extrapolated up to
    `max_gap` seconds (a single knot is held).
    """
    t_query = np.asarray(t_query, np.float64)
    t_knots = np.asarray(t_knots, np.float64)
    values = np.asarray(values, np.float64).reshape(len(t_knots), -1)
    if len(t_knots) == 0:
        return np.zeros((len(t_query), values.shape[1])), np.zeros(len(t_query), np.bool_)
    left, right, valid = _segments(t_query, t_knots, max_gap)
    span = t_knots[right] - t_knots[left]
    w = np.divide(t_query - t_knots[left], span, out=np.zeros_like(t_query), where=span > 0)[:, None]
    out = values[left] + w * (values[right] - values[left])
    return np.where(valid[:, None], out, 0.0), valid


def gps_knots(fix_changed: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mask of the GPS records that are real samples of the track: the first valid record and each change."""
    valid = np.asarray(valid, np.bool_)
    knots = np.asarray(fix_changed, np.bool_) & valid
    if valid.any():
        knots[np.argmax(valid)] = True
    return knots


def gps_track(
    t_query: np.ndarray,
    t_knots: np.ndarray,
    enu_knots: np.ndarray,
    max_gap: float,
    max_speed: float,
    hold: float = GPS_HOLD_S,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(east-north [Q, 2], heading [Q], speed [Q], valid [Q]) interpolated between GPS change points; outside
    them the edge fix is held (speed 0) for at most `hold` seconds (`cmht.readers.read_gps_imu` documents the conversion), never extrapolated."""
    t_query = np.asarray(t_query, np.float64)
    t_knots = np.asarray(t_knots, np.float64)
    enu_knots = np.asarray(enu_knots, np.float64).reshape(-1, 2)
    q = len(t_query)
    if len(t_knots) == 0:
        return np.zeros((q, 2)), np.zeros(q), np.zeros(q), np.zeros(q, np.bool_)
    inside = (t_query >= t_knots[0]) & (t_query <= t_knots[-1])
    beyond = np.maximum(t_knots[0] - t_query, t_query - t_knots[-1])
    edge = np.where(t_query < t_knots[0], 0, len(t_knots) - 1)
    between, valid = interpolate(t_query, t_knots, enu_knots, max_gap)
    pos = np.where(inside[:, None], between, enu_knots[edge])
    valid = np.where(inside, valid, beyond <= hold)
    if len(t_knots) == 1:  # a single fix: position known near it, motion unknown
        return np.where(valid[:, None], pos, 0.0), np.zeros(q), np.zeros(q), valid
    step = np.diff(enu_knots, axis=0)  # segment j goes from knot j to knot j + 1
    dist = np.hypot(step[:, 0], step[:, 1])
    seg_speed = dist / np.diff(t_knots)
    moving = dist > 1e-6
    # heading of the latest moving segment at or before each segment (0 before the first movement)
    last_moving = np.maximum.accumulate(np.where(moving, np.arange(len(step)), -1))
    seg_heading = np.where(last_moving >= 0, np.arctan2(step[last_moving, 1], step[last_moving, 0]), 0.0)
    left, _, _ = _segments(t_query, t_knots, max_gap)
    valid &= seg_speed[left] <= max_speed
    zero = ~valid
    return (
        np.where(zero[:, None], 0.0, pos),
        np.where(zero, 0.0, seg_heading[left]),
        np.where(zero | ~inside, 0.0, seg_speed[left]),
        valid,
    )


def sync_sequence(
    lidar_t: np.ndarray,
    sensor_t: Mapping[str, np.ndarray],
    gps_imu: GpsImu | None,
    *,
    tolerance: Mapping[str, float] | None = None,
    gps_max_gap: float = 10.0,
    imu_max_gap: float = 1.0,
    gps_max_speed: float = 80.0,
    gps_hold: float = GPS_HOLD_S,
) -> SyncTable:
    """Align one sequence to its LiDAR sweeps (times `lidar_t`, seconds, increasing).

    sensor_t: timestamps of the nearest-neighbour sensors present (rgb, ir, radar; a missing key = that sensor
    is absent, all invalid). gps_imu: the sequence's GPS/IMU records (t, enu, gyro, accel, fix_changed and valid
    are read); None = absent, GPS and IMU invalid. tolerance: seconds per sensor, overriding half the median period.
    """
    lidar_t = np.asarray(lidar_t, np.float64)
    s = len(lidar_t)
    if s and np.any(np.diff(lidar_t) <= 0):
        raise ValueError("sync: LiDAR timestamps must increase strictly")
    tolerance = dict(tolerance or {})
    index: dict[str, np.ndarray] = {"lidar": np.arange(s, dtype=np.int64)}
    valid: dict[str, np.ndarray] = {"lidar": np.ones(s, np.bool_)}
    for name in NEAREST_SENSORS:
        t_ref = np.asarray(sensor_t.get(name, ()), np.float64)
        tol = tolerance.get(name, default_tolerance(t_ref))
        index[name], valid[name] = nearest(lidar_t, t_ref, tol)
    gps = np.zeros((s, len(GPS_LAYOUT)), np.float32)
    imu = np.zeros((s, 6), np.float32)
    valid["gps"], valid["imu"] = np.zeros(s, np.bool_), np.zeros(s, np.bool_)
    if gps_imu is not None:
        t = np.asarray(gps_imu.t, np.float64)
        ok = np.asarray(gps_imu.valid, np.bool_)
        knots = gps_knots(gps_imu.fix_changed, ok)
        en, heading, speed, valid["gps"] = gps_track(
            lidar_t, t[knots], np.asarray(gps_imu.enu)[knots], gps_max_gap, gps_max_speed, gps_hold
        )
        track = gps_vector(en[:, 0], en[:, 1], heading, speed)
        gps = np.where(valid["gps"][:, None], track, np.float32(0.0))
        rates = np.concatenate([np.asarray(gps_imu.gyro), np.asarray(gps_imu.accel)], axis=-1)[ok]
        imu_values, valid["imu"] = interpolate(lidar_t, t[ok], rates, imu_max_gap)
        imu = imu_values.astype(np.float32)
    return SyncTable(lidar_t, index, valid, gps, imu)


def sync_kwargs(data_cfg: Any) -> dict[str, Any]:
    """The `sync_sequence` keyword arguments a `DataConfig` sets."""
    return {
        "tolerance": dict(data_cfg.sync_tolerance),
        "gps_max_gap": data_cfg.sync_gps_max_gap,
        "imu_max_gap": data_cfg.sync_imu_max_gap,
        "gps_max_speed": data_cfg.sync_gps_max_speed,
    }
