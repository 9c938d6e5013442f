"""Closing the loop: the learned terrain cost of the car's own ground patch in the PPO reward, surface fractions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from src import config
from src.config import RLConfig
from src.envs import surfaces
from src.infra.checkpoint import Checkpointer
from src.objectives.contrastive import l2_normalize
from src.rl import envs as rl_envs
from src.terrain import training
from src.terrain.config import TerrainConfig
from src.terrain.cost import ground_cost_fn
from src.terrain.evaluation import surface_fractions


@pytest.fixture(scope="module")
def terrain_run(tmp_path_factory):
    """A sim terrain run dir as the `cost` stage leaves it: its config and (untrained) encoder and cost head."""
    tmp = tmp_path_factory.mktemp("loop")
    cfg = config.replace(
        TerrainConfig(),
        run={"name": "t", "out_dir": str(tmp / "runs")},
        source={"kind": "sim"},
        sim={"ground_px_per_m": 20.0},
        scan={"patch_px": 6},
    )
    out = tmp / "runs" / "t"
    config.save(cfg, out / "config_cost.toml")
    encoder, head = training.make_encoder(cfg, 3), training.make_cost_head(cfg)
    for stage, model, optimizer in (
        ("represent", encoder, training.encoder_optimizer(cfg, encoder)),
        ("cost", head, training.cost_optimizer(cfg, head)),
    ):
        ckpt = Checkpointer(out / stage / "ckpt", save_every=1, keep=1)
        ckpt.save(1, {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}, meta={"step": 1}, force=True)
        ckpt.close()
    return cfg, out, encoder, head


def _rl_cfg(run, weight):
    return config.replace(
        RLConfig(),
        env={"kind": "jax_racecar", "lidar_rays": 8, "surfaces": True, "surface_offroad": False,
             "terrain_cost_run": str(run), "terrain_cost_weight": weight},
    )


def test_ground_cost_is_the_cost_of_the_patch_under_the_car(terrain_run):
    cfg, out, encoder, head = terrain_run
    _, params = rl_envs.racing_env(_rl_cfg(out, 0.0))
    cost_of = ground_cost_fn(out, params.terrain)
    pose = jnp.asarray(params.start)
    # the same patch cropped from a larger ground image at the run's scale (6 px centred on the rear axle)
    big = params.terrain.replace(ground_size=(40, 40), ground_px_per_m=20.0, ground_behind_m=19.5 / 20.0,
                                 ground_blur=cfg.sim.ground_blur)
    _, r0, c0 = surfaces.ground_geometry(big)
    assert (r0, c0) == (19.5, 19.5)
    patch = np.asarray(surfaces.ground_image(big, pose))[17:23, 17:23]
    expected = np.asarray(head(l2_normalize(encoder(jnp.asarray(patch[None])))))[0]
    np.testing.assert_allclose(float(jax.jit(cost_of)(pose)), expected, rtol=1e-4)


def test_cost_reward_is_the_progress_reward_minus_weight_times_cost(terrain_run):
    _, out, _, _ = terrain_run
    env, params = rl_envs.racing_env(_rl_cfg(out, 0.5))
    key = jax.random.key(0)
    _, state = env.reset(key)
    step = jax.jit(env.step)
    for _ in range(10):  # up to speed: a step then passes several progress cells
        _, state, *_ = step(key, state, jnp.array([0.8, 0.0]))
    _, new, reward, _, _, info = step(key, state, jnp.array([0.8, 0.0]))
    progress = params.progress_reward * abs(float(new.total_progress) - float(state.total_progress))
    cost = float(info["terrain_cost"])
    assert cost > 0 and progress > 0
    np.testing.assert_allclose(float(reward), progress - 0.5 * cost, rtol=1e-4)


def test_cost_weight_needs_surfaces_and_a_run():
    cfg = config.replace(RLConfig(), env={"kind": "jax_racecar", "lidar_rays": 8, "terrain_cost_weight": 0.1})
    with pytest.raises(config.ConfigError, match="env.surfaces"):
        rl_envs.racing_env(cfg)


def test_surface_fractions_count_each_episode_until_it_ends():
    surface = jnp.asarray(np.repeat(np.arange(4)[None], 4, 0), jnp.int32)  # column k (x in [k, k+1)) is class k
    t = surfaces.TerrainParams(surface=surface, origin=jnp.zeros(2, jnp.float32), res=1.0)
    pose = np.zeros((4, 2, 3))
    pose[:, 0, 0] = [0.5, 0.5, 1.5, 2.5]  # episode 0: asphalt, asphalt, kerb, then ended
    pose[:, 1, 0] = [3.5, 3.5, 3.5, 3.5]  # episode 1: grass throughout
    done = np.zeros((4, 2), bool)
    done[2, 0] = True
    frac = surface_fractions({"pose": pose, "done": done}, t)
    assert frac == {"asphalt": 2 / 7, "kerb": 1 / 7, "gravel": 0.0, "grass": 4 / 7}
