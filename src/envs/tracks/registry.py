"""The bundled tracks (`bundled/`, written by `python -m src.envs.tracks` from fixed seeds) and `get_track`,
which finds a track by bundled name or map path."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from src.envs.tracks.geometry import Track
from src.envs.tracks.maps import load_map, write_map
from src.envs.tracks.procedural import procedural_track

BUNDLED_DIR = Path(__file__).parent / "bundled"

# name -> procedural_track kwargs; the files in src/envs/tracks/bundled/ are generated from exactly these.
BUNDLED_SPECS: dict[str, dict] = {
    "default": {"seed": 3},
    "wide_loop": {"seed": 11, "mean_radius": 12.0, "min_width": 2.5, "max_width": 3.5},
    "twisty": {"seed": 5, "n_harmonics": 6, "amplitude": 0.35, "min_curvature_radius": 2.0},
}


@functools.cache
def bundled_tracks() -> dict[str, Track]:
    """The tracks shipped in src/envs/tracks/bundled/ (map PNG + YAML + centreline CSV), by name."""
    out = {}
    for name in BUNDLED_SPECS:
        yaml_path = BUNDLED_DIR / f"{name}.yaml"
        out[name] = load_map(yaml_path, BUNDLED_DIR / f"{name}.csv")
    return out


def get_track(name_or_path: str | Path) -> Track:
    """A bundled track by name ("default" is the default), or a map YAML path (a CSV next to it named
    `<stem>.csv` or `<stem minus _map>_centerline.csv` supplies the centreline when present)."""
    key = str(name_or_path)
    if key in BUNDLED_SPECS:
        return bundled_tracks()[key]
    path = Path(key)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"unknown track {key!r}; bundled: {sorted(BUNDLED_SPECS)} or a map .yaml path")
    stem = path.stem
    for cand in (path.with_suffix(".csv"), path.with_name(stem.removesuffix("_map") + "_centerline.csv")):
        if cand.is_file():
            return load_map(path, cand)
    return load_map(path)


def main(argv: list[str] | None = None) -> None:
    """Regenerate the bundled track files from BUNDLED_SPECS."""
    parser = argparse.ArgumentParser(prog="python -m src.envs.tracks", description=main.__doc__)
    parser.add_argument("--out", default=str(BUNDLED_DIR))
    args = parser.parse_args(argv)
    for name, spec in BUNDLED_SPECS.items():
        track = procedural_track(name=name, **spec)
        print(f"{name}: length {track.length:.1f} m -> {write_map(track, args.out)}")
