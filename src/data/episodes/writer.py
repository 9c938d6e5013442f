"""Writing one driving episode: `episode.json` beside its PNG frames, checked against the schema before it is kept."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from src.data.episodes.schema import EPISODE_FILE, EpisodeError, check_episode


def write_episode(
    out_dir: str | Path,
    header: Mapping[str, Any],
    images: Mapping[str, np.ndarray],
    keep: Mapping[str, np.ndarray],
    ego: Mapping[str, np.ndarray],
    timestamps: np.ndarray,
    action: np.ndarray,
) -> Path:
    """Write one episode: `out_dir/episode.json` and `out_dir/<cam>/<t>.png` for every kept frame.

    header: episode_id, source, cameras (+ optional camera_yaw_deg, image_size, dt, track, driver);
    images[cam] uint8 [T, H, W, 3]; keep[cam] bool [T] (False = dropped, no PNG written); ego pose/velocity
    [T, 3] and optional acceleration [T, 3]; timestamps [T]; action [T, 2]. The result is checked against the
    schema before it is returned.
    """
    out_dir = Path(out_dir)
    frames = []
    for t in range(len(timestamps)):
        entry: dict[str, Any] = {}
        for cam in header["cameras"]:
            if keep[cam][t]:
                rel = f"{cam}/{t:05d}.png"
                (out_dir / cam).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.asarray(images[cam][t], np.uint8)).save(out_dir / rel, compress_level=1)
                entry[cam] = {"image_path": rel}
        frames.append(
            {
                "timestamp": float(timestamps[t]),
                "images": entry,
                "ego": {k: [float(x) for x in np.asarray(v[t])] for k, v in ego.items()},
                "action": [float(x) for x in np.asarray(action[t])],
            }
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / EPISODE_FILE
    path.write_text(json.dumps({**header, "frames": frames}))
    _, problems = check_episode(path, out_dir)
    if problems:
        raise EpisodeError(problems)
    return path
