"""Surface-labelled terrain data from the pure-JAX racing env: top-down episodes and specs derived from the map.

Each episode drives one track (surfaces from `surface_seed + episode`) by pure pursuit along the centreline shifted
sideways by a smooth random offset (new knots every `deviation_knot_m`, up to `deviation` of the room to each wall,
a fresh offset curve every lap), so that the car crosses every surface, kerbs and run-off included. Every
`record_every` control steps it records the car's top-down ground image (`surfaces.ground_image`) and the rear
axle's pose, and writes the episode in the top-down format of `src.terrain.sources`.

Categories come from the map: a frame belongs to surface c when at least `purity` of the samples of the patch
footprint there (the scan's patch, `patch_m` square, aligned with the car) lie on c; runs of such frames become the time ranges of a
spec. The first `len(tracks) - holdout_episodes` episodes give `train.json`, the rest `holdout.json`; both carry the
orderings of consecutive surfaces in `preference` (best first), 3 for 4 surfaces, the rest implied.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial import cKDTree

from src.envs import surfaces
from src.envs.controllers import pure_pursuit
from src.envs.racecar import dynamics
from src.envs.racecar import env as racecar
from src.envs.racecar.params import EnvParams, make_params
from src.terrain.extract import GroundGeometry, ScanConfig, Trajectory, patch_offsets, patch_side_m
from src.terrain.sources import write_topdown_episode


@dataclasses.dataclass(frozen=True)
class SimRecordConfig:
    tracks: tuple[str, ...] = ("default", "default")  # one episode per entry (bundled name or map YAML)
    holdout_episodes: int = 1  # the last ones: the held-out spec
    surface_seed: int = 0  # episode k lays surfaces from surface_seed + k
    seed: int = 0  # driving (offset curves)
    steps: int = 1500  # control steps per episode
    record_every: int = 2
    target_speed: float = 2.5  # m/s, pure pursuit
    deviation: float = 0.9  # fraction of the room to each wall the offset reaches
    deviation_knot_m: float = 3.0
    wall_margin_m: float = 0.3  # the offset keeps the centreline this far from a wall
    ground_size: tuple[int, int] = (140, 80)
    ground_px_per_m: float = 40.0
    ground_behind_m: float = 0.5
    ground_blur: float = 0.01
    preference: tuple[str, ...] = ("asphalt", "kerb", "grass", "gravel")  # best first: the ground-truth order
    purity: float = (
        0.9  # fraction of a patch footprint's samples on one surface for the frame to get its category
    )
    kerb_m: float = 0.45
    runoff_m: float = 0.35

    def __post_init__(self) -> None:
        if not self.tracks or not 0 < self.holdout_episodes < len(self.tracks):
            raise ValueError(
                f"sim: need >= 1 train and >= 1 held-out episode, got {self.tracks} / {self.holdout_episodes}"
            )
        if sorted(self.preference) != sorted(surfaces.NAMES):
            raise ValueError(
                f"sim.preference must order every surface {surfaces.NAMES}, got {self.preference}"
            )
        if self.steps < 1 or self.record_every < 1:
            raise ValueError("sim.steps and sim.record_every must be >= 1")

    def surface_config(self, episode: int) -> surfaces.SurfaceConfig:
        return surfaces.SurfaceConfig(
            seed=self.surface_seed + episode,
            kerb_m=self.kerb_m,
            runoff_m=self.runoff_m,
            ground_size=self.ground_size,
            ground_px_per_m=self.ground_px_per_m,
            ground_behind_m=self.ground_behind_m,
            ground_blur=self.ground_blur,
        )


def env_params(cfg: SimRecordConfig, episode: int) -> EnvParams:
    return make_params(
        cfg.tracks[episode], lidar_rays=8, pose_noise=0.0, time_limit=1e9, terrain=cfg.surface_config(episode)
    )


def offset_paths(
    params: EnvParams, cfg: SimRecordConfig, laps: int, rng: np.random.Generator
) -> np.ndarray:
    """[laps, N, 2] centrelines shifted sideways by a smooth random offset, one per lap (module docstring)."""
    c = np.asarray(params.centreline, np.float64)
    t = np.roll(c, -1, 0) - np.roll(c, 1, 0)
    normal = np.stack([-t[:, 1], t[:, 0]], 1) / np.linalg.norm(t, axis=1, keepdims=True)  # to the left
    seg = np.linalg.norm(np.roll(c, -1, 0) - c, axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)[:-1]])
    room = np.asarray(dynamics.distance(params, jnp.asarray(c, jnp.float32)))  # to the nearest wall
    reach = np.maximum(room - cfg.wall_margin_m, 0.0) * cfg.deviation
    knots = max(int(s[-1] + seg[-1]) // int(max(cfg.deviation_knot_m, 1.0)), 4)
    out = []
    for _ in range(laps):
        values = rng.uniform(-1.0, 1.0, knots)
        ks = np.linspace(0.0, s[-1] + seg[-1], knots, endpoint=False)
        shape = np.interp(s, ks, values, period=s[-1] + seg[-1])
        out.append(c + normal * (shape * reach)[:, None])
    return np.stack(out)


@functools.partial(jax.jit, static_argnames="cfg")
def _drive(params: EnvParams, cfg: SimRecordConfig, paths: jax.Array, key: jax.Array):
    def xyyaw(obs):  # the rear axle's pose (pose_noise is 0 here)
        return obs["pose"][jnp.array([0, 1, 5])]

    def control(carry, key):
        state, pose, hit = carry
        lap = jnp.clip(jnp.floor(state.total_progress).astype(jnp.int32), 0, paths.shape[0] - 1)
        action = pure_pursuit(pose, state.vx, paths[lap], target_speed=cfg.target_speed)
        obs, state, _, _, _, info = racecar.step(key, state, action, params)
        return (state, xyyaw(obs), hit | info["wall_collision"]), None

    def frame(carry, key):
        state, pose = carry
        image = surfaces.ground_image(params.terrain, pose)
        start = (state, pose, jnp.zeros((), bool))
        (state, new_pose, hit), _ = jax.lax.scan(control, start, jax.random.split(key, cfg.record_every))
        return (state, new_pose), (pose, image, hit)

    obs, state = racecar.reset(key, params)
    frames = cfg.steps // cfg.record_every
    return jax.lax.scan(frame, (state, xyyaw(obs)), jax.random.split(key, frames))[1]


def drive(
    params: EnvParams, cfg: SimRecordConfig, paths: np.ndarray, key: jax.Array
) -> dict[str, np.ndarray]:
    """Run one episode; returns poses [F, 3] (rear axle x, y, yaw), ground images [F, H, W, 3], and whether the car
    touched a wall in the control steps after each frame [F]."""
    pose, image, hit = _drive(params, cfg, jnp.asarray(paths, jnp.float32), key)
    return {"poses": np.asarray(pose, np.float64), "images": np.asarray(image), "collided": np.asarray(hit)}


def footprint_category(
    terrain: surfaces.TerrainParams, poses: np.ndarray, patch_m: float, purity: float, samples: int = 9
) -> np.ndarray:
    """int [F]: the surface class covering at least `purity` of the patch footprint at each pose, else -1."""
    k = (np.arange(samples) - (samples - 1) / 2) / (samples - 1) * patch_m
    fwd, left = np.meshgrid(k, k, indexing="ij")
    c, s = np.cos(poses[:, 2])[:, None, None], np.sin(poses[:, 2])[:, None, None]
    x = poses[:, 0, None, None] + c * fwd - s * left
    y = poses[:, 1, None, None] + s * fwd + c * left
    cls = np.asarray(surfaces.surface_at(terrain, jnp.asarray(np.stack([x, y], -1), jnp.float32)))
    counts = np.stack([(cls.reshape(len(poses), -1) == k).mean(1) for k in range(len(surfaces.NAMES))], 1)
    best = counts.argmax(1)
    return np.where(counts.max(1) >= purity, best, -1)


def category_ranges(category: np.ndarray, times: np.ndarray, path: str) -> dict[str, list[dict[str, Any]]]:
    """Spec time ranges [start, end) of the runs of equal category (end: halfway to the next frame)."""
    out: dict[str, list[dict[str, Any]]] = {}
    half = 0.5 * float(np.median(np.diff(times))) if len(times) > 1 else 0.5
    k = 0
    while k < len(category):
        j = k
        while j + 1 < len(category) and category[j + 1] == category[k]:
            j += 1
        if category[k] >= 0:
            name = surfaces.NAMES[category[k]]
            start = float(times[k] - times[0])
            out.setdefault(name, []).append(
                {"path": path, "start": start, "end": float(times[j] - times[0]) + half}
            )
        k = j + 1
    return out


def record(cfg: SimRecordConfig, root: Path, patch_m: float) -> dict[str, Any]:
    """Record every episode under root/ep<k>, write root/train.json and root/holdout.json; returns a summary."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    orderings = [{"first": a, "second": b, "label": -1} for a, b in zip(cfg.preference, cfg.preference[1:])]
    specs: dict[str, dict[str, list]] = {"train": {}, "holdout": {}}
    summary = []
    for ep in range(len(cfg.tracks)):
        params = env_params(cfg, ep)
        laps = int(np.ceil(cfg.steps * params.control_dt * cfg.target_speed / params.track_length)) + 1
        run = drive(params, cfg, offset_paths(params, cfg, laps, rng), jax.random.key(cfg.seed * 1000 + ep))
        ppm, r0, c0 = surfaces.ground_geometry(params.terrain)
        times = np.arange(len(run["poses"])) * cfg.record_every * params.control_dt
        n = len(times)
        traj = Trajectory(
            run["images"], np.ones(run["images"].shape[:3], bool), run["poses"], times, np.ones(n, bool)
        )
        name = f"ep{ep}"
        write_topdown_episode(root / name, traj, GroundGeometry(ppm, r0, c0))
        category = footprint_category(params.terrain, run["poses"], patch_m, cfg.purity)
        which = "holdout" if ep >= len(cfg.tracks) - cfg.holdout_episodes else "train"
        for cat, ranges in category_ranges(category, times, name).items():
            specs[which].setdefault(cat, []).extend(ranges)
        summary.append(
            {
                "episode": name,
                "track": cfg.tracks[ep],
                "split": which,
                "frames": n,
                "collision_frames": int(run["collided"].sum()),
                "frames_per_surface": {s: int((category == k).sum()) for k, s in enumerate(surfaces.NAMES)},
                "mixed_frames": int((category < 0).sum()),
            }
        )
    for which, cats in specs.items():
        missing = [s for s in surfaces.NAMES if s not in cats]
        if missing:
            raise ValueError(
                f"sim recording: the {which} episodes never drove a whole patch on {missing}; drive longer"
            )
        data = {"categories": {s: cats[s] for s in surfaces.NAMES}, "orderings": orderings}
        (root / f"{which}.json").write_text(json.dumps(data, indent=1))
    (root / "recording.json").write_text(
        json.dumps({"config": dataclasses.asdict(cfg), "episodes": summary}, indent=2)
    )
    return {"episodes": summary}


def map_patches(
    params: EnvParams, geom: GroundGeometry, scan: ScanConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """Patches tiling the whole track (the clearest view: the sharp texture, aligned with the centreline's
    direction), for a cost map: (patches uint8 [K, P, P, 3], tile (row, col) [K, 2], true class [K], grid shape).
    Tiles are the patch's side apart over the track's bounding box; only tiles centred on the track are kept."""
    terrain = params.terrain
    fwd, left = patch_offsets(geom, scan)
    side = patch_side_m(scan, geom.px_per_m)
    surf = np.asarray(terrain.surface)
    lo = np.asarray(terrain.origin, np.float64)
    hi = lo + np.array(surf.shape[::-1]) * terrain.res
    shape = tuple(int(v) for v in np.floor((hi - lo) / side)[::-1])
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    centres = lo + (np.stack([cols, rows], -1).reshape(-1, 2) + 0.5) * side
    truth = np.asarray(surfaces.surface_at(terrain, jnp.asarray(centres, jnp.float32)))
    keep = truth < len(surfaces.NAMES)
    centres, truth = centres[keep], truth[keep]
    tiles = np.stack([rows.reshape(-1)[keep], cols.reshape(-1)[keep]], 1)
    nearest = cKDTree(np.asarray(params.centreline, np.float64)).query(centres)[1]
    yaw = np.asarray(params.tangent_yaw, np.float64)[nearest]
    cy, sy = np.cos(yaw)[:, None, None], np.sin(yaw)[:, None, None]
    x = centres[:, 0, None, None] + cy * fwd - sy * left
    y = centres[:, 1, None, None] + sy * fwd + cy * left
    rgb = surfaces.texture(terrain, jnp.asarray(np.stack([x, y], -1), jnp.float32))
    patches = np.asarray(jnp.clip(jnp.round(rgb), 0, 255).astype(jnp.uint8))
    return patches, tiles, truth, shape
