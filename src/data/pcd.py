"""PCD point-cloud files (the Point Cloud Library format), read and written with NumPy only.

Reads every data encoding (ascii, binary, binary_compressed) with any field list: SIZE/TYPE/COUNT per field,
padding fields named `_` (skipped). The binary body is one `np.frombuffer` with a structured dtype built from the
header; binary_compressed is LZF (the `lzf` module) over a body that stores each field column-contiguous.
A field with COUNT > 1 comes back as an array [N, COUNT], every other field as [N].
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import lzf
import numpy as np

from src.data.errors import CMHTFormatError

ENCODINGS = ("ascii", "binary", "binary_compressed")
_NUMPY_TYPES = {
    ("F", 4): "<f4",
    ("F", 8): "<f8",
    ("I", 1): "i1",
    ("I", 2): "<i2",
    ("I", 4): "<i4",
    ("I", 8): "<i8",
    ("U", 1): "u1",
    ("U", 2): "<u2",
    ("U", 4): "<u4",
    ("U", 8): "<u8",
}
_PCD_TYPES = {np.dtype(v).str.lstrip("<|"): k for k, v in _NUMPY_TYPES.items()}
_MAX_HEADER_LINES = 64


def _header(raw: bytes, path: str | Path) -> tuple[dict[str, list[str]], int]:
    """Header keys (upper case) -> value tokens, and the byte offset of the body (just after the DATA line)."""
    keys: dict[str, list[str]] = {}
    pos = 0
    for _ in range(_MAX_HEADER_LINES):
        end = raw.find(b"\n", pos)
        if end < 0:
            raise CMHTFormatError(f"{path}: PCD header ends before its DATA line")
        line = raw[pos:end].decode("ascii", errors="replace").strip()
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        keys[key.upper()] = values
        if key.upper() == "DATA":
            return keys, pos
    raise CMHTFormatError(
        f"{path}: no DATA line in the first {_MAX_HEADER_LINES} header lines (not a PCD file?)"
    )


def _layout(keys: dict[str, list[str]], path: str | Path) -> tuple[list[tuple[str, str, int]], int, str]:
    """[(field name, numpy type, count)], number of points, data encoding; raises on anything inconsistent."""
    for need in ("FIELDS", "SIZE", "TYPE", "DATA"):
        if need not in keys:
            raise CMHTFormatError(f"{path}: PCD header has no {need} line")
    names, sizes, types = keys["FIELDS"], keys["SIZE"], keys["TYPE"]
    counts = keys.get("COUNT", ["1"] * len(names))
    if not (len(names) == len(sizes) == len(types) == len(counts)) or not names:
        raise CMHTFormatError(
            f"{path}: PCD header FIELDS/SIZE/TYPE/COUNT disagree in length "
            f"({len(names)}/{len(sizes)}/{len(types)}/{len(counts)})"
        )
    layout = []
    for name, size, kind, count in zip(names, sizes, types, counts):
        key = (kind.upper(), int(size)) if size.isdigit() else (kind, size)
        if key not in _NUMPY_TYPES:
            raise CMHTFormatError(f"{path}: PCD field {name!r} has unsupported TYPE {kind} SIZE {size}")
        if not count.isdigit() or int(count) < 1:
            raise CMHTFormatError(f"{path}: PCD field {name!r} has COUNT {count}")
        layout.append((name, _NUMPY_TYPES[key], int(count)))
    try:
        width = int(keys.get("WIDTH", ["0"])[0])
        height = int(keys.get("HEIGHT", ["1"])[0])
        points = int(keys["POINTS"][0]) if "POINTS" in keys else width * height
    except (ValueError, IndexError) as e:
        raise CMHTFormatError(f"{path}: PCD header has a malformed WIDTH/HEIGHT/POINTS: {e}") from e
    if points < 0 or ("WIDTH" in keys and points != width * height):
        raise CMHTFormatError(f"{path}: PCD header POINTS {points} != WIDTH {width} x HEIGHT {height}")
    real = [n for n, _, _ in layout if n != "_"]
    if len(set(real)) != len(real):
        raise CMHTFormatError(f"{path}: PCD header repeats a field name: {names}")
    encoding = keys["DATA"][0].lower() if keys["DATA"] else ""
    if encoding not in ENCODINGS:
        raise CMHTFormatError(f"{path}: PCD DATA {encoding!r} is not one of {ENCODINGS}")
    return layout, points, encoding


def _structured(layout: list[tuple[str, str, int]]) -> np.dtype:
    """The packed per-point record of a binary body; padding fields get private names."""
    return np.dtype(
        [
            (name if name != "_" else f"_pad{i}", t, (c,) if c > 1 else ())
            for i, (name, t, c) in enumerate(layout)
        ]
    )


def read_pcd(path: str | Path) -> dict[str, np.ndarray]:
    """A PCD file -> {field: array [N] or [N, COUNT]} in the file's types; raises CMHTFormatError on any defect."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise CMHTFormatError(f"{path}: cannot read the PCD file: {e}") from e
    keys, offset = _header(raw, path)
    layout, points, encoding = _layout(keys, path)
    body = memoryview(raw)[offset:]
    if encoding == "ascii":
        return _read_ascii(bytes(body), layout, points, path)
    if encoding == "binary":
        dtype = _structured(layout)
        if len(body) < points * dtype.itemsize:
            raise CMHTFormatError(
                f"{path}: PCD binary body is truncated: {len(body)} bytes for {points} points of "
                f"{dtype.itemsize} bytes"
            )
        rec = np.frombuffer(body, dtype, count=points)
        return {name: np.ascontiguousarray(rec[name]) for name, _, _ in layout if name != "_"}
    return _read_compressed(body, layout, points, path)


def check_pcd(path: str | Path, header_bytes: int = 16384) -> None:
    """Cheap soundness check of a PCD file without reading its body: the header parses and the file is long enough
    for the body it announces (binary: points x point size; binary_compressed: its stored compressed size; ascii:
    the header only). Raises CMHTFormatError naming the file and the problem."""
    try:
        with open(path, "rb") as f:
            head = f.read(header_bytes)
            size = f.seek(0, 2)
            keys, offset = _header(head, path)
            layout, points, encoding = _layout(keys, path)
            body = size - offset
            if encoding == "binary" and body < points * _structured(layout).itemsize:
                raise CMHTFormatError(
                    f"{path}: PCD binary body is truncated: {body} bytes for {points} points of "
                    f"{_structured(layout).itemsize} bytes"
                )
            if encoding == "binary_compressed":
                f.seek(offset)
                words = f.read(8)
                if len(words) < 8:
                    raise CMHTFormatError(f"{path}: PCD binary_compressed body is truncated (no size words)")
                packed = int(np.frombuffer(words, "<u4", count=1)[0])
                if body - 8 < packed:
                    raise CMHTFormatError(
                        f"{path}: PCD binary_compressed body is truncated ({body - 8} < {packed} bytes)"
                    )
    except OSError as e:
        raise CMHTFormatError(f"{path}: cannot read the PCD file: {e}") from e


def _read_ascii(body: bytes, layout: list[tuple[str, str, int]], points: int, path: str | Path) -> dict:
    width = sum(c for _, _, c in layout)
    try:
        tokens = body.decode("ascii").split()
        values = np.array(tokens, dtype=np.float64)
    except (ValueError, UnicodeDecodeError) as e:
        raise CMHTFormatError(f"{path}: PCD ascii body has a non-numeric value: {e}") from e
    if values.size != points * width:
        raise CMHTFormatError(
            f"{path}: PCD ascii body has {values.size} values, expected {points} points x {width}"
        )
    table = values.reshape(points, width)
    out, col = {}, 0
    for name, t, c in layout:
        if name != "_":
            # 64-bit integers beyond float64's 2**53 are parsed from the text itself
            if np.dtype(t).kind in "iu" and np.dtype(t).itemsize == 8:
                try:
                    block = np.array(tokens, dtype=object).reshape(points, width)[:, col : col + c].astype(t)
                except (ValueError, OverflowError) as e:
                    raise CMHTFormatError(
                        f"{path}: PCD ascii field {name!r} is not a 64-bit integer: {e}"
                    ) from e
            else:
                block = table[:, col : col + c].astype(t)
            out[name] = block[:, 0].copy() if c == 1 else block
        col += c
    return out


def _read_compressed(
    body: memoryview, layout: list[tuple[str, str, int]], points: int, path: str | Path
) -> dict:
    if len(body) < 8:
        raise CMHTFormatError(f"{path}: PCD binary_compressed body is truncated (no size words)")
    packed, unpacked = (int(v) for v in np.frombuffer(body, "<u4", count=2))
    dtype = _structured(layout)
    if unpacked != points * dtype.itemsize:
        raise CMHTFormatError(
            f"{path}: PCD binary_compressed size {unpacked} != {points} points x {dtype.itemsize} bytes"
        )
    if len(body) - 8 < packed:
        raise CMHTFormatError(
            f"{path}: PCD binary_compressed body is truncated ({len(body) - 8} < {packed} bytes)"
        )
    if unpacked == 0:
        data = b""
    else:
        try:
            data = lzf.decompress(bytes(body[8 : 8 + packed]), unpacked)
        except ValueError as e:
            raise CMHTFormatError(f"{path}: PCD binary_compressed body does not decompress: {e}") from e
        if data is None or len(data) != unpacked:
            raise CMHTFormatError(
                f"{path}: PCD binary_compressed body does not decompress to {unpacked} bytes"
            )
    out, offset = {}, 0
    for name, t, c in layout:  # each field is one column-contiguous block of `points` values
        shape = (c,) if c > 1 else ()
        if name != "_":
            out[name] = np.frombuffer(data, np.dtype((t, shape)), count=points, offset=offset).copy()
        offset += points * np.dtype(t).itemsize * c
    return out


def write_pcd(path: str | Path, fields: Mapping[str, np.ndarray], encoding: str = "binary") -> Path:
    """Write {field: array [N] or [N, COUNT]} as a PCD v0.7 file (types from the array dtypes).

    A name starting with `_` is written as a padding field `_` (its bytes are stored, readers drop it).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"write_pcd: encoding {encoding!r} is not one of {ENCODINGS}")
    if not fields:
        raise ValueError("write_pcd: no fields")
    arrays = {k: np.asarray(v) for k, v in fields.items()}
    n = len(next(iter(arrays.values())))
    layout = []
    for name, a in arrays.items():
        if a.ndim not in (1, 2) or len(a) != n:
            raise ValueError(f"write_pcd: field {name!r} has shape {a.shape}, expected [{n}] or [{n}, COUNT]")
        kind = _PCD_TYPES.get(a.dtype.str.lstrip("<|"))
        if kind is None:
            raise ValueError(f"write_pcd: field {name!r} has dtype {a.dtype}, which PCD cannot store")
        layout.append(
            ("_" if name.startswith("_") else name, _NUMPY_TYPES[kind], 1 if a.ndim == 1 else a.shape[1])
        )
    header = "\n".join(
        [
            "# .PCD v0.7 - Point Cloud Data file format",
            "VERSION 0.7",
            "FIELDS " + " ".join(name for name, _, _ in layout),
            "SIZE " + " ".join(str(np.dtype(t).itemsize) for _, t, _ in layout),
            "TYPE " + " ".join(_PCD_TYPES[np.dtype(t).str.lstrip("<|")][0] for _, t, _ in layout),
            "COUNT " + " ".join(str(c) for _, _, c in layout),
            f"WIDTH {n}",
            "HEIGHT 1",
            "VIEWPOINT 0 0 0 1 0 0 0",
            f"POINTS {n}",
            f"DATA {encoding}",
            "",
        ]
    ).encode("ascii")
    columns = [np.ascontiguousarray(a, dtype=t) for a, (_, t, _) in zip(arrays.values(), layout)]
    if encoding == "ascii":
        body = _ascii_body(columns)
    elif encoding == "binary":
        rec = np.empty(n, _structured(layout))
        for i, col in enumerate(columns):
            rec[rec.dtype.names[i]] = col
        body = rec.tobytes()
    else:
        plain = b"".join(col.tobytes() for col in columns)
        packed = lzf.compress(plain, len(plain) + len(plain) // 16 + 64) if plain else b""
        body = np.array([len(packed), len(plain)], "<u4").tobytes() + packed
    path = Path(path)
    path.write_bytes(header + body)
    return path


def _ascii_body(columns: list[np.ndarray]) -> bytes:
    # explicit column counts: reshape(n, -1) is ambiguous for an empty cloud (a radar sweep with no returns);
    # 64-bit integers go through Python ints, float64 would round them beyond 2**53
    wide = any(c.dtype.kind in "iu" and c.dtype.itemsize == 8 for c in columns)
    table = np.concatenate(
        [
            c.reshape(len(c), c.shape[1] if c.ndim == 2 else 1).astype(object if wide else np.float64)
            for c in columns
        ],
        axis=1,
    )
    fmt = []
    for c in columns:
        f = ("%.9g" if c.dtype.itemsize == 4 else "%.17g") if c.dtype.kind == "f" else "%d"
        fmt += [f] * (1 if c.ndim == 1 else c.shape[1])
    buf = io.StringIO()
    np.savetxt(buf, table, fmt=fmt, delimiter=" ")
    return buf.getvalue().encode("ascii")
