"""PPO runs: frozen encoders, exact resume, pretrained-checkpoint mismatches, evaluation figures, the GIF."""

from __future__ import annotations

import dataclasses
import json

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from src import config
from src.config import ModalityConfig, ModelConfig, PPOConfig, RLConfig
from src.envs import observations, wrappers
from src.infra import plots
from src.infra.checkpoint import export_encoder
from src.models.actor_critic import FROZEN_PREFIXES, RaceformerAgent, load_pretrained
from src.rl import envs as rl_envs
from src.rl import evaluate, ppo, train_jax, trainer
from src.training import rl_agent
from tests.test_ppo import point_env

TINY_MODEL = ModelConfig(
    embed_dim=16,
    depth=1,
    num_heads=2,
    patch_size=4,
    fusion_depth=1,
    decoder_dim=16,
    decoder_heads=2,
    projection_dim=16,
    modalities={"lidar": ModalityConfig(shape=(16, 1)), "gps": ModalityConfig(shape=(5,))},
)


def _leaves_by_path(tree) -> dict[tuple[str, ...], np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {ppo.path_names(p): np.asarray(v) for p, v in flat}


def _random_batch(n: int, key: int = 0) -> ppo.Batch:
    rng = np.random.default_rng(key)
    obs = {
        "lidar": rng.uniform(0, 1, (n, 16, 1)).astype(np.float32),
        "gps": rng.normal(size=(n, 5)).astype(np.float32),
        "valid": {"lidar": np.ones(n, bool), "gps": np.ones(n, bool)},
    }
    return ppo.Batch(
        obs=obs,
        u=jnp.asarray(rng.normal(size=(n, 2)), jnp.float32),
        logp=jnp.asarray(rng.normal(size=n) - 2.0, jnp.float32),
        values=jnp.asarray(rng.normal(size=n), jnp.float32),
        advantages=jnp.asarray(rng.normal(size=n), jnp.float32),
        returns=jnp.asarray(rng.normal(size=n), jnp.float32),
    )


def test_frozen_encoders_are_bitwise_unchanged_while_heads_learn():
    cfg = PPOConfig(num_minibatches=2, update_epochs=2, learning_rate=1e-2, agent="raceformer")
    agent = RaceformerAgent(TINY_MODEL, rngs=nnx.Rngs(0))
    learner, params = ppo.Learner.create(agent, cfg, 100, FROZEN_PREFIXES)
    state = learner.init_state(
        params, jax.tree.map(lambda x: x[0], _random_batch(1).obs), jax.random.PRNGKey(0)
    )
    before = _leaves_by_path(state.params)
    update = jax.jit(learner.update)
    for i in range(2):
        state, metrics = update(state, _random_batch(16, key=i))
    after = _leaves_by_path(state.params)
    frozen = [p for p in before if any(p[: len(f)] == f for f in FROZEN_PREFIXES)]
    heads = [p for p in before if p not in frozen and ("policy_head" in p or "value_head" in p)]
    assert frozen and heads
    for p in frozen:
        assert np.array_equal(before[p], after[p]), f"frozen parameter {p} changed"
    assert any(not np.array_equal(before[p], after[p]) for p in heads)
    assert np.isfinite(metrics["loss/value"])


def test_mismatched_pretrained_checkpoint_lists_paths_and_shapes(tmp_path):
    src = RaceformerAgent(TINY_MODEL, rngs=nnx.Rngs(0))
    export_encoder(src.model, tmp_path / "encoder")
    changed = dataclasses.replace(
        TINY_MODEL, modalities={**TINY_MODEL.modalities, "gps": ModalityConfig(shape=(7,))}
    )
    other = RaceformerAgent(changed, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError) as err:
        load_pretrained(other, tmp_path / "encoder")
    message = str(err.value)
    assert "gps" in message and "7" in message and "5" in message
    # A matching checkpoint loads: encoders equal the exported ones.
    same = RaceformerAgent(TINY_MODEL, rngs=nnx.Rngs(2))
    load_pretrained(same, tmp_path / "encoder")
    a, b = _leaves_by_path(nnx.state(src, nnx.Param)), _leaves_by_path(nnx.state(same, nnx.Param))
    for p in a:
        if any(p[: len(f)] == f for f in FROZEN_PREFIXES):
            assert np.array_equal(a[p], b[p]), p


# --------------------------------------------------------------------------------------------- runs


def _point_env(num_envs: int) -> rl_envs.TrainingEnv:
    env = point_env()

    def evaluate_policy(learner, state, episodes):
        rec = jax.jit(lambda s, k: evaluate.jax_eval_rollout(learner, env, s, k, episodes, 16))
        return jax.tree.map(np.asarray, rec(state, jax.random.PRNGKey(5)))

    return rl_envs.TrainingEnv(
        1, jnp.zeros(1), lambda learner: train_jax.JaxEngine(learner, env, num_envs), evaluate_policy
    )


def _point_cfg(tmp_path, name: str) -> RLConfig:
    return config.from_dict(
        RLConfig,
        {
            "run": {"name": name, "out_dir": str(tmp_path), "seed": 3},
            "env": {"num_envs": 8},
            "ppo": {
                "agent": "mlp",
                "mlp_hidden": [8],
                "total_env_steps": 8 * 16 * 4,
                "num_steps": 16,
                "num_minibatches": 2,
                "update_epochs": 2,
                "norm_obs": True,
                "norm_reward": True,
                "checkpoint_every": 2,
            },
            "eval": {"every": 4, "episodes": 4},
        },
    )


def test_resume_continues_identically(tmp_path):
    full = trainer.train(_point_cfg(tmp_path, "full"), env=_point_env(8))
    part = trainer.train(_point_cfg(tmp_path, "split"), env=_point_env(8), stop_after=2)
    assert len(part.history) == 2
    rest = trainer.train(_point_cfg(tmp_path, "split"), env=_point_env(8))
    assert [h["iteration"] for h in rest.history] == [3, 4]
    assert "eval/return" in rest.history[-1]
    for a, b in zip(full.history[2:], rest.history):
        learned = [k for k in a if k.startswith(("loss/", "episode/", "eval/", "value/"))]
        assert len(learned) > 8
        assert all(a[k] == b[k] for k in learned), [(k, a[k], b[k]) for k in learned if a[k] != b[k]]
    fa, fb = _leaves_by_path(full.state), _leaves_by_path(rest.state)
    for p in fa:
        assert np.array_equal(fa[p], fb[p]), p
    assert (full.run_dir / "learning_curve.png").is_file()
    assert (full.run_dir / "metrics.jsonl").is_file()


def test_summarize_eval_racing_figures():
    """Two episodes, dt 0.5 s: the first completes its lap at step 2 (lap 1 -> 2) and ends at step 3 without
    touching a wall; the second collides at step 1 and never finishes (progress 0.4 at the last step)."""
    rec = {
        "reward": np.array([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [4.0, 1.0]]),
        "done": np.array([[0, 0], [0, 0], [0, 0], [1, 0]], bool),
        "lap": np.array([[1, 1], [1, 1], [2, 1], [2, 1]], float),
        "total_progress": np.array([[0.5, 0.1], [0.9, 0.2], [1.0, 0.3], [1.0, 0.4]]),
        "wall_collision": np.array([[0, 0], [0, 1], [0, 0], [1, 0]], bool),
    }
    out = evaluate.summarize_eval(rec, control_dt=0.5)
    assert out["return"] == pytest.approx((10.0 + 4.0) / 2)
    assert out["laps"] == pytest.approx(0.5)
    assert out["lap_time"] == pytest.approx(1.5)  # step index 2 -> 3 steps x 0.5 s
    assert out["collision_rate"] == pytest.approx(1.0)  # episode 0 hits a wall on its final step
    assert out["lap_completed_clean"] == pytest.approx(0.0)
    assert out["progress"] == pytest.approx((1.0 + 0.4) / 2)


def test_gif_draws_walls_and_car(tmp_path):
    walls = np.array([[[0.0, 0.0], [10.0, 0.0]], [[0.0, 4.0], [10.0, 4.0]]])
    poses = np.stack([np.linspace(1, 9, 12), np.full(12, 2.0), np.zeros(12)], 1)
    path = plots.write_gif(tmp_path / "a.gif", walls, poses, frame_every=3, size=64)
    im = Image.open(path)
    assert im.n_frames == 4
    im.seek(3)
    rgb = np.asarray(im.convert("RGB")).astype(int).reshape(-1, 3)
    assert ((rgb[:, 0] > 150) & (rgb[:, 1] < 100) & (rgb[:, 2] < 100)).any()  # the red car
    assert (rgb.max(1) < 90).any()  # a dark wall


@pytest.mark.slow
def test_racing_run_and_eval_mode_write_curve_and_gif(tmp_path):
    """The JAX racing env end to end with a tiny Raceformer: one iteration, then `--eval` (lap figures, GIF)."""
    cfg = config.from_dict(
        RLConfig,
        {
            "run": {"name": "race", "out_dir": str(tmp_path)},
            "model": {
                **{k: v for k, v in config.to_dict(TINY_MODEL).items() if k != "modalities"},
                "modalities": {
                    "lidar": {"shape": [16, 1]},
                    "gps": {"shape": [5]},
                    "radar": {"shape": [4, 4, 1]},
                },
            },
            "env": {"kind": "jax_racecar", "num_envs": 2, "lidar_rays": 64, "time_limit": 2.0},
            "ppo": {"total_env_steps": 16, "num_steps": 8, "num_minibatches": 2, "update_epochs": 1},
            "eval": {"every": 1, "episodes": 2, "start_positions": 2, "max_steps": 12, "gif_frame_every": 2},
        },
    )
    result = trainer.train(cfg, progress=False)
    metrics = result.history[-1]
    assert metrics["env_steps"] == 16.0
    assert 0.0 <= metrics["eval/progress"] < 0.2 and metrics["eval/laps"] == 0.0
    assert (result.run_dir / "config.toml").is_file()
    figures = rl_agent.main(["--config", str(result.run_dir / "config.toml"), "--eval"])
    assert figures == 0
    report = json.loads((result.run_dir / "eval.json").read_text())
    assert report["checkpoint"] == 1 and report["episodes"] == 2 and report["start_positions"] == 2
    assert [e["start"] for e in report["per_episode"]] == [0.0, 0.5]  # the start line, then half a lap on
    assert report["return_min"] <= report["return"] <= report["return_max"]
    assert Image.open(report["gif"]).size == (320, 320)


# --------------------------------------------------------------------------------------------- freezing via the config


def test_freeze_encoders_in_the_config_reaches_the_optimizer(tmp_path):
    """`finetune.freeze_encoders = true` through `setup(cfg)`: encoder and fusion parameters stay bitwise
    unchanged by updates that move the heads; with it false the same updates move the encoders."""
    example = jax.tree.map(lambda x: x[0], _random_batch(1).obs)

    def moved(freeze: bool) -> tuple[bool, bool]:
        cfg = config.from_dict(
            RLConfig,
            {
                "run": {"name": "freeze", "out_dir": str(tmp_path)},
                "env": {"num_envs": 8},
                "model": config.to_dict(TINY_MODEL),
                "ppo": {
                    "agent": "raceformer",
                    "total_env_steps": 64,
                    "num_steps": 8,
                    "num_minibatches": 2,
                    "update_epochs": 2,
                    "learning_rate": 1e-2,
                },
                "finetune": {"freeze_encoders": freeze},
            },
        )
        env = rl_envs.TrainingEnv(2, example, make_engine=None, evaluate=None)
        s = trainer.setup(cfg, env)
        state = s.learner.init_state(s.params, example, jax.random.PRNGKey(0))
        before = _leaves_by_path(state.params)
        for i in range(2):
            state, _ = jax.jit(s.learner.update)(state, _random_batch(16, key=i))
        after = _leaves_by_path(state.params)
        changed = {p for p in before if not np.array_equal(before[p], after[p])}
        frozen = {p for p in before if any(p[: len(f)] == f for f in FROZEN_PREFIXES)}
        assert {("model", "encoders"), ("model", "fusion")} <= {p[:2] for p in frozen}
        heads = any("policy_head" in p or "value_head" in p for p in changed)
        return bool(changed & frozen), heads

    assert moved(freeze=True) == (False, True)
    assert moved(freeze=False) == (True, True)


# --------------------------------------------------------------------------------------------- evaluation starts


def test_eval_starts_are_spread_evenly_and_validated():
    cfg = _point_cfg_eval(start_positions=4, episodes=8)
    np.testing.assert_allclose(evaluate.eval_starts(cfg, 8), [0, 0.25, 0.5, 0.75] * 2)
    with pytest.raises(config.ConfigError, match="start_positions"):
        evaluate.eval_starts(cfg, 3)
    with pytest.raises(config.ConfigError, match="start_positions"):
        rl_envs.make_training_env(config.replace(cfg, env={"kind": "gymnasium"}))


def _point_cfg_eval(**eval_settings) -> RLConfig:
    return config.from_dict(RLConfig, {"eval": eval_settings})


def test_reset_at_gives_distinct_poses_at_evenly_spaced_progress():
    from src.envs.racecar import env as racecar
    from src.envs.racecar.params import make_params

    params = make_params("default", lidar_rays=8)
    k = 8
    starts = jnp.arange(k) / k
    _, states = jax.jit(jax.vmap(lambda key, p: racecar.reset_at(key, params, p)))(
        jax.random.split(jax.random.PRNGKey(0), k), starts
    )
    progress = np.asarray(states.lap_progress, np.float64)
    gap = np.abs((progress - np.asarray(starts) + 0.5) % 1.0 - 0.5)  # circular distance to k / K
    assert gap.max() < 0.01, progress
    np.testing.assert_array_equal(np.asarray(states.total_progress), 0.0)  # laps count from each start
    xy = np.stack([states.x, states.y], 1)
    spacing = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(k) * 1e9
    assert spacing.min() > 0.1 * params.track_length / k  # K distinct poses around the track
    _, grid = racecar.reset(jax.random.PRNGKey(0), params)  # the first start is the start line
    np.testing.assert_allclose(
        [states.x[0], states.y[0], states.yaw[0]], [grid.x, grid.y, grid.yaw], atol=1e-6
    )


def test_summarize_eval_reports_the_spread_over_starts():
    """Four racing episodes from two starts (0 and 0.5), dt 1 s. Episode 0 finishes a clean lap in 1 s;
    episode 1 finishes in 1 s after a collision; episode 2 ends unfinished; episode 3 finishes in 2 s after
    a collision. Returns 1, 2, 3, 6 (rows after an episode's end do not count)."""
    rec = {
        "reward": np.array([[1.0, 2.0, 3.0, 2.0], [9.0, 9.0, 9.0, 4.0]]),
        "done": np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool),
        "lap": np.array([[2, 2, 1, 1], [1, 1, 1, 2]], float),
        "total_progress": np.array([[1.0, 1.0, 0.5, 0.6], [0.0, 0.0, 0.0, 1.0]]),
        "wall_collision": np.array([[0, 1, 0, 1], [1, 1, 1, 0]], bool),
        "start": np.array([0.0, 0.5, 0.0, 0.5]),
    }
    out = evaluate.summarize_eval(rec, control_dt=1.0)
    assert out["start_positions"] == 2 and out["episodes"] == 4
    assert (out["return"], out["return_min"], out["return_max"]) == (3.0, 1.0, 6.0)
    assert out["return_std"] == pytest.approx(np.std([1.0, 2.0, 3.0, 6.0]))
    # clean laps per start: start 0 -> episodes 0 (clean) and 2 (unfinished): 0.5; start 0.5 -> 1 and 3 hit: 0
    clean = [out[f"lap_completed_clean{s}"] for s in ("", "_std", "_min", "_max")]
    assert clean == [0.25, 0.25, 0.0, 0.5]
    assert out["lap_time"] == pytest.approx(4.0 / 3.0)
    assert out["lap_time_std"] == pytest.approx(np.std([1.0, 1.0, 2.0]))
    assert (out["lap_time_min"], out["lap_time_max"]) == (1.0, 2.0)
    assert (out["collision_rate"], out["laps"]) == (0.5, 0.75)


# --------------------------------------------------------------------------------------------- host engine, PyBullet


class _RawRecorder(gymnasium.vector.VectorWrapper):
    """Keeps the raw (racecar_gym-style) observations the vector env hands the Contract-1 wrapper."""

    def __init__(self, env):
        super().__init__(env)
        self.obs, self.finals = [], []

    def reset(self, **kw):
        obs, info = self.env.reset(**kw)
        self.obs.append(obs)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.obs.append(obs)
        self.finals.append(info.get("final_obs"))
        return obs, reward, terminated, truncated, info


@pytest.mark.slow  # ~35-65 s on 2 shared CPU cores: PyBullet plus compiling the policy, value and update
def test_bullet_host_engine_feeds_the_agent_contract_obs_final_observations_included():
    """The PPO host engine on PyBullet gets Contract-1 samples from `ContractObsVectorWrapper`, equal to
    `contract_obs` of the raw observations, and bootstraps a truncated episode from its mapped final one."""
    cfg = config.from_dict(
        RLConfig,
        {
            "env": {"kind": "bullet", "num_envs": 2, "max_episode_steps": 3, "lidar_rays": 64},
            "model": config.to_dict(TINY_MODEL),
            "ppo": {
                "agent": "raceformer",
                "total_env_steps": 8,
                "num_steps": 4,
                "num_minibatches": 1,
                "update_epochs": 1,
                "bootstrap_truncation": True,
            },
        },
    )
    s = trainer.setup(cfg)
    engine = s.env.make_engine(s.learner)
    assert isinstance(engine.env, wrappers.ContractObsVectorWrapper)
    raw = engine.env.env = _RawRecorder(engine.env.env)
    sim = raw.unwrapped.get_attr("sim_config")[0]
    spec = observations.ScanSpec(sim.lidar_rays, sim.lidar_fov, sim.lidar_range)
    seen_policy, seen_value = [], []
    policy_step, value = engine.policy_step, engine.value
    engine.policy_step = lambda st, obs: (seen_policy.append(obs), policy_step(st, obs))[1]
    engine.value = lambda st, obs: (seen_value.append(obs), value(st, obs))[1]

    def expected(env_obs):
        sample, valid = observations.contract_obs(env_obs, TINY_MODEL.modalities, cfg.model.bev, spec)
        sample.pop("timestamp")
        return {**sample, "valid": valid}

    def assert_equal(got, want):
        assert jax.tree.structure(got) == jax.tree.structure(want)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), got, want)

    engine.reset(seed=0)
    state = s.learner.init_state(s.params, s.env.obs_example, jax.random.PRNGKey(0))
    engine.run_iteration(state)
    assert len(seen_policy) == 4 and len(raw.obs) == 5
    for got, env_obs in zip(seen_policy, raw.obs[:4], strict=True):
        assert_equal(got, expected(env_obs))
    # both envs are truncated at step 3 (index 2): one bootstrap value on the finished episodes' last
    # observations, then the value of the rollout's last observation
    assert [f is not None for f in raw.finals] == [False, False, True, False] and len(seen_value) == 2
    finals = raw.finals[2]
    want = expected(jax.tree.map(lambda *xs: np.stack(xs), *finals))
    assert_equal(seen_value[0], want)
    assert not np.array_equal(want["gps"], expected(raw.obs[3])["gps"])  # not the new episode's first obs
    assert_equal(seen_value[1], expected(raw.obs[4]))
    engine.close()
