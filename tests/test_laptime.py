"""Minimum-time lap: analytic answers on a circle and an oval, plausible figures on real maps."""

from pathlib import Path

import numpy as np
import pytest

from src.envs.laptime import (
    CarLimits,
    default_limits,
    flat_out_lap_time,
    lap_table,
    min_lap_time,
    speed_profile,
)
from src.envs.tracks.geometry import Track
from src.envs.tracks.registry import bundled_tracks, get_track

SPIELBERG = Path(__file__).parent / "fixtures" / "tracks" / "Spielberg" / "Spielberg.yaml"


def _track(points: np.ndarray, name: str) -> Track:
    ones = np.ones(len(points))
    return Track(name, points, ones, ones)


def _circle(r: float, n: int = 2000) -> Track:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return _track(r * np.stack([np.cos(a), np.sin(a)], 1), "circle")


def _oval(straight: float, r: float, step: float = 0.05) -> Track:
    """Two straights of length `straight` joined by semicircles of radius r, anticlockwise."""
    m = int(straight / step)
    k = int(np.pi * r / step)
    bottom = np.stack([np.arange(m) * straight / m, np.full(m, -r)], 1)
    a1 = -np.pi / 2 + np.arange(k) * np.pi / k
    right = np.stack([straight + r * np.cos(a1), r * np.sin(a1)], 1)
    top = np.stack([straight - np.arange(m) * straight / m, np.full(m, r)], 1)
    a2 = np.pi / 2 + np.arange(k) * np.pi / k
    left = np.stack([r * np.cos(a2), r * np.sin(a2)], 1)
    return _track(np.concatenate([bottom, right, top, left]), "oval")


@pytest.mark.parametrize("r, vmax", [(3.0, 20.0), (3.0, 4.0), (10.0, 8.0)])
def test_circle_lap_is_analytic(r, vmax):
    lim = CarLimits(max_speed=vmax, max_accel=5.0, max_brake=6.0, max_lateral=9.0)
    prof = speed_profile(_circle(r), lim)
    v = min(vmax, np.sqrt(9.0 * r))
    # 0.2 % of point smoothing shrinkage (documented) is the only error
    np.testing.assert_allclose(np.abs(prof.curvature), 1 / r, rtol=5e-3)
    np.testing.assert_allclose(prof.speed, v, rtol=5e-3)
    assert prof.lap_time == pytest.approx(2 * np.pi * r / v, rel=5e-3)


def test_oval_matches_hand_computation():
    # Smoothing rounds the straight-to-arc corners (a real car needs a transition too), which saves a
    # roughly fixed time per corner, so the oval is long enough that the hand computation is within 1 %.
    straight, r = 100.0, 8.0
    lim = CarLimits(max_speed=12.0, max_accel=4.0, max_brake=8.0, max_lateral=9.0)
    vc = np.sqrt(9.0 * r)  # 8.5 m/s in the turns
    d_acc, d_brk = (12.0**2 - vc**2) / (2 * 4.0), (12.0**2 - vc**2) / (2 * 8.0)
    t_straight = (12.0 - vc) / 4.0 + (12.0 - vc) / 8.0 + (straight - d_acc - d_brk) / 12.0
    expected = 2 * (t_straight + np.pi * r / vc)
    prof = speed_profile(_oval(straight, r), lim)
    assert prof.lap_time == pytest.approx(expected, rel=0.01)
    assert prof.speed.max() == pytest.approx(12.0)  # the straights reach v_max
    assert prof.speed.min() == pytest.approx(vc, rel=0.01)
    # The ramps obey the limits: v dv/ds never exceeds the accel (forward) or braking (backward) limit.
    dv2 = (np.roll(prof.speed, -1) ** 2 - prof.speed**2) / (2 * (prof.s[1] - prof.s[0]))
    assert dv2.max() <= 4.0 + 1e-6 and dv2.min() >= -8.0 - 1e-6
    # Flat-out ignores the turns, so it is faster than the bound here.
    assert flat_out_lap_time(_oval(straight, r), lim) < prof.lap_time


def test_bad_limits_are_named():
    with pytest.raises(ValueError, match="max_lateral"):
        CarLimits(max_speed=5.0, max_accel=1.0, max_brake=1.0, max_lateral=0.0)


def test_default_car_limits_come_from_env_params():
    from src.envs.racecar.params import EnvParams

    lim = default_limits()
    fields = {f.name: f.default for f in __import__("dataclasses").fields(EnvParams)}
    assert lim.max_speed == fields["max_speed"] and lim.max_accel == fields["max_accel"]
    assert lim.max_lateral == pytest.approx(fields["mu"] * 9.81)


def test_real_tracks_give_plausible_laps():
    tracks = dict(bundled_tracks())
    tracks["Spielberg"] = get_track(SPIELBERG)
    rows = lap_table(tracks, [5.0, 15.0], default_limits())
    for row in rows:
        assert np.isfinite(row["min_time_s"]) and row["min_time_s"] >= row["flat_out_s"] - 1e-6
        # never slower than a lap at the slowest plausible corner speed (2 m/s)
        assert row["min_time_s"] < row["length_m"] / 2.0
    fast = {r["track"]: r for r in rows if r["max_speed"] == 15.0}
    assert all(r["gap_pct"] > 20 for r in fast.values())  # at 15 m/s the corners bind on every track
    assert min_lap_time(tracks["Spielberg"], default_limits()) > 60.0  # 343 m at <= 5 m/s
