"""`check_track`: whether a track can be driven as built; the simulators call it on every track they build."""

from __future__ import annotations

import numpy as np

from src.envs.tracks.geometry import Track, inside_loop, loop_segments, signed_area


def _crossing_pairs(segs: np.ndarray, closed_len: np.ndarray) -> np.ndarray:
    """[K, 2] pairs of non-adjacent segments that properly cross (orientation test).

    `closed_len` gives the number of segments of each closed polyline in `segs` (in order), so that
    consecutive segments of one loop, which share an end point, are not counted. Segments are bucketed on a
    grid of cells about two median segment lengths wide and only segments that share a cell are tested, so
    the cost grows with the number of segments, not its square.
    """
    p, q = segs[:, :2], segs[:, 2:]
    lo, hi = np.minimum(p, q), np.maximum(p, q)
    corner = lo.min(0)
    extent = float((hi.max(0) - corner).max())
    cell = max(2.0 * float(np.median(np.linalg.norm(q - p, axis=1))), extent / 2048, 1e-9)
    c0 = np.floor((lo - corner) / cell).astype(np.int64)
    c1 = np.floor((hi - corner) / cell).astype(np.int64)
    nx, ny = c1[:, 0] - c0[:, 0] + 1, c1[:, 1] - c0[:, 1] + 1
    count = nx * ny
    seg = np.repeat(np.arange(len(segs)), count)
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    key = (c0[seg, 0] + k % nx[seg]) * (int(c1[:, 1].max()) + 1) + c0[seg, 1] + k // nx[seg]
    order = np.lexsort((seg, key))
    key, seg = key[order], seg[order]
    pairs = [np.zeros((0, 2), np.int64)]
    for off in range(1, len(key)):  # the members of a cell are consecutive after sorting
        same = key[off:] == key[:-off]
        if not same.any():
            break
        pairs.append(np.stack([seg[:-off][same], seg[off:][same]], 1))
    pairs = np.unique(np.concatenate(pairs), axis=0)
    i, j = pairs[:, 0], pairs[:, 1]

    def orient(a, b, c):
        return np.sign((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))

    cross = (orient(p[i], q[i], p[j]) * orient(p[i], q[i], q[j]) < 0) & (
        orient(p[j], q[j], p[i]) * orient(p[j], q[j], q[i]) < 0
    )
    loop = np.repeat(np.arange(len(closed_len)), closed_len)
    idx = np.concatenate([np.arange(n) for n in closed_len])
    gap = np.abs(idx[i] - idx[j])
    adjacent = (loop[i] == loop[j]) & ((gap <= 1) | (gap >= closed_len[loop[i]] - 1))
    return pairs[cross & ~adjacent]


def check_track(track: Track, min_width: float = 0.0, min_gap: float = 0.0) -> None:
    """Raise ValueError, naming the track and where, when it cannot be driven as built: narrower than
    `min_width` (left + right), offset walls that fold over at a turn tighter than the width on its inside,
    a centreline or wall that crosses itself or another, explicit walls that do not run on either side of the
    centreline in the driving direction, or (offset walls, the procedural generator's clearance rule) a wall
    within `min_gap` of another part of the corridor. The simulators call it on every track they build."""
    name = track.name
    s = track.arc_length
    total = track.width_left + track.width_right
    if total.min() < min_width - 1e-9:
        i = int(np.argmin(total))
        raise ValueError(
            f"track {name!r}: width {total[i]:.3f} m at s = {s[i]:.1f} m < min_width {min_width} m"
        )
    c = track.centreline
    if track.offset_walls:
        k = track.curvature()
        inside = np.where(k > 0, track.width_left, track.width_right)
        fold = np.abs(k) * inside
        if fold.max() >= 1.0:
            i = int(np.argmax(fold))
            raise ValueError(
                f"track {name!r}: at s = {s[i]:.1f} m ({c[i, 0]:.2f}, {c[i, 1]:.2f}) the centreline turns with "
                f"radius {1.0 / abs(k[i]):.2f} m, tighter than the {inside[i]:.2f} m width on the inside of the "
                "turn, so the walls offset from it fold over (self-intersect); ease the turn, narrow the track "
                "there, or give the track its walls (a map, traced from its image by load_map)"
            )
    left, right = track.boundaries()
    loops = (c, left, right)
    what = np.repeat(np.array(["centreline", "left wall", "right wall"]), [len(b) for b in loops])
    segs = np.concatenate([loop_segments(b) for b in loops])
    crossing = _crossing_pairs(segs, np.array([len(b) for b in loops]))
    if len(crossing):
        i, j = crossing[0]
        x, y = segs[i, :2]
        raise ValueError(
            f"track {name!r}: centreline or walls self-intersect ({len(crossing)} crossing(s); the first between "
            f"the {what[i]} and the {what[j]} near ({x:.2f}, {y:.2f}))"
        )
    if not track.offset_walls:
        direction = np.sign(signed_area(c))
        inner, outer = (left, right) if direction > 0 else (right, left)
        if np.sign(signed_area(left)) != direction or np.sign(signed_area(right)) != direction:
            raise ValueError(f"track {name!r}: the walls do not run in the centreline's driving direction")
        if not (inside_loop(c[0], outer) and not inside_loop(c[0], inner) and inside_loop(inner[0], outer)):
            raise ValueError(
                f"track {name!r}: the centreline does not run between its walls (left wall on its left, right "
                "wall on its right)"
            )
        return
    # A wall vertex must stay outside every other part's corridor (+ gap); "other part" = far along the loop.
    ds = np.abs(s[:, None] - s[None])
    far = np.minimum(ds, track.length - ds) > 3.0 * total.max()
    half = np.maximum(track.width_left, track.width_right)
    for wall in (left, right):
        d = np.linalg.norm(wall[:, None] - c[None], axis=-1)
        if (far & (d < half[None] + min_gap)).any():
            raise ValueError(f"track {name!r}: a wall comes within {min_gap} m of another part of the track")
