"""Exact ray casting against the track's walls for the lidar and the camera, per car, jit/vmap-able.

Rays are cast by a polar sweep over the walls instead of testing every ray against every segment: a ray
leaving the track first meets a wall from its track side, so only segments that face the sensor and come
within range can be hit. Each such segment covers the contiguous run of rays between the angles of its two
end points; those (ray, segment) pairs (1.1 per ray on average on the bundled tracks) are intersected exactly
and each ray keeps its nearest hit (a scatter-min). Cost is O(walls + rays) per car and ranges equal a
brute-force reference to float precision. Pairs are swept in chunks of `ray_depth` x rays; a pose that sees
more pairs takes another chunk, so the size only trades speed, never correctness.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from src.envs.racecar.params import EnvParams

# Least-squares fit of atan(u) / u as a polynomial in u**2 on [0, tan(pi/8)] (error < 2e-8 rad).
_ATAN_COEFFS = (0.999999987, -0.333329072, 0.199781389, -0.138909254, 0.0811282565)


def _atan2(y: jax.Array, x: jax.Array) -> jax.Array:
    """atan2 in (-pi, pi] from a polynomial: XLA's CPU atan2 is not vectorised and costs ~16 ns a value."""
    ax, ay = jnp.abs(x), jnp.abs(y)
    steep = ay > ax
    a = jnp.where(steep, ax, ay) / jnp.maximum(jnp.where(steep, ay, ax), 1e-30)  # in [0, 1]
    high = a > np.tan(np.pi / 8)
    u = jnp.where(high, (a - 1) / (a + 1), a)  # atan(a) = pi/4 + atan(u) above tan(pi/8)
    z = u * u
    poly = _ATAN_COEFFS[-1]
    for c in _ATAN_COEFFS[-2::-1]:
        poly = poly * z + c
    r = jnp.where(high, np.pi / 4, 0.0) + u * poly
    r = jnp.where(steep, np.pi / 2 - r, r)
    r = jnp.where(x < 0, np.pi - r, r)
    return jnp.where(y < 0, -r, r)


def _prefix_sum(v: jax.Array, block: int = 32) -> jax.Array:
    """Inclusive prefix sum of a float vector of small integers (exact below 2**24) as two small triangular
    matmuls: XLA lowers `jnp.cumsum` to a reduce-window whose cost grows with the square of the length."""
    n = v.shape[0]
    k = -(-n // block)
    inner = jnp.pad(v, (0, k * block - n)).reshape(k, block) @ jnp.triu(jnp.ones((block, block), v.dtype))
    outer = inner[:, -1] @ jnp.triu(jnp.ones((k, k), v.dtype), 1)  # totals of the blocks before
    return (inner + outer[:, None]).reshape(-1)[:n]


@dataclasses.dataclass(frozen=True)
class Fan:
    """`n` rays from one origin, in increasing angle relative to the sensor heading, spread over `fov` rad:
    evenly in angle (`pinhole=False`, a lidar, first and last ray on the edges) or evenly in tan(angle) through
    pixel centres (`pinhole=True`, one ray per camera column, right to left)."""

    n: int
    fov: float
    pinhole: bool = False
    depth: float = 2.0  # (ray, wall) pairs per ray swept in one chunk (EnvParams.ray_depth)

    def angles(self) -> np.ndarray:
        if self.pinhole:
            return np.arctan((np.arange(self.n) + 0.5 - self.n / 2) / self.focal())
        return np.linspace(-self.fov / 2, self.fov / 2, self.n)

    def index(self, psi: jax.Array) -> jax.Array:
        """Continuous ray index of relative angles `psi` in (-pi, pi]; ray i sits at index i, and the result is
        clipped to [-1, n] (out of the fan)."""
        if self.pinhole:
            tan = jnp.tan(jnp.clip(psi, -1.5, 1.5))  # beyond +-86 deg is outside any pinhole fan
            x = tan * self.focal() + self.n / 2 - 0.5
            x = jnp.where(jnp.abs(psi) < 1.5, x, jnp.where(psi > 0, self.n, -1.0))
        else:
            x = (psi + self.fov / 2) * ((self.n - 1) / self.fov)
        return jnp.clip(x, -1.0, float(self.n))

    def focal(self) -> float:
        return (self.n / 2) / np.tan(self.fov / 2)  # in pixels, for a pinhole fan


def cast_rays(
    params: EnvParams,
    origin: jax.Array,
    heading: jax.Array,
    fan: Fan,
    max_range: float,
    segments: bool = True,
) -> tuple[jax.Array, jax.Array | None]:
    """Distance (capped at `max_range`) and, if `segments`, the hit wall segment (-1 = none) of the rays of
    `fan` from `origin` [2], the fan's centre pointing at world angle `heading`.

    Polar sweep: a ray from a point on the track leaves it through a segment that faces the point (the point
    is on the segment's left), so only facing segments within range are candidates. A facing segment covers
    the rays between the angles of its end points (counter-clockwise; a span over the +-pi cut is split in
    two). Those (ray, segment) pairs are intersected exactly, `fan.depth * n` at a time, and each ray keeps
    its nearest hit; a rare second chunk runs when a pose sees more pairs. End points shared by two segments
    map to one index, so no ray slips between them."""
    c, s = jnp.cos(heading), jnp.sin(heading)
    x0, y0, x1, y1 = params.walls.T
    ax, ay = x0 - origin[0], y0 - origin[1]
    ax, ay = c * ax + s * ay, c * ay - s * ax  # start point, sensor frame
    ex, ey = x1 - x0, y1 - y0
    ex, ey = c * ex + s * ey, c * ey - s * ex
    cross = ax * ey - ay * ex  # > 0: the origin is on the segment's (track) side
    closest = jnp.clip(-(ax * ex + ay * ey) / jnp.maximum(ex * ex + ey * ey, 1e-12), 0.0, 1.0)
    keep = (cross > 0) & ((ax + closest * ex) ** 2 + (ay + closest * ey) ** 2 < max_range**2)
    psi = _atan2(ay, ax)  # start point's angle relative to the heading
    x = fan.index(psi)
    x_end, psi_end = x[params.wall_next], psi[params.wall_next]
    wraps = psi - psi_end > np.pi  # the span crosses the +-pi cut
    n = fan.n
    lo = jnp.maximum(jnp.ceil(x), 0.0)
    hi = jnp.minimum(jnp.floor(x_end), n - 1.0)
    # rays of each span: [lo, hi], or [lo, n - 1] then [0, hi] for a span over the cut
    head = jnp.maximum(jnp.where(wraps, n - lo, hi - lo + 1), 0.0)
    count = jnp.where(keep, head + jnp.where(wraps, jnp.maximum(hi + 1, 0.0), 0.0), 0.0)
    ends = _prefix_sum(count)
    starts = ends - count
    # per wall: t = cross / (d x e); pair p of the wall's span is ray p + lo - start before p = start + head,
    # and ray p - start - head after it (all small integers, exact in float32)
    table = jnp.stack([ex, ey, cross, lo - starts, starts + head], 1)
    starts, total = starts.astype(jnp.int32), ends[-1].astype(jnp.int32)
    rays = fan.angles()
    directions = jnp.asarray(np.stack([np.cos(rays), np.sin(rays)], 1), jnp.float32)
    size = int(np.ceil(fan.depth * n)) + 32

    def chunk(carry):
        k, r, hit = carry
        base = k * size
        pair = base + jnp.arange(size)
        first = jnp.where(starts > base, starts - base, size)  # walls whose span starts in this chunk
        marks = jnp.zeros(size, jnp.float32).at[first].add(1.0, mode="drop")
        seg = (starts <= base).sum() - 1 + _prefix_sum(marks).astype(jnp.int32)
        row = table[seg]
        p = pair.astype(jnp.float32)
        ray = jnp.clip(jnp.where(p < row[:, 4], row[:, 3] + p, p - row[:, 4]).astype(jnp.int32), 0, n - 1)
        d = directions[ray]
        t = row[:, 2] / (d[:, 0] * row[:, 1] - d[:, 1] * row[:, 0])
        valid = pair < total
        target = jnp.where(valid, ray, n)
        t = jnp.where(valid & (t > 0), t, jnp.inf)
        new_r = r.at[target].min(t, mode="drop")
        if segments:
            hit = jnp.where(new_r < r, -1, hit)
            hit = hit.at[target].max(jnp.where(t == new_r[ray], seg, -1), mode="drop")
        return k + 1, new_r, hit

    _, r, hit = jax.lax.while_loop(
        lambda carry: carry[0] * size < total,
        chunk,
        (jnp.zeros((), jnp.int32), jnp.full(n, jnp.inf), jnp.full(n, -1, jnp.int32)),
    )
    missed = r >= max_range
    return jnp.where(missed, max_range, r), (jnp.where(missed, -1, hit) if segments else None)


def lidar_fan(params: EnvParams) -> Fan:
    """The lidar's beams: `lidar_rays` evenly spaced from -fov/2 to +fov/2 relative to the heading."""
    return Fan(params.lidar_rays, params.lidar_fov, depth=params.ray_depth)


def camera_fan(params: EnvParams) -> Fan:
    """One ray per camera column, right to left."""
    return Fan(
        params.camera_width, float(np.deg2rad(params.camera_fov)), pinhole=True, depth=params.camera_ray_depth
    )
