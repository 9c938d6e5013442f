"""The one Grain loader tail under every source: this process's shard, reshuffled each epoch, repeated, then the
iterator (decode threads, prefetch, worker processes).

A source module builds the head (`grain.MapDataset.source(records)` or `.range(len(source))`), passes it through
`epochs`, maps its own decoding and batches; `to_iter` turns the result into an iterator dataset whose iterators
have `get_state()` / `set_state()`. Workers are spawned processes that end with their parent
(`processes.worker_init`); a caller that closes its iterator releases Grain's shared memory with
`processes.release_shared_memory`.
"""

from __future__ import annotations

import grain

from src.infra import processes


def _check_shard_index(shard_index: int, shard_count: int) -> None:
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} is not in [0, shard_count={shard_count})")


def check_shard(
    size: int, batch_size: int, shard_index: int, shard_count: int, what: str = "samples", where: str = ""
) -> None:
    """A ValueError unless this process's shard (indices shard_index::shard_count of `size`) fills one batch.

    `what` names the items and `where` (optional) the data set in the message."""
    _check_shard_index(shard_index, shard_count)
    shard = len(range(shard_index, size, shard_count))
    if shard < batch_size:
        prefix = f"{where}: " if where else ""
        raise ValueError(
            f"{prefix}shard {shard_index}/{shard_count} has {shard} {what}, fewer than batch_size={batch_size}"
        )


def epochs(
    ds: grain.MapDataset,
    *,
    seed: int,
    shuffle: bool = True,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    """This process's shard of `ds` (a strided slice), shuffled with `seed` (a new order each epoch) and repeated
    `num_epochs` times (None: forever)."""
    _check_shard_index(shard_index, shard_count)
    ds = ds[shard_index::shard_count]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    return ds.repeat(num_epochs)


def to_iter(
    ds: grain.MapDataset, num_workers: int = 0, prefetch: int = 2, num_threads: int = 2
) -> grain.IterDataset:
    """An iterator dataset; with workers, batches are built in `num_workers` spawned processes."""
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=max(1, num_threads), prefetch_buffer_size=max(1, prefetch))
    )
    if num_workers > 0:
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=max(1, prefetch)),
            worker_init_fn=processes.worker_init,  # workers end with their parent
        )
    return it
