"""PPO math against hand-computed numbers, and both engines learning on small envs."""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from src import config
from src.config import PPOConfig
from src.models.actor_critic import MLPAgent
from src.rl import normalize, ppo, train_jax, trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# --------------------------------------------------------------------------------------------- GAE


def test_gae_hand_computed():
    """gamma = lam = 0.5, 4 steps. Column 0: the episode terminates at t=1; column 1: it is truncated at t=1
    with V(final obs) = 4, which bootstraps (truncation is not a true end)."""
    rewards = jnp.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    values = jnp.array([[0.5, 0.5], [1.0, 1.0], [1.5, 1.5], [2.0, 2.0]])
    # V(s_{t+1}); at t=1 the final state's value (ignored when terminal); at t=3 the bootstrap value 3.
    next_values = jnp.array([[1.0, 1.0], [9.0, 4.0], [2.0, 2.0], [3.0, 3.0]])
    terminal = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    done = jnp.array([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    adv, ret = ppo.gae(rewards, values, next_values, terminal, done, gamma=0.5, lam=0.5)
    # deltas col 0: 1+0.5*1-0.5=1, 2-1=1, 3+0.5*2-1.5=2.5, 4+0.5*3-2=3.5
    # A3=3.5, A2=2.5+0.25*3.5=3.375, A1=1 (episode ends), A0=1+0.25*1=1.25
    # col 1: delta1 = 2+0.5*4-1 = 3, so A1=3 and A0 = 1+0.25*3 = 1.75
    expected = np.array([[1.25, 1.75], [1.0, 3.0], [3.375, 3.375], [3.5, 3.5]])
    np.testing.assert_allclose(adv, expected, rtol=1e-6)
    np.testing.assert_allclose(ret, expected + np.asarray(values), rtol=1e-6)


# --------------------------------------------------------------------------------------------- losses


def test_clipped_objective_gradient_zero_outside_clip_range():
    grad = jax.grad(lambda logp, adv: ppo.clipped_surrogate_loss(jnp.exp(logp), adv, 0.2))
    log = lambda r: jnp.log(jnp.array([r]))  # noqa: E731
    pos, neg = jnp.array([1.0]), jnp.array([-1.0])
    # Ratio beyond the clip in the advantage's favour: no gradient.
    assert float(grad(log(1.5), pos)[0]) == 0.0
    assert float(grad(log(0.5), neg)[0]) == 0.0
    # Inside the range, or outside against the advantage: d/dlogp of -A r = -A r.
    np.testing.assert_allclose(grad(log(1.1), pos), [-1.1], rtol=1e-6)
    np.testing.assert_allclose(grad(log(0.5), pos), [-0.5], rtol=1e-6)
    np.testing.assert_allclose(grad(log(1.5), neg), [1.5], rtol=1e-6)


def test_value_loss_clipping_takes_the_pessimistic_branch():
    v, old, ret = jnp.array([2.0]), jnp.array([0.0]), jnp.array([3.0])
    assert float(ppo.value_loss(v, old, ret, None)) == pytest.approx(0.5 * 1.0)
    # clipped value 0.2 -> (0.2-3)^2 = 7.84 > 1
    assert float(ppo.value_loss(v, old, ret, 0.2)) == pytest.approx(0.5 * 7.84)


def test_tanh_log_prob_has_the_change_of_variables_term():
    mean, log_std, u = jnp.array([[0.3, -0.2]]), jnp.array([-0.5, 0.1]), jnp.array([[0.7, -1.4]])
    std = np.exp(np.asarray(log_std))
    gauss = -0.5 * ((np.asarray(u) - np.asarray(mean)) / std) ** 2 - np.log(std) - 0.5 * math.log(2 * math.pi)
    scale = 2.0
    jac = np.log(scale * (1 - np.tanh(np.asarray(u)) ** 2))
    np.testing.assert_allclose(ppo.log_prob(mean, log_std, u, "clip", scale), gauss.sum(-1), rtol=1e-5)
    np.testing.assert_allclose(
        ppo.log_prob(mean, log_std, u, "tanh", scale), (gauss - jac).sum(-1), rtol=1e-4
    )
    np.testing.assert_allclose(ppo.squash(u, "tanh", scale), scale * np.tanh(np.asarray(u)), rtol=1e-6)
    np.testing.assert_allclose(ppo.squash(u, "clip", scale), [[1.4, -2.0]], rtol=1e-6)


def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(3.0, 2.0, (50, 3)).astype(np.float32), rng.normal(-1.0, 0.5, (30, 3)).astype(np.float32)
    obs = {"x": a[0], "valid": np.bool_(True)}
    rms = normalize.rms_init(obs)
    for chunk in (a, b):
        rms = normalize.rms_update(rms, {"x": chunk, "valid": np.ones(len(chunk), bool)})
    both = np.concatenate([a, b])
    np.testing.assert_allclose(rms.mean["x"], both.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rms.var["x"], both.var(0), rtol=1e-3)
    out = normalize.rms_normalize(rms, {"x": both, "valid": np.ones(80, bool)}, 10.0)
    assert out["valid"].dtype == np.bool_
    np.testing.assert_allclose(out["x"].mean(0), 0.0, atol=1e-3)


# --------------------------------------------------------------------------------------------- engines


def point_env(horizon: int = 16) -> train_jax.JaxEnv:
    """A 1-D point that should be driven to the origin: x' = x + 0.25 a, reward -x^2, truncated at `horizon`."""

    def reset(key):
        x = jax.random.uniform(key, (), minval=-1.0, maxval=1.0)
        return jnp.array([x]), (x, jnp.zeros((), jnp.int32))

    def step(key, state, action):
        x, t = state
        x = jnp.clip(x + 0.25 * action[0], -2.0, 2.0)
        t = t + 1
        return jnp.array([x]), (x, t), -(x**2), jnp.array(False), t >= horizon, {"x": jnp.abs(x)}

    return train_jax.JaxEnv(reset, step, episode_info=("x",))


TINY = PPOConfig(
    total_env_steps=16 * 32 * 12,
    num_steps=32,
    num_minibatches=4,
    update_epochs=4,
    learning_rate=3e-3,
    gamma=0.9,
    norm_obs=True,
    norm_reward=True,
    agent="mlp",
    mlp_hidden=(16,),
)


@pytest.fixture(scope="module")
def jax_engine():
    agent = MLPAgent(1, 1, TINY.mlp_hidden, -0.5, rngs=nnx.Rngs(0))
    learner, params = ppo.Learner.create(agent, TINY, 12 * TINY.update_epochs * TINY.num_minibatches)
    engine = train_jax.JaxEngine(learner, point_env(), num_envs=16)
    return engine, learner, params


def test_jax_engine_raises_the_return(jax_engine):
    engine, learner, params = jax_engine
    runner = engine.init(learner.init_state(params, jnp.zeros(1), jax.random.key(1)), jax.random.key(2))
    returns = []
    for _ in range(12):
        runner, metrics = engine.run_iteration(runner)
        returns.append(metrics["episode/return"])
        assert metrics["episodes"] == 32.0  # 16 envs x 32 steps / horizon 16
    assert int(runner.train.env_steps) == 12 * 32 * 16
    first, last = np.mean(returns[:2]), np.mean(returns[-2:])
    assert last > first + 0.5, returns


def test_make_train_is_the_engine_loop_as_one_function_and_vmaps_over_seeds():
    """PureJaxRL's `train(key)`: 3 iterations as one jitted scan compute what the engine's loop computes from the
    same (learner, env) keys, and vmapped over two keys each seed gets its own run."""
    iterations, agent = 3, lambda: MLPAgent(1, 1, TINY.mlp_hidden, -0.5, rngs=nnx.Rngs(0))
    train, _ = train_jax.make_train(TINY, point_env(), agent(), jnp.zeros(1), num_envs=16, num_iterations=iterations)
    key = jax.random.key(7)
    carry, metrics = jax.jit(train)(key)

    learner, params = ppo.Learner.create(agent(), TINY, iterations * TINY.update_epochs * TINY.num_minibatches)
    engine = train_jax.JaxEngine(learner, point_env(), num_envs=16)
    learner_key, env_key = jax.random.split(key)
    loop = engine.init(learner.init_state(params, jnp.zeros(1), learner_key), env_key)
    loop_returns = []
    for _ in range(iterations):
        loop, m = engine.run_iteration(loop)
        loop_returns.append(m["episode/return"])
    close = lambda a, b: jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)  # noqa: E731
    close(carry.train.params, loop.train.params)
    np.testing.assert_allclose(metrics["episode/return"], loop_returns, rtol=1e-5)
    assert metrics["episodes"].tolist() == [32] * iterations
    assert int(carry.train.env_steps) == iterations * 32 * 16

    seeds, seed_metrics = jax.jit(jax.vmap(train))(jnp.stack([key, jax.random.key(8)]))
    close(jax.tree.map(lambda x: x[0], seeds.train.params), carry.train.params)
    assert not np.allclose(seed_metrics["episode/return"][0], seed_metrics["episode/return"][1])


@pytest.mark.slow
def test_pendulum_reaches_minus_200(tmp_path):
    """Issue target: mean return >= -200 over 10 deterministic episodes within 1M env steps."""

    cfg = config.load(config.RLConfig, CONFIGS / "ppo_pendulum.toml", [f"run.out_dir='{tmp_path}'"])
    t0 = time.perf_counter()
    result = trainer.train(cfg)
    wall = time.perf_counter() - t0
    score = trainer.evaluate_gymnasium(cfg, result.learner, result.state, episodes=10)
    print(f"Pendulum-v1: mean return {score['return']:.1f} over 10 episodes, {wall:.0f} s wall-clock")
    assert score["return"] >= -200.0


def test_learner_bootstraps_an_ended_episode_from_its_own_final_value():
    """The numbers of `test_gae_hand_computed`, through `Learner.advantages` on a [T, N] trajectory: column 0
    terminates at t=1, column 1 is truncated there with V(final obs) = 4, while the next episode's first value
    (row 2) is 1.5. Bootstrapping from 1.5 instead of 4 would give A1 = 1.75 instead of 3 in column 1."""
    cfg = PPOConfig(gamma=0.5, gae_lambda=0.5, bootstrap_truncation=True, agent="mlp", mlp_hidden=(4,))
    learner, _ = ppo.Learner.create(MLPAgent(1, 1, (4,), 0.0, rngs=nnx.Rngs(0)), cfg, 1)
    zeros = jnp.zeros((4, 2))
    traj = ppo.Transition(
        obs=jnp.zeros((4, 2, 1)),
        u=jnp.zeros((4, 2, 1)),
        logp=zeros,
        value=jnp.array([[0.5, 0.5], [1.0, 1.0], [1.5, 1.5], [2.0, 2.0]]),
        reward=jnp.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]),
        terminal=zeros.at[1, 0].set(1.0),
        done=zeros.at[1, :].set(1.0).astype(bool),
        final_value=zeros.at[1, 1].set(4.0),
    )
    adv, ret = jax.jit(learner.advantages)(traj, jnp.array([3.0, 3.0]))
    expected = np.array([[1.25, 1.75], [1.0, 3.0], [3.375, 3.375], [3.5, 3.5]])
    np.testing.assert_allclose(adv, expected, rtol=1e-6)
    np.testing.assert_allclose(ret, expected + np.asarray(traj.value), rtol=1e-6)


# --------------------------------------------------------------------------------------------- squashing


@pytest.mark.parametrize("dist", ["clip", "tanh"])
def test_a_saturated_mean_commands_the_full_action(dist):
    """One squashing per distribution: a policy whose mean saturates reaches |a| > 0.99 of full scale under
    both (a tanh head under the tanh distribution could not pass tanh(tanh(z)) <= 0.76)."""
    from src.config import ModalityConfig, ModelConfig
    from src.models.actor_critic import RaceformerAgent

    model = ModelConfig(
        embed_dim=8,
        depth=1,
        num_heads=2,
        patch_size=4,
        fusion_depth=1,
        decoder_dim=8,
        decoder_heads=2,
        projection_dim=8,
        modalities={"lidar": ModalityConfig(shape=(8, 1)), "gps": ModalityConfig(shape=(4,))},
    )
    agent = RaceformerAgent(model, rngs=nnx.Rngs(0))
    agent.model.policy_head.mean.bias[...] = jnp.array([8.0, -8.0])
    cfg = PPOConfig(action_dist=dist, action_scale=2.0, agent="raceformer")
    learner, params = ppo.Learner.create(agent, cfg, 1)
    rng = np.random.default_rng(0)
    obs = {
        "lidar": rng.uniform(0, 1, (4, 8, 1)).astype(np.float32),
        "gps": rng.normal(size=(4, 4)).astype(np.float32),
        "valid": {"lidar": np.ones(4, bool), "gps": np.ones(4, bool)},
    }
    state = learner.init_state(params, jax.tree.map(lambda x: x[0], obs), jax.random.key(0))
    action = np.asarray(learner.act_deterministic(state, obs)) / cfg.action_scale
    assert (action[:, 0] > 0.99).all() and (action[:, 1] < -0.99).all(), action


# --------------------------------------------------------------------------------------------- gymnax


def _gymnax_cfg(tmp_path, **ppo_overrides) -> config.RLConfig:
    overrides = [f"run.out_dir='{tmp_path}'"] + [f"ppo.{k}={v}" for k, v in ppo_overrides.items()]
    return config.load(config.RLConfig, CONFIGS / "ppo_pendulum_gymnax.toml", overrides)


def test_gymnax_adapter_reports_time_limits_as_truncations():
    from src.envs import gymnax_adapter

    env = gymnax_adapter.make("Pendulum-v1", max_episode_steps=3)
    assert (env.obs_shape, env.action_dim, env.action_low, env.action_high) == ((3,), 1, -2.0, 2.0)
    obs, state = env.reset(jax.random.key(0))
    avals = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype, x.weak_type), tree)  # noqa: E731
    first = avals(state)
    ends = []
    for t in range(3):
        obs, state, reward, terminated, truncated, _ = env.step(jax.random.key(t), state, jnp.array([1.0]))
        ends.append((bool(terminated), bool(truncated)))
        assert obs.shape == (3,) and float(reward) <= 0.0
    assert ends == [(False, False), (False, False), (False, True)]
    assert avals(state) == first  # the engine's carry keeps its types: it compiles once, not twice
    with pytest.raises(ValueError, match="not continuous"):
        gymnax_adapter.make("CartPole-v1")


def test_jax_engine_on_gymnax_pendulum_raises_the_return(tmp_path):
    """24 iterations of the jitted engine on gymnax's Pendulum-v1 (episodes of 200 steps end together every
    third iteration): the episodic return rises from about -1330 to about -1000."""

    cfg = _gymnax_cfg(tmp_path, total_env_steps=16 * 64 * 24, checkpoint_every=0)
    cfg = config.replace(cfg, eval={"every": 0})
    result = trainer.train(cfg, progress=False)
    returns = [h["episode/return"] for h in result.history if "episode/return" in h]
    assert len(result.history) == 24 and len(returns) == 7
    first, last = np.mean(returns[:2]), np.mean(returns[-2:])
    assert last > first + 200.0, returns


@pytest.mark.slow
def test_gymnax_pendulum_reaches_minus_200_on_the_jax_engine(tmp_path):
    """Issue target: mean return >= -200 over 10 deterministic episodes within 1M env steps, jitted engine."""

    cfg = _gymnax_cfg(tmp_path)
    t0 = time.perf_counter()
    result = trainer.train(cfg, progress=False)
    wall = time.perf_counter() - t0
    score = trainer.evaluate_gymnasium(cfg, result.learner, result.state, episodes=10)
    print(f"gymnax Pendulum-v1: mean return {score['return']:.1f} over 10 episodes, {wall:.0f} s wall-clock")
    assert int(result.state.env_steps) <= 1_000_000
    assert score["return"] >= -200.0
