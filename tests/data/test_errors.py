"""Bad data fails at open with a DatasetError that names the file and the field."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rfm.data.lerobot import DatasetError, LeRobotDataset

from .conftest import write_dataset

DATA = "data/chunk-000/file-000.parquet"
VIDEO = "videos/observation.images.front/chunk-000/file-000.mp4"


@pytest.fixture
def ds_copy(tmp_path, video_dataset):
    root = tmp_path / "ds"
    shutil.copytree(video_dataset.root, root)
    return root


def rewrite_data(root, fn):
    path = root / DATA
    t = pq.read_table(path)
    pq.write_table(fn(t), path)


def test_missing_feature_column(ds_copy):
    rewrite_data(ds_copy, lambda t: t.drop_columns(["observation.state"]))
    with pytest.raises(DatasetError, match=r"file-000\.parquet: field 'observation.state': column is missing"):
        LeRobotDataset(ds_copy)


def test_wrong_shape(ds_copy):
    def widen(t):
        i = t.schema.get_field_index("action")
        vals = np.asarray(t.column("action").combine_chunks().flatten()).reshape(-1, 2)
        wide = np.concatenate([vals, vals[:, :1]], axis=1).reshape(-1)
        return t.set_column(i, "action", pa.FixedSizeListArray.from_arrays(pa.array(wide, pa.float32()), 3))
    rewrite_data(ds_copy, widen)
    with pytest.raises(DatasetError, match=r"field 'action': has 3 values per frame, meta/info.json shape says \[2\]"):
        LeRobotDataset(ds_copy)


def test_non_monotonic_timestamps(ds_copy):
    def shuffle_ts(t):
        ts = np.asarray(t.column("timestamp")).copy()
        ts[3], ts[4] = ts[4], ts[3]
        return t.set_column(t.schema.get_field_index("timestamp"), "timestamp", pa.array(ts, pa.float32()))
    rewrite_data(ds_copy, shuffle_ts)
    with pytest.raises(DatasetError, match=r"file-000\.parquet: field 'timestamp': not increasing in episode 0 at frame 4"):
        LeRobotDataset(ds_copy)


def test_truncated_parquet(ds_copy):
    path = ds_copy / DATA
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"file-000\.parquet: cannot read parquet \(truncated or corrupt"):
        LeRobotDataset(ds_copy)


def test_truncated_mp4(ds_copy):
    path = ds_copy / VIDEO
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"observation.images.front/chunk-000/file-000.mp4: field 'observation.images.front'"):
        LeRobotDataset(ds_copy)


def test_missing_mp4(ds_copy):
    (ds_copy / VIDEO).unlink()
    with pytest.raises(DatasetError, match="field 'observation.images.front': video file is missing"):
        LeRobotDataset(ds_copy)


def test_bad_info(ds_copy):
    info_path = ds_copy / "meta/info.json"
    info = json.loads(info_path.read_text())
    del info["fps"]
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"info.json: field 'fps': is missing"):
        LeRobotDataset(ds_copy)
    info["fps"], info["codebase_version"] = 10, "v9.9"
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"field 'codebase_version': expected 'v3.0' or 'v2.1', found 'v9.9'"):
        LeRobotDataset(ds_copy)
    info["codebase_version"], info["total_frames"] = "v3.0", 999
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"field 'total_frames': says 999, but the episode metadata and data hold 36"):
        LeRobotDataset(ds_copy)
    info_path.write_text("{not json")
    with pytest.raises(DatasetError, match="info.json: is not valid JSON"):
        LeRobotDataset(ds_copy)


def test_episode_length_mismatch(ds_copy):
    path = ds_copy / "meta/episodes/chunk-000/file-000.parquet"
    t = pq.read_table(path)
    t = t.set_column(t.schema.get_field_index("length"), "length", pa.array([13, 15, 9], pa.int64()))
    pq.write_table(t, path)
    with pytest.raises(DatasetError, match="field 'episode_index': episode 0 has 12 rows, its episode metadata says length 13"):
        LeRobotDataset(ds_copy)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        LeRobotDataset(tmp_path / "nope")


def test_image_cell_corrupt(tmp_path):
    w = write_dataset(tmp_path / "img", use_videos=False, lengths=(3,), cameras={"c": (16, 16)})
    def corrupt(t):
        cells = t.column("observation.images.c").to_pylist()
        cells[1] = {"bytes": b"not a png", "path": "frame-000001.png"}
        return t.set_column(0, "observation.images.c", pa.array(cells, t.schema.field(0).type))
    rewrite_data(w.root, corrupt)
    ds = LeRobotDataset(w.root)
    with pytest.raises(DatasetError, match="field 'observation.images.c': cannot decode image"):
        ds.get_frame(1)


def test_a_16_bit_depth_camera_is_refused_by_name_not_read_as_white(tmp_path):
    """Converting a 16-bit PNG (millimetres of depth) to RGB clips every value at 255: the camera read as a constant
    white frame through training and serving, without a word. It is refused, at the start of training too."""
    import io

    from PIL import Image

    from rfm.train.data import build_training_data

    w = write_dataset(tmp_path / "img", use_videos=False, lengths=(3, 3), cameras={"c": (16, 16)})

    def depth(t):
        buf = io.BytesIO()
        Image.fromarray(np.full((16, 16), 1200, np.uint16)).save(buf, format="PNG")  # mode I;16
        cells = [{"bytes": buf.getvalue(), "path": None}] * t.num_rows
        return t.set_column(0, "observation.images.c", pa.array(cells, t.schema.field(0).type))
    rewrite_data(w.root, depth)
    with pytest.raises(DatasetError, match=r"field 'observation.images.c': holds I;16 images .*rfm train --cameras"):
        LeRobotDataset(w.root).get_frame(0)
    with pytest.raises(DatasetError, match="holds I;16 images"):  # before any step, not in a loader worker
        build_training_data([str(w.root)], 4, None, None, 0)


def test_a_channel_first_camera_shape_without_names_is_read_as_channel_first(ds_copy):
    """lerobot writes (C, H, W) shapes for some cameras; without `names` rfm read [3, 64, 80] as 3 x 64 pixels."""
    info = json.loads((ds_copy / "meta" / "info.json").read_text())
    key = "observation.images.front"
    h, w, c = info["features"][key]["shape"]
    info["features"][key].update(shape=[c, h, w], names=None)
    (ds_copy / "meta" / "info.json").write_text(json.dumps(info))
    assert LeRobotDataset(ds_copy).image_shape("front") == (h, w, c)


def test_non_finite_state_names_the_episodes_and_says_how_to_remove_them(ds_copy):
    """A sensor dropout recorded as NaN would make the stats NaN and training's first loss NaN: refused at load,
    naming the file, the field and the episodes (lengths 12, 15, 9: rows 13 and 30 are in episodes 1 and 2)."""
    def drop_out(t):
        i = t.schema.get_field_index("observation.state")
        width = t.schema.field(i).type.list_size
        vals = np.asarray(t.column(i).combine_chunks().flatten()).reshape(-1, width).copy()
        vals[13, 0] = np.nan
        vals[30, width - 1] = np.inf
        return t.set_column(i, "observation.state",
                            pa.FixedSizeListArray.from_arrays(pa.array(vals.reshape(-1), pa.float32()), width))
    rewrite_data(ds_copy, drop_out)
    with pytest.raises(DatasetError, match=r"file-000\.parquet: field 'observation.state': 2 frames hold NaN or "
                                           r"infinite values, in episode\(s\) 1, 2 \(the first at row 13: \w+\).*"
                                           r"--root .* --new_repo_id .*delete_episodes "
                                           r"--operation.episode_indices \"\[1, 2\]\"") as e:
        LeRobotDataset(ds_copy)
    assert f"--root {ds_copy} " in str(e.value)  # the command as it runs, the dimension by its name
    # still open to look at: rfm data info and view report it instead of refusing it
    looked = LeRobotDataset(ds_copy, check_finite=False)
    assert looked.num_episodes == 3 and "episode(s) 1, 2" in looked.non_finite[0]
    from tests.cli_in_process import rfm

    out = rfm("data", "info", str(ds_copy))
    assert out.returncode == 0 and "REFUSED for training" in out.stdout
