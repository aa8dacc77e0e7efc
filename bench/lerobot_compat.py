"""Opt-in check that rfm and the real `lerobot` read each other's LeRobotDataset v3.0 files.

Not part of the test suite and installs nothing itself. It needs lerobot in a *separate* venv (lerobot pins
an older torch; `--no-deps` keeps ours):

    python -m venv /tmp/lerobot-venv
    /tmp/lerobot-venv/bin/pip install torch==2.13.0
    /tmp/lerobot-venv/bin/pip install --no-deps lerobot==0.4.4 torchvision==0.28.0 torchcodec==0.13.0
    /tmp/lerobot-venv/bin/pip install <lerobot 0.4.4's requirements except torch/torchvision/torchcodec>
    apt-get install ffmpeg            # torchcodec decodes through Debian's libav*

Then, from the repo root:

    .venv/bin/python bench/lerobot_compat.py --lerobot-python /tmp/lerobot-venv/bin/python

Checks, each written by one side and read by the other with the values compared:
  rfm -> lerobot: atomic video, atomic PNG-image, and incremental (+append) datasets written by rfm are
                  loaded with lerobot's LeRobotDataset (every frame, plus delta_timestamps action chunks);
  lerobot -> rfm: video and image datasets made with lerobot's create/add_frame/save_episode/finalize are
                  read with rfm.data.lerobot.LeRobotDataset;
  both ways:      a lerobot-written dataset extended by rfm's incremental writer (append) loads in lerobot.
States/actions/tasks must match exactly; decoded video frames within codec tolerance (mean |diff| < 3/255).
Writes bench/results/lerobot_compat.json and exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from rfm.data.lerobot import LeRobotDataset, LeRobotDatasetWriter

FPS, T, SIZE = 10, 20, 64
TASKS = ["pick the cube", "open the drawer", "press the button"]

# Runs inside the lerobot venv. argv: mode ("read" | "write") dataset_dir npz_path [use_videos]
LEROBOT_SIDE = textwrap.dedent('''
    import glob, json, os, sys
    import numpy as np
    import torch
    # PyPI's torchvision is a CUDA build: next to a CPU-only torch its C++ ops library cannot load, and its
    # import then fails registering fake kernels for two ops. lerobot's dataset code uses none of those ops,
    # so declare their schemas when (and only when) the library is unusable.
    try:
        import importlib.util
        tv_dir = os.path.dirname(importlib.util.find_spec("torchvision").origin)
        torch.ops.load_library(glob.glob(os.path.join(tv_dir, "_C*.so"))[0])
    except Exception:
        _tv = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _tv.define(op + "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    mode, root, npz = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "read":
        ds = LeRobotDataset("rfm/compat", root=root)
        cams = ds.meta.camera_keys
        states, actions, eps, tasks, images, ticks = [], [], [], [], {k: [] for k in cams}, []
        for i in range(len(ds)):
            it = ds[i]
            states.append(it["observation.state"].numpy()); actions.append(it["action"].numpy())
            if "tick_time" in it:  # a recording's real tick times
                ticks.append(float(it["tick_time"]))
            eps.append(int(it["episode_index"])); tasks.append(it["task"])
            for k in cams:
                images[k].append((it[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        chunk = LeRobotDataset("rfm/compat", root=root, delta_timestamps={"action": [i / ds.fps for i in range(8)]})
        last = chunk[len(chunk) - 1]
        np.savez(npz, states=np.stack(states), actions=np.stack(actions), episode_index=np.array(eps),
                 tick_time=np.array(ticks, np.float32), **{"img:" + k: np.stack(v) for k, v in images.items()})
        print(json.dumps({"frames": len(ds), "episodes": ds.num_episodes, "tasks": tasks, "fps": ds.fps,
                          "cameras": cams, "video_backend": ds.video_backend, "chunk_shape": list(last["action"].shape),
                          "chunk_pad": last["action_is_pad"].tolist(), "stats": sorted(ds.meta.stats)}))
    else:
        use_videos = sys.argv[4] == "1"
        dt = "video" if use_videos else "image"
        feats = {"observation.images.top": {"dtype": dt, "shape": (64, 64, 3), "names": ["height", "width", "channels"]},
                 "observation.state": {"dtype": "float32", "shape": (3,), "names": ["x", "y", "z"]},
                 "action": {"dtype": "float32", "shape": (2,), "names": ["vx", "vy"]}}
        ds = LeRobotDataset.create("rfm/compat", fps=10, features=feats, root=root, robot_type="koch",
                                   use_videos=use_videos)
        rng = np.random.default_rng(7)
        S, A, I = [], [], []
        for ep, t in enumerate((20, 13)):
            for i in range(t):
                img = np.zeros((64, 64, 3), np.uint8); img[i + ep:i + ep + 10, i:i + 10] = (255, 128, 0)
                s, a = rng.standard_normal(3).astype(np.float32), rng.standard_normal(2).astype(np.float32)
                ds.add_frame({"observation.images.top": img, "observation.state": s, "action": a,
                              "task": ["stack", "push"][ep]})
                S.append(s); A.append(a); I.append(img)
            ds.save_episode()
        ds.finalize()
        np.savez(npz, states=np.stack(S), actions=np.stack(A), images=np.stack(I))
        print(json.dumps({"written": root}))
''')


def frame(i: int, ep: int) -> np.ndarray:
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[(i + 3 * ep) % 50:(i + 3 * ep) % 50 + 12, i % 50:i % 50 + 12] = (40, 200, 90)
    return img


def write_rfm(root: Path, use_videos: bool, incremental: bool, vcodec: str | None = None) -> None:
    rng = np.random.default_rng(3)

    def writer() -> LeRobotDatasetWriter:
        return LeRobotDatasetWriter(root, fps=FPS, robot_type="sawyer", cameras={"front": (SIZE, SIZE), "wrist": (SIZE, SIZE)},
                                    state_names=["x", "y", "z", "g"], action_names=["dx", "dy", "dz", "dg"],
                                    use_videos=use_videos, incremental=incremental, vcodec=vcodec)

    w = writer()
    for ep in range(3):
        if incremental and ep == 2:  # reopen, as a recorder restarted after a crash would
            w.finalize()
            w = LeRobotDatasetWriter.append(root, vcodec=vcodec)
        for i in range(T - 4 * ep):
            w.add_frame(images={"front": frame(i, ep), "wrist": frame(i, ep)[::-1]}, state=rng.standard_normal(4),
                        action=rng.standard_normal(4), task=TASKS[ep])
        w.save_episode(extra={"next.success": np.arange(T - 4 * ep) == T - 4 * ep - 1},
                       meta={"env_task": "reach-v3", "seed": ep})  # episode-level columns, as `rfm data generate` writes
    w.finalize()


def run_lerobot(py: str, *args: str) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(LEROBOT_SIDE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([py, f.name, *args], check=False, capture_output=True, text=True, timeout=900, env=env)
    os.unlink(f.name)
    if proc.returncode != 0:
        raise RuntimeError(f"lerobot side failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_rfm_to_lerobot(py: str, tmp: Path, name: str, use_videos: bool, incremental: bool,
                         vcodec: str | None = None) -> dict:
    root = tmp / name
    write_rfm(root, use_videos, incremental, vcodec)
    return compare_in_lerobot(py, tmp, root, name, use_videos)


def check_recording_to_lerobot(py: str, tmp: Path, name: str) -> dict:
    """A server's recording of a robot that reports its ticks (frames at the model's size, the robot's native sizes,
    aspect and calibration in the metadata, the executed action, chunk and tick-time columns) loads in lerobot."""
    from rfm.config import RobotInterface
    from rfm.runtime.recorder import Recorder

    K = [[300.0, 0, 319.5], [0, 300.0, 239.5], [0, 0, 1]]
    itf = RobotInterface(cameras=["front", "wrist"], image_size=(SIZE, SIZE), state_names=["x", "y", "z", "g"],
                         action_names=["dx", "dy", "dz", "dg"], chunk_size=8, control_hz=FPS, robot_type="arm",
                         native_sizes={"front": (480, 640), "wrist": (480, 640)},
                         calibration={c: {"intrinsics": K, "extrinsics": [[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2]]}
                                      for c in ("front", "wrist")})
    root = tmp / name
    rec = Recorder(root, itf)
    rng = np.random.default_rng(5)
    for ep in range(2):
        for i in range(T - 3 * ep):
            images = np.stack([frame(i, ep), frame(i, ep)[::-1]]).transpose(0, 3, 1, 2).copy()
            rec.record_tick(f"robot-{ep}", images, rng.standard_normal(4).astype(np.float32), TASKS[ep],
                            rng.standard_normal(4).astype(np.float32), rng.standard_normal(32).astype(np.float32),
                            episode_end=i == T - 3 * ep - 1, time=100.0 + i / FPS + 0.2 * (i > 5))
    rec.close()
    return compare_in_lerobot(py, tmp, root, name, True)


def check_append_to_lerobot_dataset(py: str, tmp: Path, name: str) -> dict:
    """lerobot writes, rfm appends an episode incrementally, lerobot reads all of it."""
    root = tmp / name
    run_lerobot(py, "write", str(root), str(tmp / f"{name}_src.npz"), "1")
    w = LeRobotDatasetWriter.append(root)
    for i in range(7):
        img = np.zeros((64, 64, 3), np.uint8)
        img[i:i + 10, 20:30] = (0, 128, 255)
        w.add_frame(images={"top": img}, state=[i, 1, 2], action=[0.5, i], task="push")
    w.save_episode()
    w.finalize()
    return compare_in_lerobot(py, tmp, root, name, True)


def compare_in_lerobot(py: str, tmp: Path, root: Path, name: str, use_videos: bool) -> dict:
    ours = LeRobotDataset(root)
    res = run_lerobot(py, "read", str(root), str(tmp / f"{name}.npz"))
    got = np.load(tmp / f"{name}.npz")
    np.testing.assert_array_equal(got["states"], ours.states)
    np.testing.assert_array_equal(got["actions"], ours.actions)
    np.testing.assert_array_equal(got["episode_index"], ours.episode_index)
    if "tick_time" in ours.extras:
        np.testing.assert_array_equal(got["tick_time"], np.asarray(ours.extras["tick_time"]).reshape(-1))
    assert res["tasks"] == [ours.instruction(i) for i in range(ours.num_frames)], "task strings differ"
    assert res["chunk_shape"] == [8, ours.actions.shape[1]] and res["chunk_pad"][1:] == [True] * 7, res
    errs = {}
    for cam in ours.cameras:
        mine = np.concatenate([ours.decode_episode(e.index, cam) for e in ours.episodes]).astype(int)
        err = float(np.abs(got[f"img:{ours.camera_key(cam)}"].astype(int) - mine).mean())
        assert err < (3.0 if use_videos else 0.51), f"{cam}: mean |diff| {err:.2f} between lerobot and rfm decodes"
        errs[cam] = round(err, 3)
    codec = (ours.features[ours.camera_key(ours.cameras[0])].get("info") or {}).get("video.codec")
    return {"frames": res["frames"], "episodes": res["episodes"], "codec": codec, "image_mean_abs_diff": errs,
            "lerobot_video_backend": res["video_backend"] if use_videos else None, "stats_features": len(res["stats"])}


def check_lerobot_to_rfm(py: str, tmp: Path, name: str, use_videos: bool) -> dict:
    root = tmp / name
    run_lerobot(py, "write", str(root), str(tmp / f"{name}.npz"), "1" if use_videos else "0")
    exp = np.load(tmp / f"{name}.npz")
    ds = LeRobotDataset(root)
    np.testing.assert_array_equal(ds.states, exp["states"])
    np.testing.assert_array_equal(ds.actions, exp["actions"])
    assert ds.tasks == ["stack", "push"] and ds.num_episodes == 2 and ds.robot_type == "koch", ds
    imgs = np.stack([ds.get_frame(i)["images"]["top"] for i in range(ds.num_frames)]).astype(int)
    err = float(np.abs(imgs - exp["images"]).mean())
    assert err < (3.0 if use_videos else 0.01), f"mean |diff| {err:.2f} vs the frames lerobot was given"
    codec = (ds.features["observation.images.top"].get("info") or {}).get("video.codec")
    return {"frames": ds.num_frames, "image_mean_abs_diff": round(err, 3), "codec": codec}


def main() -> int:
    ap = argparse.ArgumentParser(description="rfm <-> lerobot dataset compatibility (opt-in)")
    ap.add_argument("--lerobot-python", default="/tmp/lerobot-venv/bin/python")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "lerobot_compat.json"))
    args = ap.parse_args()
    if not Path(args.lerobot_python).exists():
        print(f"no lerobot venv at {args.lerobot_python}: see the setup steps at the top of this file", file=sys.stderr)
        return 2
    probe = "import importlib.metadata as m; print(m.version('lerobot'), m.version('torch'), m.version('torchcodec'))"
    version = subprocess.run([args.lerobot_python, "-c", probe], check=False, capture_output=True, text=True).stdout.split()
    checks = {
        "rfm->lerobot video AV1 (atomic)": lambda t: check_rfm_to_lerobot(args.lerobot_python, t, "rfm_video", True,
                                                                          False, "av1"),
        "rfm->lerobot video h264, the default (atomic)": lambda t: check_rfm_to_lerobot(args.lerobot_python, t,
                                                                                        "rfm_h264", True, False),
        "rfm->lerobot image (atomic)": lambda t: check_rfm_to_lerobot(args.lerobot_python, t, "rfm_image", False, False),
        "rfm->lerobot video (incremental+append)": lambda t: check_rfm_to_lerobot(args.lerobot_python, t, "rfm_incr", True, True),
        "rfm serve --record (ticks of a 480x640 robot) -> lerobot": lambda t: check_recording_to_lerobot(
            args.lerobot_python, t, "rfm_recording"),
        "lerobot->rfm video": lambda t: check_lerobot_to_rfm(args.lerobot_python, t, "lr_video", True),
        "lerobot->rfm image": lambda t: check_lerobot_to_rfm(args.lerobot_python, t, "lr_image", False),
        "lerobot write, rfm append, lerobot read": lambda t: check_append_to_lerobot_dataset(args.lerobot_python, t,
                                                                                             "lr_append"),
    }
    results, failed = {}, 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in checks.items():
            t0 = time.perf_counter()
            try:
                detail = fn(Path(tmp))
                results[name] = {"ok": True, **detail}
            except Exception as e:  # noqa: BLE001 - report every check, then fail at the end
                failed += 1
                results[name] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[-1500:]}"}
            results[name]["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"{'PASS' if results[name]['ok'] else 'FAIL'}  {name}  "
                  f"{json.dumps({k: v for k, v in results[name].items() if k != 'ok'})}")
    report = {"lerobot": version[0] if version else None, "lerobot_venv_torch": version[1] if len(version) > 1 else None,
              "torchcodec": version[2] if len(version) > 2 else None, "checks": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
