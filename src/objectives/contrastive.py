"""Contrastive and latent objectives on multi-camera episodes.

`info_nce` (symmetric by default, one-directional on request), `multi_positive_info_nce` (SupCon) and
`latent_reconstruction_loss` work on embeddings with validity masks: an invalid view drops out of the logits'
rows and columns, so its content cannot change the loss. `contrastive_loss` runs the model once over every camera
view of a (temporal-pair) episode batch and sums the weighted multiview / temporal / multipositive / latent_recon
terms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx

if TYPE_CHECKING:
    from src.models.raceformer import Raceformer


_NEG = -1e9  # logit of an excluded entry: finite so that masked rows stay NaN-free under autodiff


def l2_normalize(z: jax.Array, eps: float = 1e-12) -> jax.Array:
    return z / jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True) + eps)


def info_nce(
    z_a: jax.Array,
    z_b: jax.Array,
    temperature: float = 0.1,
    valid: jax.Array | None = None,
    symmetric: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """InfoNCE between paired embeddings z_a[i] <-> z_b[i] [B, P] (L2-normalised here), the others as negatives.

    loss_i = logsumexp_j(s_ij / T) - s_ii / T with s = cosine similarity. `valid` [B] marks usable pairs: an
    invalid pair is removed from both the rows and the columns of the logits, so neither its anchor nor its
    embedding as a negative changes the loss. symmetric=True averages the a->b (rows) and b->a (columns) losses
    (CLIP-style); False is the one-directional a->b loss. Aux: top-1 retrieval accuracy a->b and the pair count.
    """
    z_a, z_b = l2_normalize(z_a.astype(jnp.float32)), l2_normalize(z_b.astype(jnp.float32))
    n = z_a.shape[0]
    valid = jnp.ones((n,), jnp.bool_) if valid is None else valid.astype(jnp.bool_)
    logits = z_a @ z_b.T / temperature
    masked = jnp.where(valid[:, None] & valid[None, :], logits, _NEG)
    positive = jnp.diagonal(logits)
    weight = valid.astype(jnp.float32)
    count = jnp.maximum(weight.sum(), 1.0)
    loss = jnp.sum(weight * (jax.nn.logsumexp(masked, axis=1) - positive)) / count
    if symmetric:
        loss_ba = jnp.sum(weight * (jax.nn.logsumexp(masked, axis=0) - positive)) / count
        loss = 0.5 * (loss + loss_ba)
    accuracy = jnp.sum(weight * (jnp.argmax(masked, axis=1) == jnp.arange(n))) / count
    return loss, {"accuracy": accuracy, "pairs": weight.sum()}


def multi_positive_info_nce(
    z: jax.Array, labels: jax.Array, valid: jax.Array, temperature: float = 0.1
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Supervised-contrastive (SupCon) loss: every other valid embedding with the same label is a positive.

    z [N, P] (L2-normalised here), labels int [N], valid bool [N]. For anchor i with positives P(i):
    loss_i = -1/|P(i)| sum_{p in P(i)} log(exp(s_ip / T) / sum_{a != i, valid} exp(s_ia / T)); the loss is the
    mean over valid anchors with at least one positive. Aux: the fraction of anchors whose nearest other
    embedding is a positive.
    """
    z = l2_normalize(z.astype(jnp.float32))
    n = z.shape[0]
    valid = valid.astype(jnp.bool_)
    logits = z @ z.T / temperature
    others = valid[:, None] & valid[None, :] & ~jnp.eye(n, dtype=jnp.bool_)
    masked = jnp.where(others, logits, _NEG)
    log_prob = masked - jax.nn.logsumexp(masked, axis=1, keepdims=True)
    positive = others & (labels[:, None] == labels[None, :])
    n_pos = positive.sum(axis=1)
    anchor = (n_pos > 0).astype(jnp.float32)
    per_anchor = -jnp.sum(jnp.where(positive, log_prob, 0.0), axis=1) / jnp.maximum(n_pos, 1)
    count = jnp.maximum(anchor.sum(), 1.0)
    nearest = jnp.argmax(masked, axis=1)
    hit = jnp.take_along_axis(positive, nearest[:, None], axis=1)[:, 0]
    return jnp.sum(anchor * per_anchor) / count, {
        "accuracy": jnp.sum(anchor * hit) / count,
        "anchors": anchor.sum(),
    }


def pearson(x: jax.Array, y: jax.Array, weight: jax.Array) -> jax.Array:
    """Pearson correlation of x and y [B, D] over all entries of the rows with weight 1 (weight [B])."""
    w = jnp.broadcast_to(weight[:, None], x.shape).astype(jnp.float32)
    total = jnp.maximum(w.sum(), 1.0)
    xc = x - jnp.sum(w * x) / total
    yc = y - jnp.sum(w * y) / total
    cov = jnp.sum(w * xc * yc)
    return cov / jnp.sqrt(jnp.sum(w * xc * xc) * jnp.sum(w * yc * yc) + 1e-12)


class LatentDecoder(nnx.Module):
    """Predicts the latent of one camera view from the mean latent of the other views (+ which view is wanted).

    Small on purpose: the encoder has to put the cross-view information into its latents, not the decoder.
    """

    def __init__(self, dim: int, num_views: int, hidden: int = 128, *, rngs: nnx.Rngs):
        self.view_embed = nnx.Embed(num_views, dim, rngs=rngs)
        self.hidden = nnx.Linear(2 * dim, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, dim, rngs=rngs)

    def __call__(self, context: jax.Array, view: jax.Array) -> jax.Array:
        h = jnp.concatenate([context, self.view_embed(view)], axis=-1)
        return self.out(jax.nn.gelu(self.hidden(h)))


def _standardize(x: jax.Array) -> jax.Array:
    return (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-6)


def latent_reconstruction_loss(
    decoder: LatentDecoder, latents: jax.Array, valid: jax.Array, key: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Drop one valid view per sample and reconstruct its latent from the mean of the other valid views.

    latents [V, B, D], valid bool [V, B]. The target is the dropped view's latent, standardised per sample and
    behind a stop-gradient (a scale-free target, so shrinking the latents does not lower the loss). Samples with
    fewer than two valid views drop out. Aux: Pearson correlation between reconstruction and target.
    """
    num_views, batch = valid.shape
    scores = jnp.where(valid, jax.random.uniform(key, valid.shape), -1.0)
    drop = jnp.argmax(scores, axis=0)  # [B] a uniformly drawn valid view
    one_hot = jax.nn.one_hot(drop, num_views, dtype=jnp.bool_).T  # [V, B]
    context_mask = (valid & ~one_hot).astype(latents.dtype)
    n_context = context_mask.sum(0)
    usable = (n_context > 0) & valid[drop, jnp.arange(batch)]
    context = jnp.sum(context_mask[..., None] * latents, axis=0) / jnp.maximum(n_context, 1.0)[:, None]
    target = jax.lax.stop_gradient(_standardize(latents[drop, jnp.arange(batch)]))
    prediction = decoder(context, drop)
    weight = usable.astype(jnp.float32)
    count = jnp.maximum(weight.sum(), 1.0)
    loss = jnp.sum(weight * jnp.mean((prediction - target) ** 2, axis=-1)) / count
    return loss, {"pearson": pearson(prediction, target, weight), "samples": weight.sum()}


# --------------------------------------------------------------------------------------------- episode views

CONTRASTIVE_OBJECTIVES = ("multiview", "temporal", "multipositive", "latent_recon")


def stack_views(
    frames: Sequence[Mapping[str, Any]], cameras: Sequence[str]
) -> tuple[dict[str, jax.Array], dict[str, jax.Array], jax.Array]:
    """Every (frame batch, camera) view stacked along the batch axis as ONE image-only Contract-1 batch.

    frames: episode frame batches (`images_by_cam`, `image_valid_by_cam`, Contract-1 keys). Returns (batch,
    valid, image validity [S, V, B]) with batch rows ordered (frame batch, camera, sample). Each view carries
    only its camera image as `rgb`: the ego modalities of two views of one instant are identical, so letting
    the model see them would make every positive pair retrievable without looking at the images; the other
    modalities stay in the batch with valid False. A dropped image is passed as present (zeros) so that no view
    is empty; it is removed from every loss by the returned image validity instead.
    """
    batch = {"rgb": jnp.concatenate([f["images_by_cam"][c] for f in frames for c in cameras])}
    image_valid = jnp.stack([jnp.stack([f["image_valid_by_cam"][c] for c in cameras]) for f in frames])
    n = batch["rgb"].shape[0]
    valid = {"rgb": jnp.ones((n,), jnp.bool_)}
    for name in frames[0]["valid"]:
        if name != "rgb":
            batch[name] = jnp.concatenate([f[name] for f in frames for _ in cameras])
            valid[name] = jnp.zeros((n,), jnp.bool_)
    return batch, valid, image_valid.astype(jnp.bool_)


def view_embeddings(
    model: Raceformer,
    frames: Sequence[Mapping[str, Any]],
    cameras: Sequence[str],
    *,
    deterministic: bool = True,
    rngs: nnx.Rngs | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One model call over all views: (latents [S, V, B, D] = fused CLS, projections [S, V, B, P], valid [S, V, B])."""
    batch, valid, image_valid = stack_views(frames, cameras)
    latents = model.features(batch, valid, deterministic=deterministic, rngs=rngs)
    z = model.projection_head(latents)
    shape = image_valid.shape
    return latents.reshape(*shape, -1), z.reshape(*shape, -1), image_valid


def contrastive_loss(
    model: Raceformer,
    batch: Mapping[str, Any],
    key: jax.Array,
    weights: Mapping[str, float],
    cameras: Sequence[str],
    temperature: float = 0.1,
    decoder: LatentDecoder | None = None,
    *,
    deterministic: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sum of the episode objectives named in `weights` (weight 0 = not computed), one model call.

    batch: an episode frame batch, or a temporal-pair batch (the frame at t plus "t1", the frame at t + dt, as
    `TemporalPairSource` yields; needed by temporal / multipositive). `cameras` name the views to use.
    - multiview: symmetric InfoNCE between every camera pair of an instant, only pairs with both images valid;
    - temporal: symmetric InfoNCE between the same camera at t and t + dt;
    - multipositive: SupCon over all views of t and t + dt, the label being the instant (pair) index;
    - latent_recon: `latent_reconstruction_loss` of a dropped camera's fused latent from the other cameras'.
    `key` draws the dropped views and (when not deterministic) the dropout. Aux: "loss/<name>" of every computed
    objective, "<name>/accuracy" (top-1 retrieval of a positive) and "latent_recon/pearson".
    """
    unknown = sorted(set(weights) - set(CONTRASTIVE_OBJECTIVES))
    if unknown:
        raise ValueError(f"contrastive objectives {unknown} unknown; valid: {list(CONTRASTIVE_OBJECTIVES)}")
    active = {k: float(w) for k, w in weights.items() if w > 0}
    paired = "t1" in batch
    if not paired and ({"temporal", "multipositive"} & set(active)):
        raise ValueError(
            "temporal / multipositive objectives need temporal-pair batches (a 't1' frame batch)"
        )
    if "latent_recon" in active and decoder is None:
        raise ValueError("latent_recon needs a LatentDecoder")
    frames = [batch, batch["t1"]] if paired else [batch]
    drop_key, recon_key = jax.random.split(key)
    rngs = None if deterministic else nnx.Rngs(dropout=drop_key)
    latents, z, valid = view_embeddings(model, frames, cameras, deterministic=deterministic, rngs=rngs)
    num_frames, num_views, b = valid.shape
    total = jnp.zeros((), jnp.float32)
    aux: dict[str, jax.Array] = {}

    def add(name: str, loss: jax.Array, metrics: dict[str, jax.Array], metric: str) -> None:
        nonlocal total
        total = total + active[name] * loss
        aux[f"loss/{name}"] = loss
        aux[f"{name}/{metric}"] = metrics[metric]

    if "multiview" in active:
        pairs = [
            (s, i, j) for s in range(num_frames) for i in range(num_views) for j in range(i + 1, num_views)
        ]
        if not pairs:
            raise ValueError(f"multiview needs at least two cameras, got {list(cameras)}")
        out = [info_nce(z[s, i], z[s, j], temperature, valid[s, i] & valid[s, j]) for s, i, j in pairs]
        add("multiview", *_mean_outputs(out), "accuracy")
    if "temporal" in active:
        out = [info_nce(z[0, c], z[1, c], temperature, valid[0, c] & valid[1, c]) for c in range(num_views)]
        add("temporal", *_mean_outputs(out), "accuracy")
    if "multipositive" in active:
        labels = jnp.tile(jnp.arange(b), num_frames * num_views)
        loss, metrics = multi_positive_info_nce(
            z.reshape(-1, z.shape[-1]), labels, valid.reshape(-1), temperature
        )
        add("multipositive", loss, metrics, "accuracy")
    if "latent_recon" in active:
        keys = jax.random.split(recon_key, num_frames)
        out = [latent_reconstruction_loss(decoder, latents[s], valid[s], keys[s]) for s in range(num_frames)]
        add("latent_recon", *_mean_outputs(out), "pearson")
    return total, aux


def _mean_outputs(
    out: Sequence[tuple[jax.Array, dict[str, jax.Array]]],
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Average (loss, aux) over several applications of one objective."""
    losses = jnp.stack([o[0] for o in out])
    return losses.mean(), {k: jnp.stack([o[1][k] for o in out]).mean() for k in out[0][1]}
