"""A map image -> the track's loop: the free region that forms it, its two walls, its mid-line (pixel units).

The loop is the connected free component with one enclosed obstacle (maps that draw walls as thin lines have
free space outside them too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from src.envs.tracks.geometry import resample_closed, signed_area


def free_loop(free: np.ndarray, path: Path, seeds: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(loop, infield) masks: the free component that forms the track's loop and the obstacle it encloses.

    With `seeds` ([K, 2] (row, col) pixels, e.g. the waypoints), the component most of them lie in. Without,
    the loop is found by topology: a free component that does not touch the image border and encloses an
    obstacle, and whose enclosed region holds no other such component (maps that draw the walls as thin lines
    have free space outside the track, which encloses the track, and inside it, which encloses nothing)."""
    labels, n = ndimage.label(free)  # 4-connected free space; the obstacles are 8-connected
    if n == 0:
        raise ValueError(f"{path}: the map has no free space")
    if seeds is not None:
        r, c = np.round(seeds).astype(np.int64).T
        ok = (r >= 0) & (r < free.shape[0]) & (c >= 0) & (c < free.shape[1])
        hits = np.bincount(labels[r[ok], c[ok]], minlength=n + 1)[1:]
        if hits.sum() == 0:
            raise ValueError(f"{path}: none of the waypoints lies in the map's free space")
        candidates = [int(np.argmax(hits)) + 1]
    else:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        on_border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        candidates = [
            i + 1 for i in np.flatnonzero(sizes >= 0.01 * sizes.max()) if i + 1 not in set(on_border.tolist())
        ]
    rings = {}
    for lab in candidates:
        region = labels == lab
        others, m = ndimage.label(~region, structure=np.ones((3, 3), bool))
        border = set(np.unique(np.concatenate([others[0], others[-1], others[:, 0], others[:, -1]])).tolist())
        holes = [i for i in range(1, m + 1) if i not in border]
        if holes:
            rings[lab] = (region, others, holes)
    if not rings:
        where = "around the waypoints" if seeds is not None else "of the map"
        raise ValueError(
            f"{path}: no free region {where} forms a loop around an obstacle (the track must be a closed "
            "corridor with walls on both sides)"
        )
    innermost = [
        lab
        for lab, (_, others, holes) in rings.items()
        if not any(np.isin(others[labels == other], holes).any() for other in rings if other != lab)
    ]
    if len(innermost) != 1:
        raise ValueError(
            f"{path}: {len(innermost)} separate free loops; pass a waypoint CSV to pick the track"
        )
    region, others, holes = rings[innermost[0]]
    if len(holes) > 1:
        sizes = ndimage.sum_labels(np.ones_like(others), others, holes)
        small = holes[int(np.argmin(sizes))]
        r, c = np.argwhere(others == small)[0]
        raise ValueError(
            f"{path}: the track's free loop encloses {len(holes)} separate obstacles (one at pixel row {r}, "
            f"column {c}); a track has one infield, so remove obstacles and specks inside the track from the image"
        )
    return region, others == holes[0]


def _simplify(points: np.ndarray, tol: float) -> np.ndarray:
    """Keep-mask of an open polyline's vertices such that every dropped vertex lies within `tol` of the
    segment that replaces it (Douglas-Peucker); the end points are kept."""
    keep = np.zeros(len(points), bool)
    keep[[0, -1]] = True
    stack = [(0, len(points) - 1)]
    while stack:
        i, j = stack.pop()
        if j <= i + 1:
            continue
        a, e = points[i], points[j] - points[i]
        rel = points[i + 1 : j] - a
        norm = np.hypot(*e)
        d = np.abs(e[0] * rel[:, 1] - e[1] * rel[:, 0]) / norm if norm > 0 else np.hypot(rel[:, 0], rel[:, 1])
        k = int(np.argmax(d))
        if d[k] > tol:
            keep[i + 1 + k] = True
            stack += [(i, i + 1 + k), (i + 1 + k, j)]
    return keep


def _simplify_closed(loop: np.ndarray, tol: float) -> np.ndarray:
    """A closed polyline with vertices dropped while every dropped one stays within `tol` of the result
    (vertices on a straight run first, then Douglas-Peucker on each half of the loop)."""
    turn = np.roll(loop, -1, 0) - loop
    back = loop - np.roll(loop, 1, 0)
    straight = (np.abs(back[:, 0] * turn[:, 1] - back[:, 1] * turn[:, 0]) < 1e-9) & ((back * turn).sum(1) > 0)
    loop = loop[~straight]
    far = int(np.argmax(np.linalg.norm(loop - loop[0], axis=1)))
    head = _simplify(loop[: far + 1], tol)
    tail = _simplify(np.concatenate([loop[far:], loop[:1]]), tol)
    return loop[np.concatenate([head[:-1], tail[:-1]])]


def trace_walls(region: np.ndarray, path: Path, tol_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(outer, inner) boundaries of the loop mask as closed polylines in pixel (col, row) coordinates: the
    0.5 level of the mask, which runs along the pixel edges between the loop and the obstacles and cuts their
    corners (within 0.36 px of the edges), simplified to within `tol_px`."""
    import contourpy

    lines = contourpy.contour_generator(z=np.pad(region, 1).astype(np.float32)).lines(0.5)
    loops = [line[:-1] - 1.0 if np.allclose(line[0], line[-1]) else line - 1.0 for line in lines]
    if len(loops) != 2:
        raise ValueError(
            f"{path}: the track's free loop has {len(loops)} boundary curves, expected 2 (outer and inner wall); "
            "thin the walls' diagonal pinches or clear specks at the track's edges in the image"
        )
    outer, inner = sorted(loops, key=lambda loop: -abs(signed_area(loop)))
    return _simplify_closed(outer, tol_px), _simplify_closed(inner, tol_px)


def extract_centreline(region: np.ndarray, infield: np.ndarray, path: Path, spacing_px: float) -> np.ndarray:
    """Mid-line of the loop in pixel (col, row) coordinates, `spacing_px` apart: the zero level set of
    (distance to the infield) minus (distance to the outer obstacles) inside the loop."""
    import contourpy

    padded, padded_infield = np.pad(region, 1), np.pad(infield, 1)
    rows, cols = np.nonzero(padded)
    r0, r1, c0, c1 = rows.min() - 1, rows.max() + 2, cols.min() - 1, cols.max() + 2  # keep an obstacle rim
    crop, hole = padded[r0:r1, c0:c1], padded_infield[r0:r1, c0:c1]
    d_in = ndimage.distance_transform_edt(~hole)
    d_out = ndimage.distance_transform_edt(crop | hole)
    f = np.where(crop, d_in - d_out, np.nan)
    lines = contourpy.contour_generator(z=np.ma.masked_invalid(f)).lines(0.0)
    if not lines:
        raise ValueError(f"{path}: could not trace a centreline in the free loop")
    line = max(lines, key=len)
    if np.allclose(line[0], line[-1]):
        line = line[:-1]
    line = line + np.array([c0 - 1, r0 - 1])
    step = np.linalg.norm(np.diff(line, axis=0), axis=1).mean()
    line = ndimage.gaussian_filter1d(line, max(1.0, 2.0 / step), axis=0, mode="wrap")  # ~2 px: pixel noise
    perim = np.linalg.norm(np.diff(np.concatenate([line, line[:1]]), axis=0), axis=1).sum()
    return resample_closed(line, max(int(perim / spacing_px), 16))
