"""The terrain preference spec (`data/schema/terrain_spec.json`): categories as time ranges, pairwise orderings.

    {"categories": {"concrete": [{"path": "ep0", "start": 0.0, "end": 12.5}, ...], ...},
     "orderings": [{"first": "concrete", "second": "grass", "label": -1}, ...]}

label -1: first preferred (lower cost), 0: equally preferable, 1: second preferred. Paths are trajectory folders
relative to the data root; times are seconds since the trajectory's first frame, [start, end). Beyond the schema,
every semantic problem is an error naming the entry: an unknown category, a label outside {-1, 0, 1}, an empty
time range, a path missing or outside the root, overlapping ranges, an ordering contradicting others (also
through equalities and transitivity), and (once patches are assigned) a category without patches.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from src.data.episodes.schema import resolve_inside

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "data" / "schema" / "terrain_spec.json"


class SpecError(ValueError):
    """A terrain spec is invalid; the message names the file and the entry."""


@dataclasses.dataclass(frozen=True)
class TimeRange:
    path: Path  # resolved trajectory folder
    start: float
    end: float


@dataclasses.dataclass(frozen=True)
class Spec:
    categories: dict[str, list[TimeRange]]
    orderings: list[tuple[str, str, int]]

    @property
    def names(self) -> list[str]:
        return list(self.categories)


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _where(err: jsonschema.ValidationError) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)


def parse_spec(data: Any, data_root: str | Path, name: str = "spec") -> Spec:
    """Validate spec JSON data (schema, then semantics) against `data_root`; raises SpecError naming the entry."""
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        raise SpecError("\n".join(f"{name}: {_where(e)}: {e.message}" for e in errors))
    root = Path(data_root)
    categories: dict[str, list[TimeRange]] = {}
    for cat, ranges in data["categories"].items():
        categories[cat] = []
        for k, r in enumerate(ranges):
            where = f"{name}: categories.{cat}[{k}]"
            if not r["start"] < r["end"]:
                raise SpecError(f"{where}: empty time range (start {r['start']} >= end {r['end']})")
            try:
                path = resolve_inside(root, root, r["path"])
            except ValueError as e:
                raise SpecError(f"{where}: {e}") from None
            if not path.is_dir():
                raise SpecError(f"{where}: path {r['path']!r} does not exist under the data root")
            categories[cat].append(TimeRange(path, float(r["start"]), float(r["end"])))
    _check_overlaps(categories, name)
    orderings = []
    for k, o in enumerate(data.get("orderings", [])):
        where = f"{name}: orderings[{k}] ({o['first']} vs {o['second']})"
        for key in ("first", "second"):
            if o[key] not in categories:
                raise SpecError(f"{where}: unknown category {o[key]!r}; categories: {sorted(categories)}")
        if o["label"] not in (-1, 0, 1):
            raise SpecError(f"{where}: label {o['label']} is not one of -1, 0, 1")
        if o["first"] == o["second"]:
            raise SpecError(f"{where}: a category compared with itself")
        orderings.append((o["first"], o["second"], int(o["label"])))
    spec = Spec(categories, orderings)
    check_consistent(spec, name)
    return spec


def load_spec(path: str | Path, data_root: str | Path) -> Spec:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpecError(f"{path}: cannot read the spec: {e}") from e
    return parse_spec(data, data_root, str(path))


def _check_overlaps(categories: dict[str, list[TimeRange]], name: str) -> None:
    flat = [(r.path, r.start, r.end, f"categories.{c}[{k}]") for c, rs in categories.items() for k, r in enumerate(rs)]
    flat.sort(key=lambda x: (str(x[0]), x[1]))
    for a, b in zip(flat, flat[1:]):
        if a[0] == b[0] and b[1] < a[2]:
            raise SpecError(f"{name}: {a[3]} and {b[3]} overlap in time on the same trajectory")


def _strict_edges(orderings: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """(preferred, other, ordering index) for every strict ordering."""
    return [(a, b, k) if label == -1 else (b, a, k) for k, (a, b, label) in enumerate(orderings) if label != 0]


def _classes(spec: Spec) -> dict[str, str]:
    """Each category's representative under the equalities (label 0), by union-find."""
    parent = {c: c for c in spec.categories}

    def find(c: str) -> str:
        while parent[c] != c:
            c = parent[c]
        return c

    for a, b, label in spec.orderings:
        if label == 0:
            parent[find(a)] = find(b)
    return {c: find(c) for c in spec.categories}


def check_consistent(spec: Spec, name: str = "spec") -> None:
    """Raise naming the orderings involved if the strict preferences (with equalities merged) contain a cycle."""
    cls = _classes(spec)
    graph: dict[str, list[tuple[str, int]]] = {}
    for a, b, k in _strict_edges(spec.orderings):
        graph.setdefault(cls[a], []).append((cls[b], k))
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done

    def visit(node: str, trail: list[int]) -> None:
        state[node] = 1
        for nxt, k in graph.get(node, []):
            if state.get(nxt) == 1 or nxt == node:
                cycle = [*trail, k]
                entries = ", ".join(
                    f"orderings[{i}] ({spec.orderings[i][0]} vs {spec.orderings[i][1]}, label {spec.orderings[i][2]})"
                    for i in cycle
                )
                raise SpecError(f"{name}: contradicting orderings (a preference cycle): {entries}")
            if nxt not in state:
                visit(nxt, [*trail, k])
        state[node] = 2

    for node in list(graph):
        if node not in state:
            visit(node, [])


def implied_orderings(spec: Spec) -> dict[tuple[str, str], int]:
    """Every ordered category pair the orderings determine (equalities and transitivity): (a, b) -> -1/0/1."""
    cls = _classes(spec)
    names = spec.names
    better = {(cls[a], cls[b]) for a, b, _ in _strict_edges(spec.orderings)}
    reps = sorted(set(cls.values()))
    changed = True
    while changed:  # transitive closure over the (few) classes
        changed = False
        for a in reps:
            for b in reps:
                for c in reps:
                    if (a, b) in better and (b, c) in better and (a, c) not in better:
                        better.add((a, c))
                        changed = True
    out = {}
    for a in names:
        for b in names:
            if a == b:
                continue
            if cls[a] == cls[b]:
                out[(a, b)] = 0
            elif (cls[a], cls[b]) in better:
                out[(a, b)] = -1
            elif (cls[b], cls[a]) in better:
                out[(a, b)] = 1
    return out


def assign_categories(
    spec: Spec, source_paths: list[Path], source: np.ndarray, time: np.ndarray, name: str = "spec"
) -> np.ndarray:
    """Category index int16 [M] of each patch (-1: in no range); a category without any patch is an error."""
    resolved = [Path(p).resolve() for p in source_paths]
    category = np.full(len(source), -1, np.int16)
    for k, (cat, ranges) in enumerate(spec.categories.items()):
        for r in ranges:
            if r.path not in resolved:
                raise SpecError(f"{name}: categories.{cat}: {r.path.name!r} is not one of the extracted trajectories")
            inside = (source == resolved.index(r.path)) & (time >= r.start) & (time < r.end)
            category[inside] = k
        if not (category == k).any():
            raise SpecError(f"{name}: category {cat!r} has no patches in its time ranges")
    return category
