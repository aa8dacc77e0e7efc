"""`train(cfg)`: the whole training run, top to bottom, on accelerate (CPU, one GPU, or DDP: several processes
started by `accelerate launch` or `torchrun`, on GPUs or, where there are none, on CPU cores with gloo)."""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import fields as dataclass_fields
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from rfm.checkpoint import read_config, save_checkpoint
from rfm.config import ConfigError, PolicyConfig, RobotInterface, preset, preset_image_size
from rfm.constants import ACTION, ACTION_LIMIT_MARGIN, OBS_ENV_STATE, OBS_STATE
from rfm.data.recording import parse_kinds
from rfm.data.stats import widened_range
from rfm.files import recover_interrupted
from rfm.model.policy import RFMPolicy
from rfm.train.aids import TrainBatch, TrainingAid, build_aids
from rfm.train.augment import augment, state_noise
from rfm.train.config import TrainConfig
from rfm.train.init import init_from_checkpoint
from rfm.train.instructions import InstructionVariator, check_coverage, check_task_tokens, load_variants
from rfm.train.launch import cpu_only, first_process, local_processes
from rfm.train.logs import TrainLogger
from rfm.train.lora import plain_state_dict
from rfm.train.run_lock import run_lock
from rfm.train.schedule import warmup_cosine
from rfm.train.state import STATE_DIR, load_training_state, save_training_state
from rfm.train.stop import StopSignals, TrainingStopped, shield_worker_from_stop_signals

if TYPE_CHECKING:
    from accelerate import Accelerator

CHECKPOINT_DIR = "checkpoint"


class LossModule(nn.Module):
    """The policy net and the run's training aids, so DDP sees the loss computation as forward():
    (total loss, {name: unweighted part}). `action_weights`: one weight per action dimension (None: all equal)."""

    def __init__(self, net: nn.Module, aids: list[TrainingAid], action_weights: list[float] | None = None) -> None:
        super().__init__()
        self.net, self.aids = net, nn.ModuleList(aids)
        self.keypoints = any(a.keypoints for a in aids) or net.point_token is not None
        self.register_buffer("action_weights", None if action_weights is None else torch.tensor(action_weights),
                             persistent=False)

    def forward(self, batch: TrainBatch):
        feats = self.net.image_features(batch.images, keypoints=self.keypoints)
        memory, mask = self.net.fuse(feats, batch.state, batch.text, batch.text_mask, batch.image_offsets,
                                     batch.point_shift)
        parts = {"action": self.net.action_loss(memory, mask, batch.actions, batch.action_pad, self.action_weights,
                                                executed=batch.executed, executed_recorded=batch.executed_recorded)}
        total = parts["action"]
        for aid in self.aids:
            more = {"fused": (memory, mask)} if aid.fused else {}
            for name, value in aid.losses(self.net, feats, batch, **more).items():
                parts[name] = value
                total = total + aid.weight * value
        return total, parts


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _param_groups(net: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: no weight decay on norms/biases/embeddings; optional lr scale for the vision encoder."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and not name.endswith(("_pos", "_embed", "modality"))
        vision = name.startswith("vision.")
        groups.setdefault((decay, vision), []).append(p)
    return [{"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0,
             "lr": cfg.lr * (cfg.vision_lr_scale if vision else 1.0)} for (decay, vision), ps in groups.items()]


def _mixed_precision(cfg: TrainConfig) -> str:
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _agreed_stop(signum: int | None, accelerator: Accelerator) -> int | None:
    """The stop signal any process of the run has received, the same on every process, so all of them save and stop
    after the same step (one that stopped alone would leave the others waiting for it in the next all-reduce)."""
    if accelerator.num_processes == 1:
        return signum
    flag = torch.tensor([signum or 0], device=accelerator.device)
    return int(accelerator.reduce(flag, "max").item()) or None


def _lineage(init: str, meta: dict) -> list[dict]:
    """The checkpoints this one was fine-tuned from, newest first: id, version, data, its tasks and steps of each."""
    here = {"model_id": meta.get("model_id", Path(init).name), "model_version": meta.get("model_version"),
            "path": str(init), "dataset": meta.get("data", {}).get("dataset"),
            "tasks": meta.get("data", {}).get("tasks"), "steps": meta.get("training", {}).get("steps_done")}
    return [here, *meta.get("lineage", [])]


def _shut_down_workers(batches, loader: DataLoader) -> None:
    """End the DataLoader's persistent workers now. Left to garbage collection, they are still running at exit,
    where multiprocessing terminates them while torch still watches them: 'DataLoader worker (pid …) is killed by
    signal: Terminated' after a clean stop."""
    batches.close()
    iterator = getattr(loader, "_iterator", None)  # persistent_workers: the loader keeps its worker iterator
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None


def _infinite(loader: DataLoader, sampler, position: dict, processes: int = 1):
    """Batches for ever, epoch after epoch from position["epoch"] (accelerate's loader passes the number on to the
    sampler). `position` follows what was handed out: the epoch and how many of its frames all processes drew, which
    a checkpoint keeps so a resumed run, on any batch size or number of processes, goes on from there."""
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(position["epoch"])
        else:
            sampler.set_epoch(position["epoch"])
        for batch in loader:
            position["drawn"] += len(batch["instruction"]) * processes
            yield batch
        position["epoch"], position["drawn"] = position["epoch"] + 1, 0


def _model_config(cfg: TrainConfig, init_config: PolicyConfig | None, interface: RobotInterface):
    """The model to train and what was dropped from the --init model because this robot lacks the geometry for it.

    Triangulated points need every camera calibrated (interface.calibration); relative points also need the end
    effector's position (interface.ee_position). Inherited from --init, they are dropped when the new robot does not
    declare them; asked for by --model overrides, a missing calibration stays an error.
    """
    overrides = dict(cfg.model_overrides)
    if init_config and cfg.preset is None:  # fine-tuning: same architecture as the init checkpoint by default
        model_cfg = replace(init_config.model, **({"head": cfg.head} if cfg.head else {}), **overrides)
    else:
        model_cfg = preset(cfg.preset or "small", head=cfg.head or "chunk", **overrides)
    dropped = []
    if model_cfg.vision_points and "vision_points" not in overrides and not interface.can_triangulate():
        also = " and the hand-relative points built on them (model.relative_points)" if model_cfg.relative_points \
            else ""
        dropped.append(f"triangulated points (model.vision_points={model_cfg.vision_points}){also}: this robot "
                       f"declares no calibration for every camera of {interface.cameras}")
        model_cfg = replace(model_cfg, vision_points=0, relative_points=False)
    if model_cfg.relative_points and "relative_points" not in overrides and interface.ee_position is None:
        dropped.append("hand-relative points (model.relative_points): this robot declares no interface.ee_position")
        model_cfg = replace(model_cfg, relative_points=False)
    return model_cfg, dropped


def _inherit_geometry(interface: RobotInterface, init: PolicyConfig | None) -> tuple[RobotInterface, list[str]]:
    """Geometry the dataset does not record, taken from the --init checkpoint's interface when it is the same robot
    (same robot_type): calibration of cameras of the same name, the end effector if the state names it."""
    if init is None or init.interface.robot_type != interface.robot_type or interface.robot_type == "unknown":
        return interface, []
    src, notes, changes = init.interface, [], {}
    cal = dict(interface.calibration or {})
    for cam in interface.cameras:
        if cam not in cal and cam in (src.calibration or {}):
            cal[cam] = src.calibration[cam]
            notes.append(f"calibration of camera {cam!r}")
    if cal != (interface.calibration or {}):
        changes["calibration"] = cal
    if interface.ee_position is None and src.ee_position and all(n in interface.state_names for n in src.ee_position):
        changes["ee_position"] = list(src.ee_position)
        notes.append(f"end effector {src.ee_position}")
    return (replace(interface, **changes) if changes else interface), notes


def _keep_point_frame(policy: RFMPolicy, stats: dict, init: str, log) -> None:
    """Data without environment state (a field dataset) fine-tuning a model with triangulated points: keep the
    --init checkpoint's point normalisation (its environment-state stats, a coordinate frame in its stats.json, no
    label of this data), so the pretrained layers see points as they were trained to, not in the workspace frame."""
    frame = json.loads((Path(init) / "stats.json").read_text()).get(OBS_ENV_STATE)
    if frame:
        policy.set_stats({**stats, OBS_ENV_STATE: frame})
        log(f"--init {init}: the data has no {OBS_ENV_STATE}; triangulated points keep the init's normalisation")


def _image_size(cfg: TrainConfig, init_config: PolicyConfig | None,
                resumed: PolicyConfig | None = None) -> tuple[int, int]:
    """The model's input resolution: a resumed run's own, else --image-size, else the --init model's, else the
    preset's."""
    if resumed is not None:
        return tuple(resumed.interface.image_size)
    if cfg.image_size:
        return tuple(cfg.image_size)
    if init_config is not None and cfg.preset is None:
        return tuple(init_config.interface.image_size)
    return preset_image_size(cfg.preset)



MODEL_FIELDS = ("preset", "head", "model_overrides", "image_size")  # what decides the model a run trains


def _as_started(cfg: TrainConfig, saved: Path) -> TrainConfig:
    """`cfg` with the fields that decide the model as the run's train_config.json has them (a resumed run keeps
    its model whatever this command says; read as plain JSON: one written by an older rfm may hold other fields)."""
    try:
        started = json.loads(saved.read_text())
    except (OSError, ValueError):
        return cfg
    kept = {k: started[k] for k in MODEL_FIELDS if isinstance(started, dict) and k in started}
    if kept.get("image_size"):
        kept["image_size"] = tuple(kept["image_size"])
    return replace(cfg, **kept)


SCHEDULE_FIELDS = ("steps", "batch_size", "grad_accum", "lr", "vision_lr_scale", "weight_decay", "warmup_steps",
                   "ema_decay", "dataset", "dataset_weights", "balance", "seed")  # what a resumed run goes on with


def _resume_changes(cfg: TrainConfig, saved: Path) -> str | None:
    """A line saying which training settings this command changes from the ones the run started with: a resumed
    run takes them from the command (its model from the run), and --steps alone reshapes the learning-rate decay."""
    try:
        started = json.loads(saved.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(started, dict):
        return None
    now = cfg.to_dict()

    def same(key: str) -> bool:
        a, b = started[key], now[key]
        if key == "dataset":  # "A,B" or [A, B], relative or absolute: the same directories
            a, b = ([str(Path(d).resolve()) for d in (v.split(",") if isinstance(v, str) else v)] for v in (a, b))
        return a == b

    changed = [f"{k} {started[k]} -> {now[k]}" for k in SCHEDULE_FIELDS if k in started and k in now and not same(k)]
    if not changed:
        return None
    return (f"--resume: this command changes the run's settings ({'; '.join(changed)}); the run goes on with the new "
            f"ones (the learning-rate schedule follows steps, lr and warmup_steps)")


def _check_out(ckpt_dir: Path, cfg: TrainConfig) -> None:
    """A checkpoint already in OUT is continued (resume), replaced (overwrite), or an error: a rerun of a command
    must not silently start over and replace hours of training at its first save."""
    if cfg.overwrite or not (ckpt_dir / "config.json").is_file():
        return
    if cfg.resume:
        if (ckpt_dir / STATE_DIR).is_dir():
            return
        raise ConfigError(f"--resume (resume=True): {ckpt_dir} holds a checkpoint without training state "
                          f"({STATE_DIR}/: a copied or exported one), which cannot be continued and would be "
                          f"replaced by a new model; "
                          f"--init {ckpt_dir} fine-tunes from it into another --out, --overwrite (overwrite=True) "
                          f"replaces it")
    try:
        done = json.loads((ckpt_dir / "config.json").read_text())["meta"]["training"]["steps_done"]
        what = f"a run trained {done} steps"
    except (OSError, ValueError, KeyError, TypeError):
        what = "a checkpoint"
    raise ConfigError(f"{ckpt_dir} holds {what}: --resume (resume=True) continues it, --overwrite (overwrite=True) "
                      f"replaces it, or choose another --out")


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train a policy on a LeRobot dataset; returns the checkpoint directory (EMA weights, atomic saves). The first
    process of the run holds OUT's run lock throughout (rfm.train.run_lock)."""
    with run_lock(Path(cfg.out)) if first_process() else nullcontext():
        return _train(cfg, progress)


def _train(cfg: TrainConfig, progress: bool) -> Path:
    from accelerate import Accelerator

    from rfm.data.windows import collate_windows
    from rfm.progress import progress_bar
    from rfm.train.data import build_training_data, frame_tasks, make_sampler, sampling_weights, task_shares

    tqdm = progress_bar()

    out = Path(cfg.out)
    ckpt_dir = out / CHECKPOINT_DIR
    if first_process():  # a save killed between its two renames left the last checkpoint aside: put it back first,
        recover_interrupted(ckpt_dir)  # or --resume would start over without a word (and the run lock is held)
    _check_out(ckpt_dir, cfg)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=_mixed_precision(cfg),
                              cpu=cpu_only())
    _seed_everything(cfg.seed + accelerator.process_index)

    # --- data ---------------------------------------------------------------------------------------------------
    init_config, init_raw = read_config(cfg.init) if cfg.init else (None, {})
    # a resumed run continues its own model: built again from this command line, it differed from the saved one
    # whenever the defaults had changed since (a run started by an older rfm) or a flag was given otherwise
    resumed = read_config(ckpt_dir)[0] if cfg.resume and (ckpt_dir / STATE_DIR).is_dir() else None
    aids = build_aids(cfg.aids)  # an unknown aid or option fails before any data is read

    def prepare(datasets: list) -> dict:
        info: dict = {}
        for aid in aids:
            info.update(aid.prepare_data(datasets))
        return info

    features = tuple(dict.fromkeys(f for aid in aids for f in aid.features))
    ahead = max((aid.future_steps for aid in aids if aid.future_steps), default=None)  # frames that far ahead
    data = build_training_data(cfg.datasets, cfg.chunk_size, _image_size(cfg, init_config, resumed), cfg.cameras,
                               cfg.val_episodes, cfg.frame_cache_gb, features=features,
                               cache_copies=max(cfg.num_workers, 1) * local_processes(), prepare=prepare,
                               interface=cfg.interface, future_steps=ahead,
                               recorded=parse_kinds(cfg.recorded_episodes),
                               exclude=[cfg.exclude_episodes.get(p, []) for p in cfg.datasets])
    interface, inherited = _inherit_geometry(data.interface, init_config)
    if resumed is not None:  # the geometry its model was built for (the dataset does not record it)
        interface = replace(interface, calibration=resumed.interface.calibration or interface.calibration,
                            ee_position=resumed.interface.ee_position or interface.ee_position)
        inherited = []
    train_set = data.train_set
    for note in data.notes:
        accelerator.print(note)
    for note in inherited:
        accelerator.print(f"--init {cfg.init}: same robot ({interface.robot_type}), kept its {note}")
    if cfg.warmup_steps >= cfg.steps:
        accelerator.print(f"train.warmup_steps={cfg.warmup_steps} >= steps={cfg.steps}: the warm-up is cut to a fifth "
                          f"of the run ({cfg.steps // 5} steps); set it with rfm train --warmup-steps "
                          f"(TrainConfig.warmup_steps)")
    for rec in data.info.get("recorded", []):  # what a fleet recording contributes, and what it had
        outcomes = ", ".join(f"{n} {o}" for o, n in rec["recording"]["outcomes"].items())
        accelerator.print(f"{rec['path']}: learning from {rec['frames']} frames in {rec['episodes']} episodes "
                          f"({rec['keep']}) of a recording with {outcomes} episodes, "
                          f"{rec['recording']['corrected_frames']} corrected frames")
    action_weights = cfg.action_weights(interface.action_names)  # a misnamed action fails before any training
    tasks = frame_tasks(train_set)  # the task of every frame: sampler weights and the card's task shares
    vary = None
    if cfg.instruction_variants:
        variants = load_variants(cfg.instruction_variants)
        check_coverage(variants, data.info["tasks"], cfg.instruction_variants)
        vary = InstructionVariator(variants, cfg.variant_prob, cfg.seed)
    sizes = [len(part) for part in train_set.datasets]
    frame_weights = sampling_weights(tasks, sizes, cfg.balance, cfg.dataset_weights)
    sampler = make_sampler(frame_weights, cfg.seed, len(train_set))  # each epoch's order from (seed, epoch)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler,
                        generator=torch.Generator().manual_seed(cfg.seed),  # not the global RNG the steps draw from
                        drop_last=len(train_set) > cfg.batch_size, num_workers=cfg.num_workers,
                        collate_fn=collate_windows, persistent_workers=cfg.num_workers > 0,
                        pin_memory=torch.cuda.is_available(),
                        worker_init_fn=shield_worker_from_stop_signals if cfg.num_workers > 0 else None)
    val_loader = (DataLoader(data.val_set, batch_size=cfg.batch_size, collate_fn=collate_windows)
                  if data.val_set is not None else None)

    # --- model --------------------------------------------------------------------------------------------------
    model_cfg, dropped = _model_config(cfg, init_config, interface)
    if resumed is not None:
        changed = [f.name for f in dataclass_fields(model_cfg) if getattr(model_cfg, f.name) != getattr(resumed.model, f.name)]
        if changed or tuple(cfg.image_size or resumed.interface.image_size) != tuple(resumed.interface.image_size):
            accelerator.print(f"--resume: the run continues its own model ({resumed.model.preset}, "
                              f"{resumed.interface.image_size[0]}x{resumed.interface.image_size[1]}); this command "
                              f"would have built another ({', '.join(changed) or 'image_size'} differ), which is "
                              f"not applied (a new --out starts that one)")
        model_cfg, dropped = resumed.model, []
        changes = _resume_changes(cfg, out / "train_config.json")
        if changes:
            accelerator.print(changes)
        cfg = _as_started(cfg, out / "train_config.json")  # the train_config.json written below reproduces the run
    for note in dropped:
        accelerator.print(f"--init {cfg.init}: dropped {note}; those layers are left out of the fine-tuned model")
    policy = RFMPolicy(PolicyConfig(model=model_cfg, interface=interface), stats=data.stats)
    check_task_tokens(policy.text.tokenize, tasks, model_cfg.text_max_tokens, ", ".join(cfg.datasets))
    init_report = init_from_checkpoint(policy.net, cfg.init) if cfg.init and resumed is None else None
    if init_report and init_report["reinitialised"]:  # a new robot's projections; all of them: a mismatched init
        n_new, n_all = len(init_report["reinitialised"]), len(init_report["reinitialised"]) + len(init_report["loaded"])
        shown = ", ".join(init_report["reinitialised"][:4]) + (" ..." if n_new > 4 else "")
        accelerator.print(f"--init {cfg.init}: {n_new} of {n_all} tensors re-initialised (their shapes differ from "
                          f"this model's: {shown}); the model card lists them")
    lineage = _lineage(cfg.init, init_raw.get("meta", {})) if cfg.init else []
    if cfg.init and cfg.keep_init_stats:
        for field in ("state_names", "action_names"):
            ours, theirs = getattr(interface, field), getattr(init_config.interface, field)
            if list(ours) != list(theirs):
                raise ValueError(f"--keep-init-stats: interface.{field} of the dataset {list(ours)} differ from "
                                 f"{cfg.init}'s {list(theirs)}; the init's stats fit only the same robot")
        init_stats = json.loads((Path(cfg.init) / "stats.json").read_text())
        policy.set_stats({**data.stats, **init_stats})
    elif cfg.init and policy.net.point_token is not None and OBS_ENV_STATE not in data.stats:
        _keep_point_frame(policy, data.stats, cfg.init, accelerator.print)
    if cfg.lora_rank:
        from rfm.train.lora import apply_lora

        apply_lora(policy.net, cfg.lora_rank)
    policy.text.to(accelerator.device)
    net = policy.net
    for aid in aids:
        aid.setup(policy, data)  # heads, calibration; a ConfigError when the run cannot use the aid
    ema = (torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(
        cfg.ema_decay), use_buffers=True) if cfg.ema_decay > 0 else None)
    module = LossModule(net, aids, action_weights)
    aid_params = [p for p in module.aids.parameters() if p.requires_grad]
    groups = _param_groups(net, cfg) + ([{"params": aid_params, "weight_decay": cfg.weight_decay, "lr": cfg.lr}]
                                        if aid_params else [])
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))

    # accelerate steps a prepared scheduler once per process per optimizer step: scale so cfg.steps means steps
    n_proc = accelerator.num_processes
    scheduler = warmup_cosine(optimizer, min(cfg.warmup_steps, cfg.steps // 5) * n_proc, cfg.steps * n_proc)

    start_step, resumed_position = 0, None
    if cfg.resume and (ckpt_dir / STATE_DIR).exists():
        meta = load_training_state(ckpt_dir, net, ema.module if ema else None, optimizer, scheduler, module.aids)
        resumed_position = meta.get("data_position")
        if n_proc > 1:  # the saved generators are process 0's: each process draws its own augmentation again
            _seed_everything(cfg.seed + accelerator.process_index + 1_000_003 * meta["step"])
        if ema is not None:
            ema.n_averaged.fill_(max(1, meta["step"]))
        start_step = meta["step"]
        # the saved schedule counted each step once per process of the run that saved it; a run resumed on another
        # number of processes (a preempted job requeued onto what is free) continues it at the same step
        scheduler.last_epoch = start_step * n_proc
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)
        accelerator.print(f"resumed from {ckpt_dir} at step {start_step}")
    elif cfg.resume:
        accelerator.print(f"--resume: {ckpt_dir} holds no checkpoint yet; starting a new run")
    if ema is not None:
        ema.to(accelerator.device)

    aids_module = module.aids
    module, optimizer, loader, scheduler = accelerator.prepare(module, optimizer, loader, scheduler)

    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    logger = TrainLogger(out / "logs", enabled=accelerator.is_main_process, resume_step=start_step,
                         extra=[f"{name}_loss" for aid in aids for name in aid.loss_names])

    def save(step: int, final_loss: float | None) -> None:
        """Atomic checkpoint: EMA weights as the policy, raw weights + optimizer as training_state/."""
        if not accelerator.is_main_process:
            return
        policy.meta.update(model_id=out.name, data=data_info, training={
            **{k: v for k, v in cfg.to_dict().items() if k not in ("out",)},
            "steps_done": step, "final_loss": final_loss, "wall_time_s": round(time.time() - t0 + prior_time, 1),
            "device": str(accelerator.device), "processes": accelerator.num_processes,
            "init_reinitialised": init_report["reinitialised"] if init_report else None,
            **({"init_dropped": dropped} if dropped else {})})
        if lineage:
            policy.meta["lineage"] = lineage
        weights = plain_state_dict(ema.module if ema is not None else net)
        save_checkpoint(policy, ckpt_dir, weights_dtype=cfg.weights_dtype, state_dict=weights,
                        extra=lambda tmp: save_training_state(tmp, net, ema.module if ema else None, optimizer,
                                                              scheduler, step, {"wall_time_s": time.time() - t0
                                                                                + prior_time,
                                                                                "data_position": dict(position)},
                                                              aids_module))

    data_info = {**data.info, "balance": cfg.balance, "task_shares": task_shares(tasks, frame_weights)}
    if frame_weights is not None and "datasets" in data_info:  # each dataset's expected share of the samples
        ends = np.cumsum(sizes)
        for entry, end, n in zip(data_info["datasets"], ends, sizes):
            entry["share"] = round(float(frame_weights[end - n:end].sum() / frame_weights.sum()), 4)
    prior_time = 0.0
    if start_step:
        prior_time = float(json.loads((ckpt_dir / STATE_DIR / "state.json").read_text()).get("wall_time_s", 0))

    # --- loop ---------------------------------------------------------------------------------------------------
    state_std = torch.as_tensor(np.asarray(policy.stats.get(OBS_STATE, {}).get("std", [0.0] * interface.state_dim),
                                           dtype=np.float32))
    t0 = time.time()
    if len(loader) == 0:  # several processes, fewer full batches than processes: each would wait for ever
        raise ConfigError(f"{len(train_set)} training frames make no batch of {cfg.batch_size} for each of "
                          f"{n_proc} processes: lower --batch-size")
    # a resumed run goes on with the batch the stopped one would have drawn next: the epoch it was in, less the
    # frames it already trained on, as its checkpoint says (an older checkpoint's from its steps)
    if resumed_position:
        position = resumed_position
    else:
        epoch, batches_done = divmod(start_step * cfg.grad_accum, len(loader))
        position = {"epoch": epoch, "drawn": batches_done * cfg.batch_size * n_proc}
    sampler.skip(position["drawn"])
    batches = _infinite(loader, sampler, position, n_proc)
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not (progress and accelerator.is_main_process),
               desc="train", dynamic_ncols=True)
    window_t, window_samples, loss_avg, loss = time.time(), 0, None, float("nan")
    aux_avg: dict[str, float] = {}  # running averages of the auxiliary losses, logged as <name>_loss
    module.train()
    stopped: tuple[int, int] | None = None  # (signal, step) when SIGTERM/Ctrl-C ended the run early
    with StopSignals() as stop:
        for step in range(start_step + 1, cfg.steps + 1):
            for micro in range(cfg.grad_accum):
                batch = next(batches)
                with accelerator.accumulate(module):
                    images = batch["images"].to(accelerator.device, non_blocking=True)
                    offsets = None  # how far augmentation moved each image (points and keypoint targets move with it)
                    if cfg.augment:
                        images, offsets = augment(images, cfg.shift_pad, cfg.color_jitter, with_offsets=True)
                    instructions = (vary(batch["instruction"], (step - 1) * cfg.grad_accum + micro) if vary
                                    else batch["instruction"])
                    text, text_mask = policy.text.encode_torch(instructions, accelerator.device)
                    tb = _train_batch(batch, accelerator.device, images=images, text=text, text_mask=text_mask,
                                      image_offsets=offsets,
                                      state=state_noise(batch["state"].to(accelerator.device), state_std, cfg.state_noise))
                    for aid in aids:
                        tb = aid.transform(tb)
                    with accelerator.autocast():
                        loss_t, parts = module(tb)
                    accelerator.backward(loss_t)
                    grad_norm = (accelerator.clip_grad_norm_(module.parameters(), cfg.clip_grad)
                                 if accelerator.sync_gradients else None)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                window_samples += images.shape[0] * accelerator.num_processes
            if ema is not None:
                ema.update_parameters(net)
            total, *values = torch.stack([loss_t.detach().float(), *(v.detach().float() for v in parts.values())]).tolist()  # 1 sync
            if not math.isfinite(total):
                raise FloatingPointError(f"loss became {total} at step {step}; lower --lr or check the dataset stats")
            named = dict(zip(parts, values))
            loss = named.pop("action")  # logged apart from the auxiliary losses, so runs (and val_loss) compare
            loss_avg = loss if loss_avg is None else 0.95 * loss_avg + 0.05 * loss
            for name, v in named.items():
                aux_avg[name] = v if name not in aux_avg else 0.95 * aux_avg[name] + 0.05 * v
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                sps = window_samples / max(time.time() - window_t, 1e-9)
                val, val_mae = _validate(module, val_loader, policy, accelerator,
                                         ema.module if ema is not None else None) if val_loader and (
                    step % (cfg.log_every * 10) == 0 or step == cfg.steps) else (None, None)
                bar.set_postfix(loss=f"{loss_avg:.4f}", samples_s=f"{sps:.1f}",
                                **({"val": f"{val:.4f}", "val_mae": f"{val_mae:.4g}"} if val is not None else {}),
                                **{k: f"{v:.3f}" for k, v in aux_avg.items()})
                logger.log(step, loss=loss_avg, **{f"{k}_loss": v for k, v in aux_avg.items()}, val_loss=val, val_mae=val_mae,
                           lr=scheduler.get_last_lr()[0],
                           grad_norm=float(grad_norm) if grad_norm is not None else None, samples_per_s=sps,
                           elapsed_s=time.time() - t0 + prior_time)
                window_t, window_samples = time.time(), 0
            signum = _agreed_stop(stop.signum, accelerator)
            if step % cfg.save_every == 0 or step == cfg.steps or signum is not None:  # a stop saves its step
                accelerator.wait_for_everyone()
                save(step, loss_avg)
            if signum is not None:
                stopped = (signum, step)
                break
    _shut_down_workers(batches, loader)
    bar.close()
    logger.close()
    if stopped is not None:
        accelerator.wait_for_everyone()  # the processes leave together, after rank 0 has written the checkpoint
        accelerator.end_training()
        raise TrainingStopped(stopped[0], stopped[1], str(ckpt_dir))
    if start_step >= cfg.steps:  # nothing to do: still make sure a checkpoint exists
        save(start_step, None)
    accelerator.end_training()
    return ckpt_dir


def _train_batch(batch: dict, device, **fields) -> TrainBatch:
    """A collated window batch on `device` as a TrainBatch; `fields` (already on device) replace its own."""
    extras = {k: batch[k].to(device) for k in ("env_state", "env_valid", "future_images") if k in batch}
    base = {"images": batch["images"], "state": batch["state"], "actions": batch["actions"],
            "action_pad": batch["action_pad"], "executed": batch["executed"],
            "executed_recorded": batch["executed_recorded"]}
    base = {k: v.to(device, non_blocking=True) for k, v in base.items() if k not in fields}
    return TrainBatch(**base, **fields, extras=extras)


@torch.no_grad()
def _validate(module, loader, policy, accelerator, ema_net=None) -> tuple[float, float]:
    """(mean action loss, mean absolute action error) over the held-out episodes (no augmentation, no aids'
    transforms). The error is the predicted chunks', clipped as rfm serve clips them, against the recorded actions,
    in robot units over the steps before the episode end, as `rfm eval --dataset` measures it (rfm.eval.offline).
    `ema_net`: the EMA weights, which the checkpoint holds, are the ones scored (the raw ones scored 0.50 where the
    checkpoint's scored 0.29)."""
    inner = accelerator.unwrap_model(module)  # (not the DDP wrapper: no gradient sync, and its net may be swapped)
    trained = inner.net
    if ema_net is not None:
        inner.net = ema_net
    try:
        return _validate_net(inner, loader, policy, accelerator)
    finally:
        inner.net = trained
        inner.train()


def _validate_net(module, loader, policy, accelerator) -> tuple[float, float]:
    module.eval()
    net = module.net
    gen = torch.Generator().manual_seed(0)  # the flow head's noise: the same each time, the training RNG untouched
    total, n, abs_err, n_err = 0.0, 0, 0.0, 0
    bounds = widened_range(policy.stats.get(ACTION, {}), ACTION_LIMIT_MARGIN)  # the limits rfm serve clips to
    lo, hi = (None, None) if bounds is None else (torch.as_tensor(b, device=accelerator.device) for b in bounds)
    for batch in loader:
        text, mask = policy.text.encode_torch(batch["instruction"], accelerator.device)
        tb = _train_batch(batch, accelerator.device, text=text, text_mask=mask)
        _, parts = module(tb)
        total += parts["action"].item() * len(batch["instruction"])
        n += len(batch["instruction"])
        with accelerator.autocast():
            noise = torch.randn(tb.actions.shape, generator=gen).to(accelerator.device)
            pred = net(tb.images, tb.state, tb.text, tb.text_mask, noise).float()  # (B, H, D_a) robot units
        if lo is not None:
            pred = torch.clamp(pred, lo, hi)
        keep = ~tb.action_pad  # (B, H)
        abs_err += ((pred - tb.actions).abs() * keep[..., None]).sum().item()
        n_err += int(keep.sum().item()) * pred.shape[-1]
    return total / max(n, 1), abs_err / max(n_err, 1)
