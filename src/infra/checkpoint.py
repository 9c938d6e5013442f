"""Run checkpoints (Orbax) and the encoder export that a PPO run imports.

`Checkpointer` keeps `<run_dir>/ckpt/<step>/` with three items: `state` (any pytree of arrays: model/optimizer
state, RNG keys, counters), `meta` (JSON) and, when a Grain iterator is given, `data` (its per-process state),
so that a restored run continues exactly. Typed PRNG keys are stored as their raw key data and re-wrapped on
restore, since Orbax stores plain arrays only.

`export_encoder` writes the encoder + fusion parameters as a plain `.npz` (no pickle, loadable on any device
topology) next to the model config (which holds the BEV grid, `[model.bev]`) and the sensor contract's record
(`contract.toml`); `import_encoder` loads them into another Raceformer and lists every parameter whose path or
shape does not match, and every setting the shapes cannot show (attention heads, a modality's patch size and
channels) that differs from the export's model config; `check_encoder_fits` lists every setting of an export
that differs from a run's [model] or from this code's contract. `encoder_sha256` identifies an export;
`check_encoder_record` keeps a run from resuming on top of another encoder than the one it recorded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from src import config, contract
from src.config import ModelConfig

ENCODER_PARTS: tuple[str, ...] = ("encoders", "fusion")
"""Top-level Raceformer attributes that pretraining exports and fine-tuning imports (and may freeze)."""

_WEIGHTS = "weights.npz"
_MODEL_TOML = "model.toml"


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array | jax.ShapeDtypeStruct) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _template_to_data(tree: Any) -> Any:
    """The template as Orbax sees it: typed keys become their uint32 key data (same sharding)."""

    def conv(x: Any) -> Any:
        if _is_key(x):
            data = jax.eval_shape(jax.random.key_data, x)
            sharding = getattr(x, "sharding", None)
            return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding) if sharding else data
        return x

    return jax.tree.map(conv, tree)


def _data_to_keys(restored: Any, template: Any) -> Any:
    return jax.tree.map(
        lambda r, t: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t)) if _is_key(t) else r,
        restored,
        template,
    )


class Checkpointer:
    """A thin `ocp.CheckpointManager` over `directory`: save every `save_every` steps, keep the last `keep`.

    Every JAX process must call `save`/`restore` (Orbax coordinates the writes); each process saves and restores
    its own Grain iterator state.
    """

    def __init__(self, directory: str | Path, *, save_every: int, keep: int, async_save: bool = False):
        if save_every < 1 or keep < 1:
            raise ValueError(f"Checkpointer: save_every ({save_every}) and keep ({keep}) must be >= 1")
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            # Only the interval (Orbax would also save the first step, and act on preemption by itself).
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(save_every),
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(
        self,
        step: int,
        state: Any,
        *,
        data_iter: Any = None,
        meta: dict[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Save `state` (+ iterator state + JSON `meta`) at `step` if it is a save step or `force`; True if saved."""
        if not force and not self._manager.should_save(step):
            return False
        items: dict[str, Any] = {
            "state": ocp.args.StandardSave(_keys_to_data(state)),
            "meta": ocp.args.JsonSave(dict(meta or {})),
        }
        if data_iter is not None:
            import grain

            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        return bool(self._manager.save(step, args=ocp.args.Composite(**items), force=force))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def meta(self, step: int) -> dict[str, Any]:
        """The JSON `meta` saved with `step`, read alone (e.g. to check it before restoring the state)."""
        if step not in self._manager.all_steps():
            raise FileNotFoundError(f"{self.directory}: no checkpoint for step {step}; have {self.all_steps()}")
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"] or {})

    def restore(self, step: int, template_state: Any, *, data_iter: Any = None) -> tuple[Any, dict[str, Any]]:
        """Restore `step` into the structure, dtypes and shardings of `template_state`; returns (state, meta).

        `data_iter` (a Grain iterator) has its position restored in place; it is an error if the checkpoint
        holds no iterator state.
        """
        if step not in self._manager.all_steps():
            raise FileNotFoundError(f"{self.directory}: no checkpoint for step {step}; have {self.all_steps()}")
        abstract = jax.tree.map(
            lambda x: x if isinstance(x, jax.ShapeDtypeStruct) or _is_key(x) else ocp.utils.to_shape_dtype_struct(x),
            template_state,
        )
        items: dict[str, Any] = {
            "state": ocp.args.StandardRestore(_template_to_data(abstract)),
            "meta": ocp.args.JsonRestore(),
        }
        if data_iter is not None:
            if not (self.directory / str(step) / "data").is_dir():
                raise ValueError(f"{self.directory / str(step)}: checkpoint holds no data-iterator state")
            import grain

            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return _data_to_keys(restored["state"], template_state), dict(restored["meta"] or {})

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


# --------------------------------------------------------------------------------------------- encoder export


def _flat_params(model: nnx.Module) -> dict[str, jax.Array]:
    """'encoders/lidar/.../kernel' -> array for every nnx.Param of the encoder + fusion parts."""
    missing = [p for p in ENCODER_PARTS if not hasattr(model, p)]
    if missing:
        raise ValueError(f"{type(model).__name__} has no {missing}; expected a Raceformer")
    flat = {}
    for part in ENCODER_PARTS:
        for path, var in nnx.to_flat_state(nnx.state(getattr(model, part), nnx.Param)):
            flat["/".join([part, *map(str, path)])] = var.get_value()
    return flat


def export_encoder(model: nnx.Module, path: str | Path, model_cfg: ModelConfig | None = None) -> Path:
    """Write `path/weights.npz` (encoder + fusion params, float32), `path/model.toml` (the model config, taken
    from `model_cfg` or the model's `cfg` attribute) and `path/contract.toml` (the sensor contract's layouts)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(jax.device_get(v), np.float32) for k, v in _flat_params(model).items()}
    np.savez(path / _WEIGHTS, **arrays)
    model_cfg = model_cfg if model_cfg is not None else getattr(model, "cfg", None)
    if isinstance(model_cfg, ModelConfig):
        config.save(model_cfg, path / _MODEL_TOML)
    contract.write_contract(path)
    return path


def load_encoder_config(path: str | Path) -> ModelConfig:
    """The model config an export was written with."""
    return config.load(ModelConfig, Path(path) / _MODEL_TOML)


HEAD_FIELDS = ("decoder_dim", "decoder_depth", "decoder_heads", "projection_dim", "action_dim", "init_log_std")
"""[model] keys of the heads, which an export does not hold: a fine-tuning run may set them as it likes."""


def check_encoder_fits(path: str | Path, model_cfg: ModelConfig) -> None:
    """Raise `contract.ContractError` naming every [model] setting (BEV grid and modality shapes included) in
    which the export at `path` differs from `model_cfg`, and every sensor-contract layout or scale in which it
    differs from this code's; a missing model.toml or contract.toml is an error too."""
    path = Path(path)
    if not (path / _MODEL_TOML).is_file():
        raise contract.ContractError(f"{path / _MODEL_TOML}: missing; the export does not say what model it fits")
    stored = {k: v for k, v in config.to_dict(load_encoder_config(path)).items() if k not in HEAD_FIELDS}
    run = {k: v for k, v in config.to_dict(model_cfg).items() if k not in HEAD_FIELDS}
    problems = contract.mismatches(stored, run, "model")
    problems += contract.mismatches(contract.read_contract(path), contract.contract_record(), "contract")
    if problems:
        raise contract.ContractError(
            f"{path}: the exported encoder does not fit this run ({len(problems)} mismatch(es)); give the run the "
            "encoder's [model] (src.training.transfer does) or re-export it:\n  " + "\n  ".join(problems)
        )


def encoder_sha256(path: str | Path) -> str:
    """sha256 of an export: its arrays (name, dtype, shape, bytes; not the zip container, whose entries carry
    timestamps), then its model.toml and contract.toml."""
    path = Path(path)
    digest = hashlib.sha256()
    with np.load(path / _WEIGHTS, allow_pickle=False) as z:
        for name in sorted(z.files):
            arr = np.ascontiguousarray(z[name])
            digest.update(f"{name}:{arr.dtype.str}:{arr.shape}".encode())
            digest.update(arr.tobytes())
    for name in (_MODEL_TOML, contract.CONTRACT_TOML):
        if (path / name).is_file():
            digest.update(name.encode())
            digest.update((path / name).read_bytes())
    return digest.hexdigest()


ENCODER_RECORD = "encoder.json"


def check_encoder_record(run_dir: str | Path, pretrained: str | Path | None, resuming: bool) -> dict[str, Any]:
    """Record in `run_dir/encoder.json` which encoder a fine-tuning run imported (path + `encoder_sha256`, or
    none for a run from scratch), and refuse to resume a run whose checkpoints were trained on another one: the
    restored checkpoint would silently overwrite the freshly imported encoder. Returns the record.

    Call it at setup, before anything of the run directory is rewritten; `resuming`: a checkpoint is about to be
    restored."""
    run_dir = Path(run_dir)
    record = {
        "pretrained_ckpt": str(pretrained) if pretrained else "",
        "sha256": encoder_sha256(pretrained) if pretrained else "",
    }
    file = run_dir / ENCODER_RECORD
    if resuming:
        before = json.loads(file.read_text()) if file.is_file() else {"pretrained_ckpt": "?", "sha256": "?"}
        if before.get("sha256") != record["sha256"]:
            def name(r: dict[str, Any]) -> str:
                return f"{r['pretrained_ckpt']} (sha256 {r['sha256'][:12]})" if r["sha256"] else "no encoder"

            raise contract.ContractError(
                f"{run_dir}: its checkpoints were trained from {name(before)}"
                f"{'' if file.is_file() else ' (unrecorded)'}, but this run imports {name(record)}; resuming "
                "would overwrite the imported encoder with the checkpoint's. Start over with "
                "--set run.resume=false (the old run is moved aside to <run.name>.<UTC time>)"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(record, indent=1))
    return record


def config_mismatches(exported: ModelConfig, current: ModelConfig) -> list[str]:
    """Encoder settings that change what the weights compute without changing any parameter's shape: the
    attention heads, and per shared modality its channel count and patch size (with sin-cos positions, a
    16x16x1 patch and an 8x8x4 patch have the same projection shape)."""
    problems = []
    if exported.num_heads != current.num_heads:
        problems.append(f"model.num_heads: model {current.num_heads}, checkpoint {exported.num_heads}")
    for m in sorted(set(exported.modalities) & set(current.modalities)):
        a, b = exported.modalities[m], current.modalities[m]
        pa, pb = a.patch_size or exported.patch_size, b.patch_size or current.patch_size
        if len(a.shape) > 1 and (a.shape[-1], pa) != (b.shape[-1], pb):
            problems.append(
                f"model.modalities.{m}: model {b.shape[-1]} channels in patches of {pb}, "
                f"checkpoint {a.shape[-1]} channels in patches of {pa}"
            )
    return problems


def import_encoder(
    model: nnx.Module, path: str | Path, *, strict: bool = True, model_cfg: ModelConfig | None = None
) -> list[str]:
    """Load an `export_encoder` directory into `model`'s encoders + fusion.

    strict: any parameter missing on either side or with another shape raises a ValueError that lists every such
    path with both shapes. Not strict: the matching parameters are loaded; returns the skipped paths.
    model_cfg (the config `model` was built from): also compared with the export's `model.toml`
    (`config_mismatches`); a difference is an error whatever `strict` says.
    """
    if model_cfg is not None and (Path(path) / _MODEL_TOML).is_file():
        wrong = config_mismatches(load_encoder_config(path), model_cfg)
        if wrong:
            raise ValueError(f"{Path(path) / _MODEL_TOML}: the encoder was trained with other settings:\n  "
                             + "\n  ".join(wrong))
    file = Path(path) / _WEIGHTS
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no exported encoder weights")
    with np.load(file, allow_pickle=False) as z:
        stored = {k: z[k] for k in z.files}
    current = _flat_params(model)
    problems = []
    for k in sorted(set(current) | set(stored)):
        if k not in stored:
            problems.append(f"{k}: model {tuple(current[k].shape)}, checkpoint missing")
        elif k not in current:
            problems.append(f"{k}: model missing, checkpoint {tuple(stored[k].shape)}")
        elif tuple(current[k].shape) != tuple(stored[k].shape):
            problems.append(f"{k}: model {tuple(current[k].shape)}, checkpoint {tuple(stored[k].shape)}")
    if problems and strict:
        raise ValueError(f"{file}: {len(problems)} mismatched parameter(s):\n  " + "\n  ".join(problems))
    for part in ENCODER_PARTS:
        module = getattr(model, part)
        state = nnx.state(module, nnx.Param)
        flat = []
        for p, var in nnx.to_flat_state(state):
            key = "/".join([part, *map(str, p)])
            if key in stored and tuple(stored[key].shape) == tuple(var.get_value().shape):
                old = var.get_value()
                new = jnp.asarray(stored[key], old.dtype)
                if hasattr(old, "sharding"):
                    new = jax.device_put(new, old.sharding)
                var = var.replace(new)
            flat.append((p, var))
        nnx.update(module, nnx.from_flat_state(flat))
    return [p.split(":")[0] for p in problems]
