"""Patch datasets: a compact store (one .npz of uint8 patches + an index JSON) and Grain random-access sources.

Patches are sorted by (source, location frame, distance), so the views of one location are contiguous and the
first is the clearest. `category` is -1 for patches outside every category time range of the spec.
Sources are seeded per index: item k is a pure function of (seed, k), so a run restarted at step s reads the
same batches as one that never stopped.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from src.terrain.extract import Extraction

ARRAYS = ("patches", "source", "frame", "viewpoint", "distance", "time", "category", "holdout")


@dataclasses.dataclass(frozen=True, eq=False)
class PatchSet:
    """patches uint8 [M, P, P, C]; source int32 [M] (index into `sources`); frame, viewpoint int32 [M];
    distance float32 [M] m; time float64 [M] (s since its trajectory's first frame, of the location);
    category int16 [M] (index into `categories`, the training spec's; -1 none); holdout int16 [M] (the same for
    the held-out spec's `holdout_categories`); sources: per-trajectory info (name, frames, gaps...)."""

    patches: np.ndarray
    source: np.ndarray
    frame: np.ndarray
    viewpoint: np.ndarray
    distance: np.ndarray
    time: np.ndarray
    category: np.ndarray
    holdout: np.ndarray
    sources: list[dict[str, Any]]
    categories: list[str]
    holdout_categories: list[str]

    def __len__(self) -> int:
        return len(self.patches)

    def locations(self) -> tuple[np.ndarray, np.ndarray]:
        """(first patch index [L], number of views [L]) of each location (a distinct (source, frame))."""
        if not len(self):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        new = np.ones(len(self), np.bool_)
        new[1:] = (self.source[1:] != self.source[:-1]) | (self.frame[1:] != self.frame[:-1])
        start = np.flatnonzero(new)
        return start, np.diff(np.append(start, len(self)))

    def with_categories(
        self, category: np.ndarray, names: list[str], holdout: np.ndarray, holdout_names: list[str]
    ) -> PatchSet:
        return dataclasses.replace(
            self,
            category=np.asarray(category, np.int16),
            categories=list(names),
            holdout=np.asarray(holdout, np.int16),
            holdout_categories=list(holdout_names),
        )


def from_extractions(
    extractions: list[Extraction], names: list[str], times: list[np.ndarray]
) -> PatchSet:
    """Concatenate per-trajectory extractions (`times`: each trajectory's frame times) into one PatchSet."""
    parts = {k: [] for k in ARRAYS}
    sources = []
    for k, (ex, name, t) in enumerate(zip(extractions, names, times)):
        parts["patches"].append(ex.patches)
        parts["source"].append(np.full(len(ex.frame), k, np.int32))
        parts["frame"].append(ex.frame)
        parts["viewpoint"].append(ex.viewpoint)
        parts["distance"].append(ex.distance)
        parts["time"].append((t[ex.frame] - t[0]).astype(np.float64))
        parts["category"].append(np.full(len(ex.frame), -1, np.int16))
        parts["holdout"].append(np.full(len(ex.frame), -1, np.int16))
        sources.append(
            {
                "name": name,
                "frames": len(t),
                "patches": len(ex.frame),
                "gaps": ex.gaps,
                "stopped_by_gap": ex.stopped_by_gap,
                "dropped_out_of_view": ex.dropped,
            }
        )
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    return PatchSet(**arrays, sources=sources, categories=[], holdout_categories=[])


def save(ps: PatchSet, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `patches.npz` (plain arrays, no pickle) and `index.json` to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "patches.npz", **{k: getattr(ps, k) for k in ARRAYS})
    start, count = ps.locations()
    counts = {name: int((ps.category == k).sum()) for k, name in enumerate(ps.categories)}
    held = {name: int((ps.holdout == k).sum()) for k, name in enumerate(ps.holdout_categories)}
    index = {
        "patches": len(ps),
        "patch_shape": list(ps.patches.shape[1:]),
        "locations": len(start),
        "mean_views_per_location": float(count.mean()) if len(count) else 0.0,
        "categories": ps.categories,
        "patches_per_category": counts,
        "holdout_categories": ps.holdout_categories,
        "holdout_patches_per_category": held,
        "sources": ps.sources,
        **(extra or {}),
    }
    (out / "index.json").write_text(json.dumps(index, indent=2))
    return out


def load(out_dir: str | Path) -> PatchSet:
    """Read a store written by `save`; a missing or malformed file raises naming it."""
    out = Path(out_dir)
    try:
        index = json.loads((out / "index.json").read_text())
        with np.load(out / "patches.npz", allow_pickle=False) as f:
            arrays = {k: f[k] for k in ARRAYS}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{out}: not a patch store (patches.npz + index.json): {e}") from e
    return PatchSet(
        **arrays,
        sources=index["sources"],
        categories=index["categories"],
        holdout_categories=index["holdout_categories"],
    )


def _category_locations(ps: PatchSet) -> list[np.ndarray]:
    """Per category: the locations (indices into `ps.locations()`) whose clearest view has that category."""
    start, _ = ps.locations()
    cat = ps.category[start]
    return [np.flatnonzero(cat == k) for k in range(len(ps.categories))]


class TripletSource:
    """Grain random-access source of category triplets (anchor, positive, negative) uint8 patches.

    Anchor: the clearest view of a random location of category A; positive: a random view of another location of
    A; negative: a random view of a random location of category B != A.
    """

    def __init__(self, ps: PatchSet, length: int, seed: int):
        self.ps, self.length, self.seed = ps, length, seed
        self.start, self.count = ps.locations()
        self.by_cat = [locs for locs in _category_locations(ps) if len(locs) >= 2]
        if len(self.by_cat) < 2:
            raise ValueError(
                f"triplets need >= 2 categories with >= 2 locations each; have "
                f"{ {n: len(locs) for n, locs in zip(ps.categories, _category_locations(ps))} }"
            )

    def __len__(self) -> int:
        return self.length

    def _view(self, rng: np.random.Generator, loc: int) -> int:
        return int(self.start[loc] + rng.integers(self.count[loc]))

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(index)])
        a, b = rng.choice(len(self.by_cat), 2, replace=False)
        loc_a, loc_p = rng.choice(self.by_cat[a], 2, replace=False)
        loc_n = rng.choice(self.by_cat[b])
        p = self.ps.patches
        return {
            "anchor": p[self.start[loc_a]],
            "positive": p[self._view(rng, loc_p)],
            "negative": p[self._view(rng, loc_n)],
        }


class ViewPairSource:
    """Grain random-access source of two distinct views (uint8 patches) of one random multi-view location."""

    def __init__(self, ps: PatchSet, length: int, seed: int):
        self.ps, self.length, self.seed = ps, length, seed
        start, count = ps.locations()
        multi = count >= 2
        self.start, self.count = start[multi], count[multi]
        if not len(self.start):
            raise ValueError("view pairs need locations with >= 2 views; the store has none")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(index)])
        loc = rng.integers(len(self.start))
        i, j = rng.choice(self.count[loc], 2, replace=False)
        p = self.ps.patches
        return {"view1": p[self.start[loc] + i], "view2": p[self.start[loc] + j]}
