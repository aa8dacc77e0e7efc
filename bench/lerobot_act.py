"""Opt-in baseline: the real lerobot ACT policy, trained on the same dataset for the same step budget as an rfm
run, evaluated closed loop by rfm's own Meta-World harness on the same unseen seeds.

Not part of the test suite and installs nothing itself. It needs lerobot in a separate venv (see
bench/lerobot_compat.py for the recipe). ACT is not language-conditioned: on MT10 it has to tell the task from the
scene, which Meta-World's ten tasks make possible (each has its own objects).

    .venv/bin/python bench/lerobot_act.py --lerobot-python /tmp/lerobot-venv/bin/python \
        --dataset data/mt10-50-96 --steps 9000 --batch-size 32 --tasks mt10 --episodes 10 \
        [--rfm-checkpoint checkpoints/default] [--action-steps 8] [--act-arg=--policy.optimizer_lr=1e-4 ...]

ACT runs with lerobot's defaults except: chunk_size = n_action_steps = the rfm run's chunk (16), no ImageNet
weights (nothing may be downloaded here), CPU, a copy of the dataset without observation.environment_state (lerobot
makes every feature an input, and that one is the simulator's object positions, which rfm's policy never sees;
`--act-privileged` keeps it), and whatever `--act-arg` overrides (recorded in the JSON); lerobot's
defaults (lr 1e-5, batch 8) are tuned for 100k-step runs, so a short budget may want a larger learning rate.
Training goes through `lerobot-train`; evaluation sends each observation to a small worker process in the lerobot
venv (pipes, numpy arrays) that runs lerobot's pre-processor -> ACTPolicy.predict_action_chunk -> post-processor,
so rfm's rollout code executes the chunks exactly as it does for rfm checkpoints. Prints a table and writes
bench/results/lerobot_act.json (or --results).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from rfm.config import RobotInterface
from rfm.data.lerobot import LeRobotDataset
from rfm.data.windows import interface_from_dataset
from rfm.eval.evaluate import evaluate, format_table
from rfm.runtime.base import Runner

RESULTS = Path(__file__).parent / "results" / "lerobot_act.json"
PRIVILEGED = "observation.environment_state"  # the simulator's object positions, recorded beside every demo frame

# PyPI has only CUDA builds of torchvision, whose kernels cannot load beside a CPU-only torch; torchvision then
# fails at import registering fake kernels for ops it could not load. ACT only needs torchvision's ResNet (plain
# torch ops), so declare those two op schemas first. Prepended to everything run in the lerobot venv.
TORCHVISION_SHIM = r'''
import torch
_tv_lib = torch.library.Library("torchvision", "DEF")
for _op in ("nms", "qnms"):
    _tv_lib.define(f"{_op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
'''

TRAIN = TORCHVISION_SHIM + r'''
import runpy, sys
sys.argv = ["lerobot-train", *sys.argv[1:]]
runpy.run_module("lerobot.scripts.lerobot_train", run_name="__main__")
'''

WORKER = r'''
import os, sys
out = os.fdopen(os.dup(1), "wb")  # the protocol channel; anything else printed goes to stderr
os.dup2(2, 1)
sys.stdout = sys.stderr
''' + TORCHVISION_SHIM + r'''
import io, struct
import numpy as np, torch
from lerobot.policies.act.modeling_act import ACTPolicy
from lerobot.policies.factory import make_pre_post_processors

torch.set_num_threads(int(sys.argv[3]))
path, cameras = sys.argv[1], sys.argv[2].split(",")
policy = ACTPolicy.from_pretrained(path).eval()
pre, post = make_pre_post_processors(policy.config, pretrained_path=path)
inp = sys.stdin.buffer
env_key = "observation.environment_state"
out.write(b"ready env\n" if env_key in policy.config.input_features else b"ready\n"); out.flush()
while True:
    head = inp.read(8)
    if len(head) < 8:
        break
    arrays = np.load(io.BytesIO(inp.read(struct.unpack("<Q", head)[0])))
    images, state = arrays["images"], arrays["state"]  # (B, N, 3, H, W) uint8, (B, D)
    batch = {f"observation.images.{c}": torch.from_numpy(images[:, i]).float() / 255.0 for i, c in enumerate(cameras)}
    batch["observation.state"] = torch.from_numpy(state).float()
    if "env_state" in arrays.files:
        batch[env_key] = torch.from_numpy(arrays["env_state"]).float()
    with torch.inference_mode():
        chunk = post(policy.predict_action_chunk(pre(batch)))
    buf = io.BytesIO(); np.save(buf, chunk.float().numpy()); data = buf.getvalue()
    out.write(struct.pack("<Q", len(data)) + data); out.flush()
'''


class LerobotACTRunner(Runner):
    """rfm Runner backed by a lerobot ACT checkpoint running in another Python (the lerobot venv)."""

    backend = "lerobot-act"

    def __init__(self, python: str, pretrained: Path, interface: RobotInterface, threads: int = 1) -> None:
        super().__init__(interface, head="chunk", model_id="lerobot-act", model_version=pretrained.name)
        self.proc = subprocess.Popen([python, "-c", WORKER, str(pretrained), ",".join(interface.cameras),
                                      str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        ready = self.proc.stdout.readline().split()
        if not ready or ready[0] != b"ready":
            raise RuntimeError(f"the lerobot worker did not start (exit code {self.proc.poll()})")
        # lerobot makes every dataset feature an input: ACT trained on a dataset with the simulator's privileged
        # object positions (observation.environment_state) takes them as input, and rollouts must then supply them
        self.privileged = ready[1:] == [b"env"]
        self._env_state: np.ndarray | None = None

    def predict(self, obs, noise=None):
        many = [obs] if isinstance(obs, Mapping) else obs
        if self.privileged:
            self._env_state = np.stack([o["environment_state"] for o in many]).astype(np.float32)
        return super().predict(obs, noise)

    def encode_text(self, instructions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        n = len(instructions)  # ACT has no language input
        return np.zeros((n, 1, 1), np.float32), np.ones((n, 1), bool)

    def _forward(self, images, state, text, text_mask, noise, prefix=None, prefix_len=None) -> np.ndarray:
        buf = io.BytesIO()
        extra = {"env_state": self._env_state} if self.privileged else {}
        np.savez(buf, images=np.ascontiguousarray(images), state=np.ascontiguousarray(state, np.float32), **extra)
        data = buf.getvalue()
        self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
        self.proc.stdin.flush()
        head = self.proc.stdout.read(8)
        if len(head) < 8:
            raise RuntimeError(f"the lerobot worker exited (code {self.proc.poll()})")
        chunk = np.load(io.BytesIO(self.proc.stdout.read(struct.unpack("<Q", head)[0])))
        return chunk[:, : self.interface.chunk_size]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def without_feature(src: Path, key: str, dst: Path) -> Path:
    """A copy of the LeRobot dataset at src without feature `key` (its column, stats, info entry and the data files'
    `huggingface` schema metadata); videos are linked, not copied. Returns dst."""
    import shutil

    from rfm.data import lerobot_meta as lm

    if dst.exists():
        shutil.rmtree(dst)
    info = lm.read_json(src / "meta" / "info.json")
    info["features"].pop(key)
    hf_meta = {b"huggingface": lm.hf_features_metadata(info["features"])}
    for f in sorted(src.rglob("*.parquet")):
        table = lm.read_parquet(f)
        table = table.select([c for c in table.column_names if c != key and not c.startswith(f"stats/{key}/")])
        if table.schema.metadata and b"huggingface" in table.schema.metadata:
            table = table.replace_schema_metadata(hf_meta)
        lm.atomic_write_parquet(dst / f.relative_to(src), table)
    lm.atomic_write_json(dst / "meta" / "info.json", info)
    stats = lm.read_json(src / "meta" / "stats.json")
    stats.pop(key, None)
    lm.atomic_write_json(dst / "meta" / "stats.json", stats)
    if (src / "videos").exists():
        (dst / "videos").symlink_to((src / "videos").resolve())
    return dst


def expose_env_state() -> None:
    """Add the simulator's privileged object positions to every Meta-World observation (key environment_state),
    for an ACT trained with them as input; rfm's policies ignore the key."""
    from rfm.sim.metaworld import MetaWorldEnv

    plain = MetaWorldEnv._obs
    MetaWorldEnv._obs = lambda self: {**plain(self), "environment_state": self.env_state()}


def train_act(python: str, dataset: Path, out: Path, steps: int, batch_size: int, chunk: int, workers: int,
              threads: int, extra: list[str]) -> tuple[Path, float]:
    """lerobot-train for ACT (`extra`: more lerobot-train arguments); returns (pretrained_model dir, wall seconds)."""
    cmd = [python, "-c", TRAIN, "--policy.type=act", "--policy.device=cpu",
           "--policy.push_to_hub=false", "--policy.pretrained_backbone_weights=null",
           f"--policy.chunk_size={chunk}", f"--policy.n_action_steps={chunk}",
           f"--dataset.repo_id=local/{dataset.name}", f"--dataset.root={dataset.resolve()}",
           f"--output_dir={out}", f"--steps={steps}", f"--batch_size={batch_size}", f"--save_freq={steps}",
           f"--log_freq={max(1, steps // 20)}", f"--num_workers={workers}", "--wandb.enable=false", "--seed=0", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env)
    return out / "checkpoints" / "last" / "pretrained_model", time.time() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lerobot-python", required=True, help="python of a venv with lerobot installed")
    p.add_argument("--dataset", required=True, help="LeRobot dataset (e.g. from `rfm data generate metaworld`)")
    p.add_argument("--steps", type=int, default=9000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunk-size", type=int, default=16)
    p.add_argument("--tasks", default="mt10")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--action-steps", type=int, default=None,
                   help="actions executed per inference for both policies (default: whole chunks)")
    p.add_argument("--act-arg", action="append", default=[], metavar="ARG",
                   help="extra lerobot-train argument, e.g. --act-arg=--policy.optimizer_lr=1e-4 (repeatable)")
    p.add_argument("--act-privileged", action="store_true",
                   help=f"let ACT take the dataset's {PRIVILEGED} (simulator object positions) as input; by default "
                        "it is removed so that ACT sees what rfm's policy sees")
    p.add_argument("--rfm-checkpoint", default=None, help="also evaluate this rfm checkpoint on the same seeds")
    p.add_argument("--out", default="runs/lerobot-act", help="lerobot-train output directory")
    p.add_argument("--reuse", action="store_true", help="evaluate an existing OUT instead of training again")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args()

    dataset, out = Path(args.dataset), Path(args.out)
    source = LeRobotDataset(dataset)
    interface = interface_from_dataset(source, chunk_size=args.chunk_size)
    if args.reuse:
        pretrained, train_s = out / "checkpoints" / "last" / "pretrained_model", None
    else:
        if out.exists():
            sys.exit(f"{out} exists: pass --reuse to evaluate it, or choose another --out")
        if PRIVILEGED in source.features and not args.act_privileged:
            # lerobot makes every dataset feature an input: train ACT on a copy without the simulator's state
            dataset = without_feature(dataset, PRIVILEGED, Path(f"{out}-dataset"))
        pretrained, train_s = train_act(args.lerobot_python, dataset, out, args.steps, args.batch_size,
                                        args.chunk_size, args.num_workers, args.threads, args.act_arg)
    runner = LerobotACTRunner(args.lerobot_python, pretrained, interface, args.threads)
    if runner.privileged:
        print(f"note: this ACT takes {PRIVILEGED} (the simulator's object positions) as input, "
              "because the dataset has it; it is given them in evaluation, which rfm's policy is not", file=sys.stderr)
        expose_env_state()
    try:
        act = evaluate(runner, args.tasks.split(","), args.episodes, action_steps=args.action_steps, progress=False)
    finally:
        runner.close()
    rows = {"lerobot ACT": act}
    if args.rfm_checkpoint:
        rows["rfm " + Path(args.rfm_checkpoint).name] = evaluate(None, args.tasks.split(","), args.episodes,
                                                                  action_steps=args.action_steps,
                                                                  checkpoint=args.rfm_checkpoint, progress=False)
    for name, res in rows.items():
        print(f"\n{name}\n{format_table(res)}")
    result = {"dataset": str(args.dataset), "act_dataset": None if args.reuse else str(dataset),
              "steps": args.steps, "batch_size": args.batch_size,
              "chunk_size": args.chunk_size, "episodes_per_task": args.episodes, "action_steps": args.action_steps,
              "act_extra_args": args.act_arg, "act_privileged_env_state": runner.privileged,
              "act_train_wall_s": train_s,
              "act_train_samples_per_s": round(args.steps * args.batch_size / train_s, 2) if train_s else None,
              "act_checkpoint": str(pretrained), "results": rows}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
