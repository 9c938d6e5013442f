"""Camera and infrared frames -> model inputs: decode, resize, normalise (ImageNet statistics for colour)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_NORM_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_NORM_SHIFT = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, C] or [H, W] (or float32 single channel) -> the same dtype at (h, w), bilinear."""
    h, w = int(size[0]), int(size[1])
    arr = np.asarray(image)
    if arr.shape[:2] == (h, w):
        return arr
    squeeze = arr.ndim == 3 and arr.shape[2] == 1
    src = arr[..., 0] if squeeze else arr
    out = np.asarray(Image.fromarray(src).resize((w, h), Image.Resampling.BILINEAR))
    return out[..., None] if squeeze else out


def normalize_image(rgb: Any, xp: Any = np) -> Any:
    """RGB [..., 3] (uint8, or float on the 0..255 scale) -> float32 (x / 255 - ImageNet mean) / ImageNet std, as
    one multiply-add; NumPy (`xp=np`) or jnp (jit-able).

    The per-channel constants are tiled along whole rows: NumPy's inner loop then runs over W * 3 values
    instead of 3, several times faster.
    """
    arr = xp.asarray(rgb)
    row = arr.reshape(-1, arr.shape[-2] * 3) if arr.ndim >= 2 else arr.reshape(1, 3)
    reps = row.shape[1] // 3
    out = row.astype(xp.float32) * xp.asarray(np.tile(_NORM_SCALE, reps))
    out = out + xp.asarray(np.tile(_NORM_SHIFT, reps))
    return out.reshape(arr.shape)


def normalize_minmax(image: np.ndarray) -> np.ndarray:
    """Any single-channel image -> float32 in [0, 1] by its own min and max (a constant image -> all 0)."""
    x = np.asarray(image, np.float32)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x)
    return (x - np.float32(lo)) * np.float32(1.0 / (hi - lo))


def decode_image(path: str | Path, size: tuple[int, int], mode: str) -> np.ndarray:
    """Read an image file at (h, w): mode "RGB" -> uint8 [h, w, 3]; mode "F" -> float32 [h, w] (any bit depth).

    JPEGs are decoded at a reduced DCT scale first (`Image.draft`), the largest saving of the whole pipeline for
    1280x720 frames resized to ~224: the decoder never produces the full-size image.
    """
    h, w = int(size[0]), int(size[1])
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB" if mode == "RGB" else "L", (w, h))
        if mode == "RGB":
            im = im.convert("RGB")
        elif im.mode not in ("F",):
            # 16-bit thermal frames (I;16) and 8-bit ones alike become float32 without losing range
            im = im.convert("I").convert("F") if im.mode.startswith("I") else im.convert("L").convert("F")
        if im.size != (w, h):
            im = im.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return np.asarray(im)


def rgb_input(path: str | Path, shape: tuple[int, ...]) -> np.ndarray:
    """A colour camera file -> float32 [H, W, 3] model input (resized, ImageNet-normalised)."""
    return normalize_image(decode_image(path, shape[:2], "RGB"))


def ir_input(path: str | Path, shape: tuple[int, ...]) -> np.ndarray:
    """An infrared file -> float32 [H, W, 1] model input (resized, min-max normalised per frame)."""
    return normalize_minmax(decode_image(path, shape[:2], "F"))[..., None]
