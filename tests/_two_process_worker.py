"""One of two JAX processes of `test_sharding.test_two_processes_train_identically` (run as a script).

usage: python tests/_two_process_worker.py PORT PROCESS_ID OUT_DIR
Trains the tiny config for a few steps under `jax.distributed` (CPU collectives over gloo, one device per
process, data axis over both) and writes OUT_DIR/process_<id>.json: the losses, a checksum of every
parameter (gathered onto this process) and the sample timestamps this process loaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from src.infra import sharding  # noqa: E402
from src.pretraining import loop as pretrain_loop
from tests._pretrain_fakes import RecordingIterator, tiny_config, tiny_data_fn  # noqa: E402


def main() -> None:
    port, pid, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    mesh = {"coordinator_address": f"127.0.0.1:{port}", "num_processes": 2, "process_id": pid, "data": -1}
    cfg = tiny_config(out / "runs", "two", ("lidar", "gps"), mesh=mesh, training={"steps": 4, "checkpoint_every": 2})
    inner = tiny_data_fn()
    seen: list[float] = []
    shards: list[tuple[int, int]] = []

    def data_fn(cfg, *, batch_size, shard_index, shard_count):
        shards.append((shard_index, shard_count))
        return RecordingIterator(inner(cfg, batch_size=batch_size, shard_index=shard_index, shard_count=shard_count),
                                 seen)

    result = pretrain_loop.train(cfg, data_fn=data_fn, progress=False)
    gather = jax.jit(lambda x: x, out_shardings=sharding.replicated(sharding.make_mesh(cfg.mesh)))
    params = gather(result.state["model"])
    leaves = [np.asarray(x.addressable_data(0), np.float64) for x in jax.tree.leaves(params)]
    checksum = [float(np.sum(x)) for x in leaves] + [float(np.sum(x * x)) for x in leaves]
    (out / f"process_{pid}.json").write_text(json.dumps({
        "process_count": jax.process_count(), "devices": jax.device_count(), "shards": shards,
        "losses": [result.losses[k] for k in sorted(result.losses)], "checksum": checksum, "seen": seen,
        "checkpoints": sorted(int(p.name) for p in (out / "runs" / "two" / "ckpt").iterdir() if p.name.isdigit()),
    }))


if __name__ == "__main__":
    main()
