"""Per-frame table of a dataset: numeric parquet columns to numpy, with shape checks that name file and field."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from rfm.data.errors import DatasetError


def column_to_numpy(col: pa.ChunkedArray | pa.Array, ft: dict, key: str, path: Path) -> np.ndarray:
    """A parquet column as (N,) for scalar features or (N, D) for vector features, checked against `ft`."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    shape = [int(v) for v in ft.get("shape", [1])]
    dtype = np.dtype("float32") if ft["dtype"] in ("float32", "float64") and key != "timestamp" else None
    if pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type):
        if arr.null_count:
            raise DatasetError(path, key, f"{arr.null_count} rows are null")
        if pa.types.is_fixed_size_list(arr.type):
            width = arr.type.list_size
        else:
            lengths = np.diff(np.asarray(arr.offsets))
            if len(lengths) and (lengths != lengths[0]).any():
                raise DatasetError(path, key, f"rows have different lengths ({lengths.min()}..{lengths.max()})")
            width = int(lengths[0]) if len(lengths) else 0
        expected = int(np.prod(shape))
        if width != expected:
            raise DatasetError(path, key, f"has {width} values per frame, meta/info.json shape says {shape}")
        values = np.asarray(arr.flatten().to_numpy(zero_copy_only=False))
        out = values.reshape(n, *shape)
        if shape == [1]:
            out = out[:, 0]
    else:
        if shape not in ([1], []):
            raise DatasetError(path, key, f"is a scalar column, meta/info.json shape says {shape}")
        if arr.null_count:
            raise DatasetError(path, key, f"{arr.null_count} rows are null")
        out = np.asarray(arr.to_numpy(zero_copy_only=False))
    return out.astype(dtype) if dtype is not None else out


WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # 16/32-bit or float pixels (depth, thermal)


def decode_image(cell: dict | None, root: Path, path: Path, key: str) -> np.ndarray:
    """A {bytes, path} image cell (PNG/JPEG bytes, or a file path relative to root) -> (H, W, 3) uint8.

    8-bit grey or colour only: converting a 16-bit depth image to RGB clips every value above 255, so a camera of
    millimetres read as a constant white frame, silently, through training and serving."""
    if cell is None:
        raise DatasetError(path, key, "image cell is null")
    data = cell.get("bytes")
    try:
        if data is None:
            if not cell.get("path"):
                raise DatasetError(path, key, "image cell has neither bytes nor path")
            with Image.open(root / cell["path"]) as im:
                return _rgb(im, path, key)
        with Image.open(io.BytesIO(data)) as im:
            return _rgb(im, path, key)
    except DatasetError:
        raise
    except (OSError, ValueError) as e:
        raise DatasetError(path, key, f"cannot decode image ({e})") from None


def _rgb(im: Image.Image, path: Path, key: str) -> np.ndarray:
    if im.mode in WIDE_MODES:
        raise DatasetError(path, key, f"holds {im.mode} images (16-bit, 32-bit or float pixels, e.g. depth): rfm's "
                                      f"cameras are 8-bit grey or colour; leave this camera out (rfm train "
                                      f"--cameras, the others) or store it as 8-bit")
    return np.asarray(im.convert("RGB"))


def encode_png(img: np.ndarray, compress_level: int = 1) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
