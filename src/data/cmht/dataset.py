"""CMHT scenes -> Grain: a random-access source over every LiDAR sweep of every sequence, and its batches.

A sample is one LiDAR sweep (the master clock) with the other sensors synced to it (`src.data.sync`). The
source splits into two picklable halves so that the expensive part runs in Grain's worker processes:
`RecordTable` (index -> `Record`: file names + GPS/IMU vectors + sync validity, cheap) and `DecodeSample`
(a `grain.transforms.Map`: read/decode files, BEV projection, resize/normalise). `CMHTDataSource[i]` is both at once.
The shard/shuffle/repeat tail and the iterator are the shared `src.data.loader`.

Batch format (what `build_pipeline` yields), for the modalities configured in `model.modalities`:
    lidar     float32 [B, H, W, 4]  BEV: occupancy, max height, mean intensity, log density
    rgb       float32 [B, H, W, 3]  front camera, resized, ImageNet-normalised
    ir        float32 [B, H, W, 1]  infrared, resized, min-max normalised per frame
    radar     float32 [B, H, W, 3]  BEV: occupancy, mean radial velocity, mean RCS, on the LiDAR grid: the
                                    points are moved from the radar's frame with calib/radar/<name>.json
                                    (radar -> LiDAR, `readers.radar_to_lidar`; no file = already LiDAR frame)
    gps       float32 [B, 5]        east, north from the first fix, cos/sin heading, speed (scaled; src/contract.py)
    imu       float32 [B, 6]        gyro x, y, z (rad/s), accel x, y, z (m/s^2), as recorded
    valid     {modality: bool [B]}  False = absent for that sample (its array is zeros)
    timestamp float64 [B]           LiDAR sweep time (s)
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np

from src import contract
from src.config import BevConfig, DataConfig, ModalityConfig, ModelConfig
from src.data import images, loader, sync
from src.data.bev import lidar_bev, radar_bev
from src.data.cmht import index
from src.data.errors import CMHTFormatError, Report
from src.data.pcd import read_pcd
from src.data.sync import GpsImu

log = logging.getLogger(__name__)

FILE_MODALITIES = ("lidar", "rgb", "ir", "radar")  # decoded from one file per sample; gps/imu come from sync
CHANNELS = {"lidar": 4, "radar": 3, "rgb": 3, "ir": 1}


def _shapes(modalities: Mapping[str, ModalityConfig | Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Check the configured modality shapes against what this source produces; returns name -> shape."""
    shapes = {k: tuple(v.shape if isinstance(v, ModalityConfig) else v) for k, v in modalities.items()}
    for name, shape in shapes.items():
        if name in CHANNELS and (len(shape) != 3 or shape[2] != CHANNELS[name]):
            raise ValueError(
                f"model.modalities.{name}.shape={shape}: the CMHT source produces (H, W, {CHANNELS[name]})"
            )
    contract.check_modality_shapes(shapes)
    return shapes


# --------------------------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class Record:
    """What one sample needs before any file is read: the files synced to the sweep and the sync results."""

    timestamp: float
    files: dict[str, str]  # modality -> file, only for file modalities with a synced record
    vectors: dict[str, np.ndarray]  # gps [k], imu [6]
    valid: dict[str, bool]  # sync validity of every configured modality
    radar_to_lidar: np.ndarray | None = None  # [4, 4] the sequence's radar extrinsic; None = radar in LiDAR frame


def sync_table(seq: index.Sequence, data_cfg: DataConfig, gps_imu: GpsImu | None = None) -> sync.SyncTable:
    """The sync table of one sequence (LiDAR is the master clock; GPS/IMU absent = invalid throughout).

    `gps_imu`: the sequence's records when the caller has read them already (reading again would re-read every
    record file and report each bad record a second time); None reads them here."""
    if "lidar" not in seq.streams:
        raise CMHTFormatError(f"{seq.path}: no lidar stream, which is the master clock of a sample")
    others = {s: seq.streams[s].timestamps for s in sync.NEAREST_SENSORS if s in seq.streams}
    if gps_imu is None and "gps_imu" in seq.streams:
        gps_imu = seq.gps_imu()
    return sync.sync_sequence(
        seq.streams["lidar"].timestamps, others, gps_imu, **sync.sync_kwargs(data_cfg)
    )


class RecordTable:
    """Global sample index over all sequences (index -> `Record`); plain data, cheap to send to workers."""

    def __init__(
        self,
        names: Sequence[str],
        files: Sequence[Mapping[str, Sequence[str]]],
        tables: Sequence[sync.SyncTable],
        modalities: Sequence[str],
        radar_to_lidar: Sequence[np.ndarray | None] | None = None,
    ):
        self.names = list(names)
        self.files = [{k: tuple(v) for k, v in f.items()} for f in files]
        self.tables = list(tables)
        self.radar_to_lidar = list(radar_to_lidar) if radar_to_lidar is not None else [None] * len(self.tables)
        self.modalities = tuple(modalities)
        self.offsets = np.cumsum([0] + [len(t) for t in self.tables]).tolist()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Global index -> (sequence number, sweep number within it)."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range [0, {len(self)})")
        s = bisect.bisect_right(self.offsets, index) - 1
        return s, index - self.offsets[s]

    def __getitem__(self, index: int) -> Record:
        s, row = self.locate(int(index))
        table, files = self.tables[s], self.files[s]
        paths: dict[str, str] = {}
        valid: dict[str, bool] = {}
        for m in self.modalities:
            ok = bool(table.valid[m][row])
            if m in FILE_MODALITIES and ok:
                paths[m] = files[m][int(table.index[m][row])]
            valid[m] = ok
        vectors = {"gps": table.gps[row], "imu": table.imu[row]}
        return Record(
            float(table.timestamps[row]),
            paths,
            {k: vectors[k] for k in vectors if k in valid},
            valid,
            self.radar_to_lidar[s],
        )

    def valid_counts(self) -> dict[str, int]:
        """Samples with each configured modality valid after sync (before any file is read)."""
        return {m: int(sum(int(t.valid[m].sum()) for t in self.tables)) for m in self.modalities}


# --------------------------------------------------------------------------------------------- decoding


class DecodeSample(grain.transforms.Map):
    """Record -> Contract-1 sample. Runs inside Grain (in the worker processes when there are workers).

    A record that cannot be read raises `CMHTFormatError` naming the file (on_error="raise") or makes that
    modality invalid with zeros (on_error="skip"); skips are counted in `skipped` (per process: with workers,
    the counts live in the worker processes; the `valid` masks in the batches are the global record).
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], data_cfg: DataConfig, bev: BevConfig):
        self.shapes = dict(shapes)
        self.on_error = data_cfg.on_error
        self.radar_scales = (data_cfg.radar_velocity_scale, data_cfg.radar_rcs_scale)
        self.grids = {m: contract.bev_grid(bev, self.shapes[m]) for m in ("lidar", "radar") if m in self.shapes}
        self.skipped: collections.Counter[str] = collections.Counter()

    def read(self, modality: str, path: str, radar_to_lidar: np.ndarray | None = None) -> np.ndarray:
        """Decode one file into the model input of `modality` (raises on any defect); radar points are moved into
        the LiDAR frame with `radar_to_lidar` (the sequence's extrinsic) before they are rasterised."""
        shape = self.shapes[modality]
        if modality == "lidar":
            return lidar_bev(read_pcd(path), self.grids["lidar"])
        if modality == "radar":
            v, r = self.radar_scales
            return radar_bev(
                read_pcd(path), self.grids["radar"], to_lidar=radar_to_lidar, velocity_scale=v, rcs_scale=r
            )
        if modality == "rgb":
            return images.rgb_input(path, shape)
        if modality == "ir":
            return images.ir_input(path, shape)
        raise AssertionError(modality)

    def map(self, record: Record) -> dict[str, Any]:
        sample: dict[str, Any] = {}
        valid: dict[str, np.bool_] = {}
        for m, shape in self.shapes.items():
            ok = record.valid[m]
            value = None
            if ok and m in FILE_MODALITIES:
                path = record.files[m]
                try:
                    value = self.read(m, path, record.radar_to_lidar)
                except (OSError, ValueError, EOFError) as e:
                    if self.on_error == "raise":
                        raise CMHTFormatError(f"{path}: cannot read the {m} record: {e}") from e
                    self.skipped[m] += 1
                    log.warning("skipping %s record %s: %s", m, path, e)
                    ok = False
            elif ok:
                value = np.asarray(record.vectors[m], np.float32)
            sample[m] = value.astype(np.float32, copy=False) if ok else np.zeros(shape, np.float32)
            valid[m] = np.bool_(ok)
        sample["valid"] = valid
        sample["timestamp"] = np.float64(record.timestamp)
        return sample


# --------------------------------------------------------------------------------------------- source


class CMHTDataSource:
    """Grain random-access source (`__len__`, `__getitem__`) of Contract-1 samples over CMHT sequences."""

    def __init__(
        self,
        sequences: Sequence[index.Sequence],
        data_cfg: DataConfig,
        modalities: Mapping[str, ModalityConfig | Sequence[int]],
        bev: BevConfig,
        report: Report | None = None,
    ):
        shapes = _shapes(modalities)
        names, files, tables, extrinsics = [], [], [], []
        for seq in sequences:
            try:
                table = sync_table(seq, data_cfg)
            except (OSError, ValueError) as e:
                if data_cfg.on_error == "raise":
                    raise
                if report is not None:
                    report.problems.append(f"{seq.path}: sequence left out: {e}")
                log.warning("leaving out sequence %s: %s", seq.path, e)
                continue
            names.append(seq.name)
            files.append(
                {m: [str(p) for p in seq.streams[m].files] for m in FILE_MODALITIES if m in seq.streams}
            )
            tables.append(table)
            extrinsics.append(seq.calib["radar"]["to_lidar"] if "radar" in seq.calib else None)
        if not tables:
            raise FileNotFoundError(f"no usable CMHT sequence among {len(sequences)} found")
        self.records = RecordTable(names, files, tables, list(shapes), extrinsics)
        self.decoder = DecodeSample(shapes, data_cfg, bev)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.decoder.map(self.records[int(index)])

    def valid_counts(self) -> dict[str, int]:
        return self.records.valid_counts()


def build_cmht_source(
    data_cfg: DataConfig, model_cfg: ModelConfig, report: Report | None = None
) -> CMHTDataSource:
    """Index every sequence under `data_cfg.root` and sync it; the samples carry `model_cfg.modalities`."""
    sequences = index.find_sequences(Path(data_cfg.root), on_error=data_cfg.on_error, report=report)
    if not sequences:
        raise FileNotFoundError(f"no CMHT sequence under data.root={data_cfg.root}")
    return CMHTDataSource(sequences, data_cfg, model_cfg.modalities, model_cfg.bev, report)


def build_pipeline(
    source: CMHTDataSource,
    *,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    prefetch: int = 2,
    shuffle: bool = True,
    shard_index: int | None = None,
    shard_count: int | None = None,
    drop_remainder: bool = True,
    num_epochs: int | None = None,
    num_threads: int | None = None,
) -> grain.DatasetIterator:
    """An iterator of batches (module docstring): this process's shard, shuffled per epoch, repeated.

    shard_index/shard_count default to `jax.process_index()` / `jax.process_count()`: each process reads only
    records shard_index::shard_count. num_epochs=None repeats forever. Decoding happens in `num_workers` spawned
    processes (0 = in this process); num_threads decode threads per process (default: 2 without workers, 1 per
    worker, so that workers do not oversubscribe the cores). The output does not depend on either count.
    The iterator has `get_state()` / `set_state()` and works with `grain.checkpoint.CheckpointSave/Restore`.
    """
    if shard_index is None or shard_count is None:
        import jax

        shard_index, shard_count = jax.process_index(), jax.process_count()
    if drop_remainder:
        loader.check_shard(len(source.records), batch_size, shard_index, shard_count)
    threads = num_threads if num_threads is not None else (1 if num_workers > 0 else 2)
    ds = loader.epochs(
        grain.MapDataset.source(source.records),
        seed=seed,
        shuffle=shuffle,
        shard_index=shard_index,
        shard_count=shard_count,
        num_epochs=num_epochs,
    )
    ds = ds.map(source.decoder).batch(batch_size, drop_remainder=drop_remainder)
    return iter(loader.to_iter(ds, num_workers, prefetch, threads))
