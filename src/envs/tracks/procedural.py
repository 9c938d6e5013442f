"""Seeded procedural circuits: walls offset from a smooth random centreline by the widths."""

from __future__ import annotations

import numpy as np

from src.envs.tracks.geometry import Track, resample_closed
from src.envs.tracks.validation import check_track


def procedural_track(
    seed: int,
    *,
    n_points: int = 400,
    mean_radius: float = 10.0,
    n_harmonics: int = 4,
    amplitude: float = 0.3,
    min_width: float = 2.0,
    max_width: float = 3.0,
    min_curvature_radius: float = 2.5,
    min_gap: float = 0.5,
    name: str | None = None,
    max_tries: int = 200,
) -> Track:
    """A smooth random closed circuit, counter-clockwise, from a seed.

    Polar form r(theta) = R (1 + sum_k a_k cos(k theta + phi_k)) for k = 2 .. n_harmonics + 1 (a periodic
    Fourier series, so the curve is smooth and closed by construction), resampled to `n_points` equally spaced
    points. The total width varies smoothly in [min_width, max_width]. Candidates that self-intersect, turn
    tighter than `min_curvature_radius`, or bring a wall within `min_gap` of another part are rejected and
    the next candidate from the same generator is tried (so a seed always gives the same track).
    """
    rng = np.random.default_rng(seed)
    theta = np.linspace(0.0, 2 * np.pi, 4096, endpoint=False)
    k = np.arange(2, n_harmonics + 2)
    for _ in range(max_tries):
        a = rng.uniform(0.0, amplitude, len(k)) / np.sqrt(k - 1)
        phi = rng.uniform(0.0, 2 * np.pi, len(k))
        wk = rng.integers(1, 4)
        wphi = rng.uniform(0.0, 2 * np.pi)
        r = mean_radius * (1.0 + (a[:, None] * np.cos(k[:, None] * theta + phi[:, None])).sum(0))
        if r.min() <= 0.2 * mean_radius:
            continue
        dense = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
        centre = resample_closed(dense, n_points)
        ang = np.arctan2(centre[:, 1], centre[:, 0])
        width = min_width + (max_width - min_width) * 0.5 * (1.0 + np.cos(wk * ang + wphi))
        track = Track(name or f"procedural_{seed}", centre, width / 2, width / 2)
        if np.abs(track.curvature()).max() > 1.0 / min_curvature_radius:
            continue
        try:
            check_track(track, min_width=min_width, min_gap=min_gap)
        except ValueError:
            continue
        return track
    raise ValueError(
        f"procedural_track(seed={seed}): no valid track in {max_tries} tries; relax the constraints"
    )
