"""LeRobotDataset v3.0 on-disk layout: paths, info.json, tasks.parquet, episodes parquet, atomic writes.

Mirrors what lerobot 0.4.x writes (checked against files written by lerobot 0.4.4 in shared/fixtures), so
a dataset written here loads in lerobot and the other way round.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rfm.data.errors import DatasetError
from rfm.files import as_umask_allows

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
CHUNKS_SIZE = 1000  # files per chunk directory
EPISODES_PER_META_FILE = 100  # episodes per meta/episodes file: a recorder rewrites only the open one
DATA_FILE_MB = 100
VIDEO_FILE_MB = 200

# Columns every frame has, after the user features (lerobot's DEFAULT_FEATURES).
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
VISUAL = ("video", "image")


def next_chunk_file(chunk_index: int, file_index: int, chunks_size: int = CHUNKS_SIZE) -> tuple[int, int]:
    """The file after (chunk, file): file index rolls over into the next chunk after chunks_size files."""
    return (chunk_index + 1, 0) if file_index + 1 >= chunks_size else (chunk_index, file_index + 1)


def new_info(fps: int, robot_type: str | None, features: dict, use_videos: bool) -> dict:
    return {
        "codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": 0, "total_frames": 0,
        "total_tasks": 0, "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": DATA_FILE_MB,
        "video_files_size_in_mb": VIDEO_FILE_MB, "fps": int(fps), "splits": {}, "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if use_videos else None, "features": {**features, **DEFAULT_FEATURES},
    }


# --- atomic file writes -------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, rename over `path`: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        as_umask_allows(tmp)  # mkstemp makes 0600: a dataset is read by other users (a training job)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=4, ensure_ascii=False) + "\n").encode())


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def atomic_move(src: Path, dst: Path) -> None:
    """fsync a finished file and rename it into place."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as f:
        os.fsync(f.fileno())
    os.replace(src, dst)
    _fsync_dir(dst.parent)


# --- reading with errors that name the file and field --------------------------------------------------

def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(path, None, "file is missing") from None
    except json.JSONDecodeError as e:
        raise DatasetError(path, None, f"is not valid JSON ({e})") from None


def read_parquet(path: Path, columns: list[str] | None = None, filters: Any = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns, filters=filters)
    except FileNotFoundError:
        raise DatasetError(path, None, "parquet file is missing") from None
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        missing = [c for c in (columns or []) if "No match for FieldRef" in str(e) and c in str(e)]
        if missing:
            raise DatasetError(path, missing[0], "column is missing") from None
        raise DatasetError(path, None, f"cannot read parquet (truncated or corrupt?): {e}") from None


def parquet_columns(path: Path) -> list[str]:
    """Column names from the parquet footer (cheap); errors name the file."""
    try:
        return pq.read_schema(path).names
    except FileNotFoundError:
        raise DatasetError(path, None, "parquet file is missing") from None
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise DatasetError(path, None, f"cannot read parquet (truncated or corrupt?): {e}") from None


def require(d: dict, key: str, path: Path, kind: type | tuple[type, ...], where: str = "") -> Any:
    """d[key], checked for presence and type; errors name file and field."""
    field = f"{where}{key}"
    if key not in d:
        raise DatasetError(path, field, "is missing")
    if not isinstance(d[key], kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DatasetError(path, field, f"expected {names}, found {type(d[key]).__name__} {d[key]!r}")
    return d[key]


def validate_info(info: dict, path: Path) -> None:
    """Checks of meta/info.json that the reader depends on."""
    if not isinstance(info, dict):
        raise DatasetError(path, None, "expected a JSON object")
    require(info, "codebase_version", path, str)
    require(info, "fps", path, (int, float))
    feats = require(info, "features", path, dict)
    for key, ft in feats.items():
        if not isinstance(ft, dict):
            raise DatasetError(path, f"features.{key}", f"expected an object, found {ft!r}")
        require(ft, "dtype", path, str, f"features.{key}.")
        shape = require(ft, "shape", path, (list, tuple), f"features.{key}.")
        if not all(isinstance(v, int) and v >= 0 for v in shape):
            raise DatasetError(path, f"features.{key}.shape", f"expected non-negative integers, found {shape}")
        if ft["dtype"] in VISUAL and len(shape) != 3:
            raise DatasetError(path, f"features.{key}.shape", f"expected (H, W, C) for a camera, found {shape}")


# --- tasks and episodes tables ------------------------------------------------------------------------

def tasks_table(tasks: list[str]) -> pa.Table:
    """meta/tasks.parquet as pandas writes it: task strings are the index, one column task_index."""
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None},
        ],
        "attributes": {}, "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.0",
    }
    schema = pa.schema([("task_index", pa.int64()), ("__index_level_0__", pa.string())],
                       metadata={b"pandas": json.dumps(pandas_meta).encode()})
    return pa.table({"task_index": list(range(len(tasks))), "__index_level_0__": list(tasks)}, schema=schema)


def read_tasks(path: Path) -> list[str]:
    """Task strings ordered by task_index, from a tasks.parquet written by lerobot/pandas or by us."""
    t = read_parquet(path)
    names = t.column_names
    if "task_index" not in names:
        raise DatasetError(path, "task_index", "column is missing")
    text_col = next((c for c in ("task", "__index_level_0__") if c in names), None)
    if text_col is None:
        raise DatasetError(path, "task", "column with the task strings is missing")
    idx = t.column("task_index").to_pylist()
    text = t.column(text_col).to_pylist()
    out = [""] * len(idx)
    for i, s in zip(idx, text):
        if not isinstance(i, int) or not 0 <= i < len(idx):
            raise DatasetError(path, "task_index", f"expected indices 0..{len(idx) - 1}, found {i!r}")
        out[i] = s
    return out


def hf_features_metadata(features: dict) -> bytes:
    """The `huggingface` schema metadata of data parquet files, so `datasets` restores Image columns."""
    out: dict[str, Any] = {}
    for key, ft in features.items():
        if ft["dtype"] == "video":
            continue
        if ft["dtype"] == "image":
            out[key] = {"_type": "Image"}
        elif list(ft["shape"]) == [1]:
            out[key] = {"dtype": ft["dtype"], "_type": "Value"}
        else:
            out[key] = {"feature": {"dtype": ft["dtype"], "_type": "Value"}, "length": int(ft["shape"][0]),
                        "_type": "List"}
    return json.dumps({"info": {"features": out}}).encode()


ARROW_TYPES = {"float32": pa.float32(), "float64": pa.float64(), "int64": pa.int64(), "int32": pa.int32(),
               "bool": pa.bool_(), "string": pa.string(), "int16": pa.int16(), "int8": pa.int8(),
               "uint8": pa.uint8()}
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def arrow_type(ft: dict, key: str) -> pa.DataType:
    if ft["dtype"] == "image":
        return IMAGE_STRUCT
    if ft["dtype"] not in ARROW_TYPES:
        raise ValueError(f"feature {key!r}: dtype {ft['dtype']!r} is not supported; expected one of {sorted(ARROW_TYPES)}")
    base = ARROW_TYPES[ft["dtype"]]
    shape = list(ft["shape"])
    if shape == [1]:
        return base
    if len(shape) != 1:
        raise ValueError(f"feature {key!r}: shape {shape} is not supported; expected (1,) or (D,)")
    return pa.list_(base, shape[0])


def data_schema(features: dict) -> pa.Schema:
    fields = [pa.field(k, arrow_type(ft, k)) for k, ft in features.items() if ft["dtype"] != "video"]
    return pa.schema(fields, metadata={b"huggingface": hf_features_metadata(features)})
