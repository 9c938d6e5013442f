"""Mesh sizing and parameter layouts, and the train step across devices and processes.

The multi-device checks run in subprocesses (the device count is fixed when JAX starts): 8 fake CPU devices
(data x fsdp = 4 x 2, FSDP parameters) against 1 device, and two `jax.distributed` processes over gloo.
All three subprocesses start together in one fixture so that their compiles overlap.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from src.config import ConfigError, MeshConfig
from src.infra import sharding
from src.pretraining import loop as pretrain_loop
from tests._pretrain_fakes import tiny_config, tiny_data_fn

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def test_mesh_shape_fills_in_and_rejects_bad_sizes():
    assert sharding.mesh_shape(MeshConfig(data=-1, fsdp=2), 8) == (4, 2)
    assert sharding.mesh_shape(MeshConfig(data=2, fsdp=-1), 8) == (2, 4)
    assert sharding.mesh_shape(MeshConfig(data=-1, fsdp=1), 1) == (1, 1)
    with pytest.raises(ConfigError, match=r"data \(3\) x fsdp \(2\) = 6, but there are 8 devices"):
        sharding.mesh_shape(MeshConfig(data=3, fsdp=2), 8)
    with pytest.raises(ConfigError, match="not divisible by 3"):
        sharding.mesh_shape(MeshConfig(data=-1, fsdp=3), 8)
    mesh = sharding.make_mesh(MeshConfig())
    assert mesh.axis_names == ("data", "fsdp") and mesh.devices.size == jax.device_count()


def test_param_spec_splits_largest_divisible_dim():
    assert sharding.param_spec((64, 256), 2) == P(None, "fsdp")
    assert sharding.param_spec((256, 64), 2) == P("fsdp")
    assert sharding.param_spec((96, 33), 4) == P("fsdp")  # 33 is not divisible by 4
    assert sharding.param_spec((33, 35), 2) == P()  # nothing divisible
    assert sharding.param_spec((16,), 2) == P()  # small: stays replicated
    assert sharding.param_spec((64, 256), 1) == P()


def test_local_batch_size_checks_divisibility():
    assert sharding.local_batch_size(8, sharding.make_mesh(MeshConfig())) == 8
    eight = types.SimpleNamespace(devices=np.empty((4, 2), object))  # only the device count is read
    assert sharding.local_batch_size(16, eight) == 16
    with pytest.raises(ConfigError, match="batch_size=12 is not divisible by the 8 mesh devices"):
        sharding.local_batch_size(12, eight)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def subprocess_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    port = _free_port()
    procs = {
        "eight": subprocess.Popen(
            [sys.executable, str(TESTS / "_eight_device_worker.py"), str(out / "eight")],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ),
        **{
            f"proc{i}": subprocess.Popen(
                [sys.executable, str(TESTS / "_two_process_worker.py"), str(port), str(i), str(out)],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for i in range(2)
        },
    }
    results = {}
    try:
        for name, p in procs.items():
            stdout, stderr = p.communicate(timeout=600)
            assert p.returncode == 0, f"{name} failed:\n{stderr[-3000:]}"
            results[name] = stdout
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    return out, results


def test_eight_devices_fsdp_match_one_device(subprocess_runs):
    _, results = subprocess_runs
    figures = json.loads(results["eight"].strip().splitlines()[-1])
    assert figures["fsdp_split_params"] > 0
    np.testing.assert_allclose(figures["eight"], figures["one"], rtol=0, atol=1e-5)
    assert figures["one"][2] < figures["one"][0]  # the steps did train


def test_terrain_training_is_data_parallel_over_eight_devices(subprocess_runs):
    _, results = subprocess_runs
    t = json.loads(results["eight"].strip().splitlines()[-1])["terrain"]
    assert t["eight_devices"] == t["eight_param_devices"] == 8 and t["one_devices"] == t["one_param_devices"] == 1
    np.testing.assert_allclose(t["eight"], t["one"], rtol=0, atol=1e-5)
    assert t["one"][2] < t["one"][0]
    assert t["error"] == "represent.batch = 12 is not divisible by the 8 devices of the mesh"


def test_two_processes_train_identically(subprocess_runs):
    out, _ = subprocess_runs
    a, b = (json.loads((out / f"process_{i}.json").read_text()) for i in range(2))
    assert a["process_count"] == b["process_count"] == 2 and a["devices"] == 2
    assert a["shards"] == [[0, 2]] and b["shards"] == [[1, 2]]
    assert a["losses"] == b["losses"] and len(a["losses"]) == 4
    assert all(np.isfinite(a["losses"]))
    assert a["checksum"] == b["checksum"]
    assert not set(a["seen"]) & set(b["seen"])  # each process read only its own shard
    assert {int(t) % 2 for t in a["seen"]} == {0} and {int(t) % 2 for t in b["seen"]} == {1}
    assert a["checkpoints"] == [2, 4]
    assert (out / "runs" / "two" / "encoder" / "weights.npz").is_file()


def test_resume_with_another_process_count_names_both_layouts(subprocess_runs):
    out, _ = subprocess_runs  # runs/two: written by the two gloo processes (checkpoints at steps 2 and 4)
    cfg = tiny_config(out / "runs", "two", ("lidar", "gps"), training={"steps": 6, "checkpoint_every": 2})
    with pytest.raises(ConfigError, match=r"ckpt/4 was written by 2 processes \(mesh data=2 x fsdp=1\), but this "
                                          r"run has 1 process \(mesh data=1 x fsdp=1\)"):
        pretrain_loop.train(cfg, data_fn=tiny_data_fn(), progress=False)


@pytest.mark.slow
def test_resume_on_another_mesh_reshards(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, str(TESTS / "_eight_device_worker.py"), str(tmp_path), "--reshard"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    # steps 1-2 on data x fsdp = 4 x 2 (FSDP), then resumed on 8 x 1 (replicated): the single-device losses
    np.testing.assert_allclose(figures["resharded"], figures["one"], rtol=0, atol=1e-5)
    assert "(mesh data=4 x fsdp=2) to 1 process (mesh data=8 x fsdp=1)" in out.stdout


def test_distributed_start_decision(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    for var in ("SLURM_JOB_ID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    assert not sharding.initialize_distributed(MeshConfig(distributed="auto"))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    assert not sharding.initialize_distributed(MeshConfig(distributed="auto"))  # a single-task step
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")
    assert not sharding.initialize_distributed(MeshConfig(distributed="off"))
    assert calls == []
    assert sharding.initialize_distributed(MeshConfig(distributed="auto"))
    assert calls == [{}]  # SLURM: JAX reads coordinator, count and rank from the environment
    explicit = MeshConfig(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2)
    assert sharding.initialize_distributed(explicit)
    assert calls[-1] == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2}
    with pytest.raises(ConfigError, match="needs mesh.num_processes"):
        sharding.initialize_distributed(MeshConfig(coordinator_address="10.0.0.1:1234"))
    # GPUs: each task drives the GPU at its local rank among all the node's GPUs it sees (--gpus-per-node) ...
    monkeypatch.setenv("JAX_PLATFORMS", "")
    monkeypatch.setenv("SLURM_LOCALID", "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert sharding.initialize_distributed(MeshConfig())
    assert calls[-1] == {"local_device_ids": [2]}
    # ... and a task that sees one GPU (--gpus-per-task=1) is told what to request instead of an invalid ordinal.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    with pytest.raises(ConfigError, match=r"SLURM_LOCALID=2 sees 1 GPU.*--gpus-per-node .*not --gpus-per-task"):
        sharding.initialize_distributed(MeshConfig())
    assert len(calls) == 3
