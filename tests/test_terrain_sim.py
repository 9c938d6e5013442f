"""Surface-labelled recording from the JAX racing env: episodes in the top-down format, specs from the map."""

import jax.numpy as jnp
import numpy as np
import pytest

from src.envs import surfaces
from src.terrain import sim, sources, spec
from src.terrain.extract import GroundGeometry, ScanConfig, extract_patches

TINY = sim.SimRecordConfig(steps=800, record_every=5, ground_size=(48, 32), ground_px_per_m=20.0)
PATCH_M = 0.3


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    return root, sim.record(TINY, root, PATCH_M)


def test_recorded_categories_are_the_map_surface_under_the_car(recorded):
    root, summary = recorded
    assert [e["split"] for e in summary["episodes"]] == ["train", "holdout"]
    assert all(e["collision_frames"] == 0 for e in summary["episodes"])
    for k, which in enumerate(("train", "holdout")):
        s = spec.load_spec(root / f"{which}.json", root)
        assert s.names == list(surfaces.NAMES) and len(s.orderings) == 3
        traj, geom = sources.read_topdown_episode(root / f"ep{k}")
        assert traj.images.shape == (TINY.steps // TINY.record_every, 48, 32, 3)
        assert geom.px_per_m == 20.0
        terrain = sim.env_params(TINY, k).terrain
        under = np.asarray(surfaces.surface_at(terrain, jnp.asarray(traj.poses[:, :2], jnp.float32)))
        t = traj.times - traj.times[0]
        labelled = np.zeros(len(t), bool)
        for c, ranges in s.categories.items():
            for r in ranges:
                inside = (t >= r.start) & (t < r.end)
                assert inside.any() and (under[inside] == surfaces.NAMES.index(c)).all(), (which, c, r)
                labelled |= inside
        assert 0.3 < labelled.mean() < 1.0  # mixed footprints (surface edges) stay unlabelled


def test_offsets_drive_across_the_track(recorded):
    root, _ = recorded
    params = sim.env_params(TINY, 0)
    traj, _ = sources.read_topdown_episode(root / "ep0")
    c = np.asarray(params.centreline)
    lateral = np.min(np.linalg.norm(traj.poses[:, None, :2] - c[None], axis=-1), 1)
    assert lateral.max() > 0.6  # the bundled track is 2-3 m wide: the car leaves the centre line by > 0.6 m


def test_map_patches_tile_the_track_like_extracted_patches(recorded):
    root, _ = recorded
    params = sim.env_params(TINY, 1)
    traj, geom = sources.read_topdown_episode(root / "ep1")
    scan = ScanConfig(patch_px=6, max_path_m=1.0)
    patches, tiles, cls, shape = sim.map_patches(params, geom, scan)
    assert patches.shape[1:] == (6, 6, 3) and set(np.unique(cls)) == set(range(len(surfaces.NAMES)))
    assert (tiles < np.asarray(shape)).all() and len(np.unique(tiles, axis=0)) == len(tiles)
    # a recorded clearest view and the map tile's patch of the same surface look alike (same texture statistics)
    ex = extract_patches(traj, GroundGeometry(geom.px_per_m, geom.robot_row, geom.robot_col), scan)
    first = np.flatnonzero(np.diff(np.concatenate([[-1], ex.frame])) != 0)
    terrain = params.terrain
    under = np.asarray(
        surfaces.surface_at(terrain, jnp.asarray(traj.poses[ex.frame[first], :2], jnp.float32))
    )
    for k in range(len(surfaces.NAMES)):
        seen = ex.patches[first][under == k].reshape(-1, 3).mean(0)
        tiled = patches[cls == k].reshape(-1, 3).mean(0)
        assert np.abs(seen - tiled).max() < 30, surfaces.NAMES[k]


def test_bad_sim_settings_are_named():
    with pytest.raises(ValueError, match="preference"):
        sim.SimRecordConfig(preference=("asphalt", "kerb", "grass"))
    with pytest.raises(ValueError, match="held-out"):
        sim.SimRecordConfig(tracks=("default",))
