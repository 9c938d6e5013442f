"""Minimum-time lap of a track from its centreline curvature and the car's limits (a point-mass bound).

Why: a lap time means little without the limit beside it. The bound is the standard quasi-steady speed
profile: v(s) <= min(v_max, sqrt(a_lat / |kappa(s)|)), then a forward pass limits acceleration
(v_{i+1}^2 <= v_i^2 + 2 a_acc ds) and a backward pass limits braking (v_i^2 <= v_{i+1}^2 + 2 a_brake ds),
both periodic (a flying lap). Lap time = integral ds / v, exact per segment for constant acceleration.
Acceleration and cornering are treated as independent limits (no friction ellipse), so the bound is a
little optimistic; it is driven on the centreline, not a racing line, so it is not the true optimum.

Car limits of the JAX env (`src/envs/racecar/params.py`, `EnvParams`): v_max = `max_speed` (the motor's target
speed at full throttle), acceleration and braking = `max_accel` (the clip on the motor's tracking law; the
first-order approach `speed_gain * (v_max - v)` near v_max is ignored), lateral = `mu * g` (the tyres' force
saturates at mu * Fz). `CarLimits.from_params` reads exactly these.

CLI: `python -m src.envs.laptime [--max-speed 5 10 ...] [--track MAP.yaml ...]` prints, per track, the
flat-out lap (length / v_max: what flooring the throttle would give if the car never left the track) against
the minimum-time lap, so car limits can be picked under which flooring the throttle cannot reach the limit.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
from scipy import ndimage

from src.envs.racecar.params import EnvParams
from src.envs.surfaces import G
from src.envs.tracks.geometry import Track
from src.envs.tracks.registry import bundled_tracks, get_track


@dataclasses.dataclass(frozen=True)
class CarLimits:
    """Point-mass limits: top speed (m/s), longitudinal acceleration and braking, lateral acceleration (m/s^2)."""

    max_speed: float
    max_accel: float
    max_brake: float
    max_lateral: float

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"CarLimits.{f.name} must be a positive finite number, got {v!r}")

    @classmethod
    def from_params(cls, params) -> CarLimits:
        """The limits of a JAX env `EnvParams` (or any object with max_speed, max_accel and mu)."""
        return cls(
            max_speed=float(params.max_speed),
            max_accel=float(params.max_accel),
            max_brake=float(params.max_accel),
            max_lateral=float(params.mu) * G,
        )


def default_limits(**overrides: float) -> CarLimits:
    """Limits of the JAX env's default car (`EnvParams` defaults), with `max_speed` etc. overridden."""
    names = ("max_speed", "max_accel", "mu")
    defaults = {f.name: f.default for f in dataclasses.fields(EnvParams) if f.name in names}
    base = CarLimits.from_params(argparse.Namespace(**defaults))
    return dataclasses.replace(base, **overrides)


@dataclasses.dataclass(frozen=True)
class SpeedProfile:
    """The minimum-time speed profile on a uniformly resampled centreline."""

    s: np.ndarray  # [N] arc length (m) of each sample
    curvature: np.ndarray  # [N] smoothed signed curvature (1/m)
    speed: np.ndarray  # [N] speed (m/s)
    lap_time: float  # s
    length: float  # m


def resampled_curvature(
    track: Track, ds: float = 0.05, smooth_points: float = 0.2, smooth_curvature: float = 0.25
) -> np.ndarray:
    """Signed curvature [N] at N uniform arc-length samples (spacing ~ds m) of the closed centreline.

    Map centrelines are pixel-noisy and finite differences amplify noise, so: resample uniformly (periodic
    linear interpolation), smooth the points with a periodic Gaussian of `smooth_points` m (this shrinks a
    circle of radius r by a factor exp(-sigma^2 / 2 r^2), 0.2 % at 0.2 m and r = 3 m), take
    `Track.curvature`'s periodic finite differences, then smooth the curvature over `smooth_curvature` m
    (which leaves a constant curvature exact).
    """
    if ds <= 0 or smooth_points < 0 or smooth_curvature < 0:
        raise ValueError(
            f"resampled_curvature: need ds > 0 and smoothing >= 0, got ds={ds}, "
            f"smooth_points={smooth_points}, smooth_curvature={smooth_curvature}"
        )
    n = max(int(np.ceil(track.length / ds)), 16)
    step = track.length / n
    s_new = np.arange(n) * step
    s_old = np.concatenate([track.arc_length, [track.length]])
    c_old = np.concatenate([track.centreline, track.centreline[:1]])
    pts = np.stack([np.interp(s_new, s_old, c_old[:, k]) for k in range(2)], axis=1)
    if smooth_points > 0:
        pts = ndimage.gaussian_filter1d(pts, sigma=smooth_points / step, axis=0, mode="wrap")
    ones = np.ones(n)
    kappa = Track(track.name, pts, ones, ones).curvature()
    if smooth_curvature > 0:
        kappa = ndimage.gaussian_filter1d(kappa, sigma=smooth_curvature / step, mode="wrap")
    return kappa


def speed_profile(track: Track, limits: CarLimits, ds: float = 0.05) -> SpeedProfile:
    """The periodic minimum-time speed profile of `track` under `limits` (see the module docstring)."""
    kappa = resampled_curvature(track, ds)
    length = track.length
    n = len(kappa)
    h = length / n
    with np.errstate(divide="ignore"):
        v_corner = np.sqrt(limits.max_lateral / np.abs(kappa))
    v = np.minimum(limits.max_speed, v_corner)
    # Both passes start at the slowest point (no limit can lower it) and go round twice, which settles
    # the wrap-around of the closed loop.
    start = int(np.argmin(v))
    forward = (start + np.arange(2 * n + 1)) % n
    for i_prev, i in zip(forward[:-1], forward[1:]):
        v[i] = min(v[i], np.sqrt(v[i_prev] ** 2 + 2 * limits.max_accel * h))
    backward = (start - np.arange(2 * n + 1)) % n
    for i_next, i in zip(backward[:-1], backward[1:]):
        v[i] = min(v[i], np.sqrt(v[i_next] ** 2 + 2 * limits.max_brake * h))
    dt = 2 * h / (v + np.roll(v, -1))
    return SpeedProfile(np.arange(n) * h, kappa, v, float(dt.sum()), float(length))


def min_lap_time(track: Track, limits: CarLimits, ds: float = 0.05) -> float:
    """Minimum-time flying lap (s) of `track` under `limits`."""
    return speed_profile(track, limits, ds).lap_time


def flat_out_lap_time(track: Track, limits: CarLimits) -> float:
    """length / v_max: the lap at full throttle everywhere, ignoring the cornering limit."""
    return track.length / limits.max_speed


def lap_table(tracks: dict[str, Track], speeds: list[float], base: CarLimits) -> list[dict]:
    """Rows {track, length_m, max_speed, flat_out_s, min_time_s, gap_pct} for each track and top speed."""
    rows = []
    for name, track in tracks.items():
        for vmax in speeds:
            lim = dataclasses.replace(base, max_speed=float(vmax))
            flat, best = flat_out_lap_time(track, lim), min_lap_time(track, lim)
            rows.append(
                {
                    "track": name,
                    "length_m": round(track.length, 2),
                    "max_speed": float(vmax),
                    "flat_out_s": round(flat, 3),
                    "min_time_s": round(best, 3),
                    "gap_pct": round(100 * (best / flat - 1), 2),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print flat-out vs minimum-time laps of the bundled tracks (and maps given) for the default car."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--track", nargs="*", default=[], help="extra map .yaml paths")
    parser.add_argument("--max-speed", nargs="*", type=float, default=None, help="top speeds to tabulate (m/s)")
    args = parser.parse_args(argv)
    base = default_limits()
    tracks = dict(bundled_tracks())
    for path in args.track:
        t = get_track(path)
        tracks[t.name] = t
    speeds = args.max_speed or [base.max_speed]
    print(
        f"car: a_accel = a_brake = {base.max_accel} m/s^2, a_lat = mu g = {base.max_lateral:.2f} m/s^2 "
        "(flat-out = length / v_max; gap = min-time / flat-out - 1)"
    )
    print(f"{'track':<14}{'length m':>10}{'v_max':>8}{'flat-out s':>12}{'min-time s':>12}{'gap %':>8}")
    for r in lap_table(tracks, speeds, base):
        print(
            f"{r['track']:<14}{r['length_m']:>10.1f}{r['max_speed']:>8.1f}{r['flat_out_s']:>12.2f}"
            f"{r['min_time_s']:>12.2f}{r['gap_pct']:>8.1f}"
        )


if __name__ == "__main__":
    main()
