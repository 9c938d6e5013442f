"""Device mesh, multi-host start-up and the shardings of batches and parameters.

The mesh has two axes, `data` and `fsdp`; a batch is split over both on its batch axis (every device sees a
different slice). Parameters are either replicated or FSDP-sharded: each large parameter is split over `fsdp` on
its largest dimension that the fsdp size divides (XLA inserts the all-gathers / reduce-scatters). Multi-host
runs call `jax.distributed.initialize` before anything touches a device; every process then feeds only its own
slice of the global batch (`shard_batch`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from src.config import ConfigError, MeshConfig

AXES: tuple[str, str] = ("data", "fsdp")
BATCH_AXES: tuple[str, str] = AXES
FSDP_MIN_SIZE = 1024
"""Parameters with fewer elements stay replicated under FSDP: splitting them saves nothing and costs a gather."""


def _slurm_multi_task() -> bool:
    """Inside an `srun` step of several tasks (not the batch script itself, which would wait for peers forever)."""
    return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1


def slurm_local_device_ids() -> list[int] | None:
    """The GPU this SLURM task drives: [SLURM_LOCALID], an index into the GPUs the task sees.

    This is the binding JAX's SLURM support expects: one task per GPU, every task of a node seeing all the node's
    GPUs (`--gpus-per-node`, or `--gres=gpu:N`, with `--gpu-bind=none`). Under `--gpus-per-task=1` each task sees a
    single GPU and local rank r > 0 would ask for a device ordinal that does not exist: that is reported here.
    None outside SLURM and on CPU (JAX_PLATFORMS=cpu).
    """
    local = os.environ.get("SLURM_LOCALID")
    if local is None or os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        return None
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if visible and int(local) >= len(visible):
        raise ConfigError(
            f"SLURM task with SLURM_LOCALID={local} sees {len(visible)} GPU(s) (CUDA_VISIBLE_DEVICES="
            f"{os.environ['CUDA_VISIBLE_DEVICES']}); one JAX process per GPU needs every task of a node to see all of "
            "the node's GPUs: request them with --gpus-per-node (or --gres=gpu:N) and --gpu-bind=none, "
            "not --gpus-per-task"
        )
    return [int(local)]


def initialize_distributed(cfg: MeshConfig) -> bool:
    """Start the JAX multi-process runtime if the config (or SLURM) asks for it; True when it was started.

    distributed = "off": never. "on": always (explicit coordinator arguments if given, otherwise JAX's cluster
    auto-detection, e.g. SLURM). "auto": when a coordinator address is configured or the job is a multi-task
    SLURM step. Must run before any other JAX call touches a device.
    """
    explicit = bool(cfg.coordinator_address)
    if cfg.distributed == "off" or (cfg.distributed == "auto" and not explicit and not _slurm_multi_task()):
        return False
    if jax.distributed.is_initialized():
        return True
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or (cfg.coordinator_address or "").startswith(
        ("127.", "localhost")
    ):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        if cfg.num_processes < 1 or cfg.process_id < 0:
            raise ConfigError(
                f"mesh.coordinator_address={cfg.coordinator_address!r} needs mesh.num_processes >= 1 and "
                f"mesh.process_id >= 0 (got {cfg.num_processes}, {cfg.process_id})"
            )
        jax.distributed.initialize(
            coordinator_address=cfg.coordinator_address,
            num_processes=cfg.num_processes,
            process_id=cfg.process_id,
        )
    elif (local_ids := slurm_local_device_ids()) is not None:
        jax.distributed.initialize(local_device_ids=local_ids)
    else:
        jax.distributed.initialize()
    return True


def layout(mesh: Mesh) -> dict[str, Any]:
    """How a run is spread: the process count and the mesh axis sizes (saved with every checkpoint)."""
    return {"processes": jax.process_count(), "mesh": {str(k): int(v) for k, v in mesh.shape.items()}}


def _layout_text(layout: dict[str, Any]) -> str:
    n = layout["processes"]
    mesh = " x ".join(f"{k}={v}" for k, v in layout["mesh"].items())
    return f"{n} process{'es' if n != 1 else ''} (mesh {mesh})"


def check_resume_layout(saved: dict[str, Any] | None, current: dict[str, Any], where: str) -> str | None:
    """Whether a checkpoint written with layout `saved` can continue under `current`.

    Another mesh is fine: Orbax restores every array into the current shardings; returns a line saying so. Another
    process count is an error naming both layouts: each process's data-iterator position belongs to its own data
    shard, so the data order could not continue. None when nothing changed (or the checkpoint has no record).
    """
    if not saved or saved == current:
        return None
    if saved.get("processes") != current["processes"]:
        raise ConfigError(
            f"{where} was written by {_layout_text(saved)}, but this run has {_layout_text(current)}: the data "
            f"positions saved per process cannot be continued by another number of processes. Resume it with "
            f"{saved.get('processes')} processes, or start a new run (another run.name, or run.resume=false)"
        )
    return f"resharding {where} from {_layout_text(saved)} to {_layout_text(current)}"


def describe(mesh: Mesh) -> str:
    """The line every process prints once at start, so that a log shows whether distributed training is on."""
    return (
        f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local devices, "
        f"{jax.device_count()} global devices ({jax.default_backend()}), "
        f"mesh {' x '.join(f'{k}={v}' for k, v in mesh.shape.items())}"
    )


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int]:
    """(data, fsdp) sizes for `num_devices`; -1 for data (or fsdp) takes all the remaining devices."""
    data, fsdp = cfg.data, cfg.fsdp
    if data == -1 and fsdp == -1:
        raise ConfigError("mesh.data and mesh.fsdp cannot both be -1")
    for name, v in (("data", data), ("fsdp", fsdp)):
        if v == 0 or v < -1:
            raise ConfigError(f"mesh.{name}={v}: expected a positive size or -1")
    if data == -1 or fsdp == -1:
        known = fsdp if data == -1 else data
        if num_devices % known:
            raise ConfigError(f"mesh: {num_devices} devices are not divisible by {known}")
        data, fsdp = (num_devices // known, fsdp) if data == -1 else (data, num_devices // known)
    if data * fsdp != num_devices:
        raise ConfigError(f"mesh: data ({data}) x fsdp ({fsdp}) = {data * fsdp}, but there are {num_devices} devices")
    return data, fsdp


def make_mesh(cfg: MeshConfig, devices: list[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp) mesh over all devices (global across processes); fsdp neighbours are adjacent devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(cfg, len(devices))
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch axis split over every device (data x fsdp); the other axes whole."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_spec(shape: tuple[int, ...], fsdp: int, min_size: int = FSDP_MIN_SIZE) -> P:
    """FSDP spec of one parameter: split its largest dim divisible by `fsdp` (ties: the last), else replicate."""
    if fsdp <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    candidates = [(d, i) for i, d in enumerate(shape) if d % fsdp == 0]
    if not candidates:
        return P()
    _, axis = max(candidates)
    return P(*([None] * axis), "fsdp")


def state_shardings(state: Any, mesh: Mesh, mode: str) -> Any:
    """NamedShardings for every array leaf of `state` (model/optimizer state): replicated, or FSDP per leaf."""
    if mode not in ("replicated", "fsdp"):
        raise ConfigError(f"mesh.param_sharding={mode!r}: expected 'replicated' or 'fsdp'")
    fsdp = mesh.shape["fsdp"]

    def spec(x: Any) -> NamedSharding:
        shape = tuple(getattr(x, "shape", ()))
        return NamedSharding(mesh, param_spec(shape, fsdp) if mode == "fsdp" else P())

    return jax.tree.map(spec, state)


def put_global(tree: Any, shardings: Any) -> Any:
    """Place host values that are identical on every process as global arrays with `shardings`."""

    def put(x: Any, sharding: NamedSharding) -> jax.Array:
        is_key = isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
        value = np.asarray(jax.device_get(jax.random.key_data(x) if is_key else x))
        out = jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])
        return jax.random.wrap_key_data(out, impl=jax.random.key_impl(x)) if is_key else out

    return jax.tree.map(put, tree, shardings)


def shard_batch(local_batch: Any, mesh: Mesh) -> Any:
    """This process's slice of the batch (NumPy, batch axis first) -> global arrays split over (data, fsdp)."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def local_batch_size(global_batch: int, mesh: Mesh) -> int:
    """Samples each process loads per step; the global batch must split evenly over processes and devices."""
    devices, processes = mesh.devices.size, jax.process_count()
    if global_batch % devices:
        raise ConfigError(f"training.batch_size={global_batch} is not divisible by the {devices} mesh devices")
    if global_batch % processes:
        raise ConfigError(f"training.batch_size={global_batch} is not divisible by {processes} processes")
    return global_batch // processes
