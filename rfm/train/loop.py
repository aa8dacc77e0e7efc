"""`train(cfg)`: the whole training run, top to bottom, on accelerate (CPU, one GPU, or DDP via accelerate launch)."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from rfm.checkpoint import read_config, save_checkpoint
from rfm.config import ConfigError, PolicyConfig, preset
from rfm.constants import OBS_STATE
from rfm.model.policy import RFMPolicy
from rfm.train.augment import augment, position_dims, scene_shift, state_noise
from rfm.train.config import TrainConfig
from rfm.train.init import init_from_checkpoint
from rfm.train.instructions import InstructionVariator, check_coverage, load_variants
from rfm.train.keypoints import keypoint_targets
from rfm.train.logs import TrainLogger
from rfm.train.lora import plain_state_dict
from rfm.train.state import STATE_DIR, load_training_state, save_training_state

CHECKPOINT_DIR = "checkpoint"


class LossModule(nn.Module):
    """Wraps PolicyNet so DDP sees the loss computation as forward(): (total loss, {name: part}).

    Auxiliary losses (training only): the environment-state head, and keypoint targets projected from the
    environment state through the cameras (`projections`, (N_cam, 3, 4)). `action_weights`: one weight per
    action dimension in the action loss (None: all equal).
    """

    def __init__(self, net: nn.Module, env_state_weight: float = 0.0, keypoint_weight: float = 0.0,
                 projections: np.ndarray | None = None, action_weights: list[float] | None = None) -> None:
        super().__init__()
        self.net, self.weights = net, {"env_state": env_state_weight, "keypoints": keypoint_weight}
        self.register_buffer("projections", None if projections is None else torch.as_tensor(projections),
                             persistent=False)
        self.register_buffer("action_weights", None if action_weights is None else torch.tensor(action_weights),
                             persistent=False)

    def forward(self, images, state, text, text_mask, actions, action_pad, env_state=None, env_valid=None,
                offsets=None, point_shift=None):
        kp_targets = kp_valid = None
        if self.weights["keypoints"] and env_state is not None:
            kp_targets, kp_valid = keypoint_targets(env_state, env_valid, self.projections, offsets)
        parts = self.net.losses(images, state, text, text_mask, actions, action_pad, env_state, env_valid,
                                kp_targets, kp_valid, offsets, self.action_weights, point_shift)
        total = parts["action"]
        for name, w in self.weights.items():
            if name in parts:
                total = total + w * parts[name]
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


def _lineage(init: str, meta: dict) -> list[dict]:
    """The checkpoints this one was fine-tuned from, newest first: id, version, data and steps of each."""
    here = {"model_id": meta.get("model_id", Path(init).name), "model_version": meta.get("model_version"),
            "path": str(init), "dataset": meta.get("data", {}).get("dataset"),
            "steps": meta.get("training", {}).get("steps_done")}
    return [here, *meta.get("lineage", [])]


def _infinite(loader: DataLoader):
    epoch = 0
    while True:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _scene_shift_dims(cfg: TrainConfig, state_names: list[str], points: int) -> list[int]:
    """The state dims --scene-shift moves ([] when off); a ConfigError when the model or the state cannot take it."""
    if cfg.scene_shift <= 0:
        return []
    if not points:
        raise ConfigError(f"train.scene_shift={cfg.scene_shift} needs a model with triangulated points "
                          "(model.vision_points > 0)")
    try:
        return position_dims(state_names)
    except ValueError as e:
        raise ConfigError(f"train.scene_shift: {e}") from e


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train a policy on a LeRobot dataset; returns the checkpoint directory (EMA weights, atomic saves)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from rfm.data.windows import collate_windows
    from rfm.train.data import build_training_data, frame_tasks, make_sampler, sampling_weights, task_shares

    out = Path(cfg.out)
    ckpt_dir = out / CHECKPOINT_DIR
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=_mixed_precision(cfg))
    _seed_everything(cfg.seed + accelerator.process_index)

    # --- data ---------------------------------------------------------------------------------------------------
    init_config, init_raw = read_config(cfg.init) if cfg.init else (None, {})
    points = cfg.model_overrides.get("vision_points", init_config.model.vision_points if init_config else 0)
    calibrated = bool(init_config and init_config.model.camera_projections) or "camera_projections" in cfg.model_overrides
    data = build_training_data(cfg.datasets, cfg.chunk_size, cfg.image_size, cfg.cameras, cfg.val_episodes,
                               cfg.frame_cache_gb, env_state=cfg.env_state_loss > 0, keypoints=cfg.keypoint_loss > 0,
                               projections=bool(points) and not calibrated, cache_copies=max(cfg.num_workers, 1),
                               relabel=cfg.relabel_rules())
    interface, train_set = data.interface, data.train_set
    action_weights = cfg.action_weights(interface.action_names)  # a misnamed action fails before any training
    shift_dims = _scene_shift_dims(cfg, interface.state_names, points)  # so does a scene shift with nothing to move
    tasks = frame_tasks(train_set)  # the task of every frame: sampler weights and the card's task shares
    vary = None
    if cfg.instruction_variants:
        variants = load_variants(cfg.instruction_variants)
        check_coverage(variants, data.info["tasks"], cfg.instruction_variants)
        vary = InstructionVariator(variants, cfg.variant_prob, cfg.seed)
    sizes = [len(part) for part in train_set.datasets]
    frame_weights = sampling_weights(tasks, sizes, cfg.balance, cfg.dataset_weights)
    sampler = make_sampler(frame_weights, cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                        drop_last=len(train_set) > cfg.batch_size, num_workers=cfg.num_workers,
                        collate_fn=collate_windows, persistent_workers=cfg.num_workers > 0,
                        pin_memory=torch.cuda.is_available())
    val_loader = (DataLoader(data.val_set, batch_size=cfg.batch_size, collate_fn=collate_windows)
                  if data.val_set is not None else None)

    # --- model --------------------------------------------------------------------------------------------------
    # the environment-state head exists only while it is trained (a fine-tune without the loss drops it)
    overrides = {**cfg.model_overrides, "env_state_dim": data.env_state_dim if cfg.env_state_loss > 0 else 0}
    if points and "camera_projections" not in overrides:  # triangulation: the cameras the data recorded, else the init's
        overrides["camera_projections"] = (data.projections.tolist() if data.projections is not None
                                           else init_config.model.camera_projections)
    if init_config and cfg.preset is None:  # fine-tuning: same architecture as the init checkpoint by default
        from dataclasses import replace

        model_cfg = replace(init_config.model, **({"head": cfg.head} if cfg.head else {}), **overrides)
    else:
        model_cfg = preset(cfg.preset or "small", head=cfg.head or "chunk", **overrides)
    policy = RFMPolicy(PolicyConfig(model=model_cfg, interface=interface), stats=data.stats)
    init_report = init_from_checkpoint(policy.net, cfg.init) if cfg.init else None
    lineage = _lineage(cfg.init, init_raw.get("meta", {})) if cfg.init else []
    if cfg.init and cfg.keep_init_stats:
        init_stats = json.loads((Path(cfg.init) / "stats.json").read_text())
        policy.set_stats({**data.stats, **init_stats})  # raises if the init robot's dims differ
    if cfg.lora_rank:
        from rfm.train.lora import apply_lora

        apply_lora(policy.net, cfg.lora_rank)
    policy.text.to(accelerator.device)
    net = policy.net
    ema = (torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(
        cfg.ema_decay), use_buffers=True) if cfg.ema_decay > 0 else None)
    optimizer = torch.optim.AdamW(_param_groups(net, cfg), lr=cfg.lr, betas=(0.9, 0.95))
    from transformers import get_cosine_schedule_with_warmup

    # accelerate steps a prepared scheduler once per process per optimizer step: scale so cfg.steps means steps
    n_proc = accelerator.num_processes
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, cfg.steps // 5) * n_proc,
                                                cfg.steps * n_proc)

    start_step = 0
    if cfg.resume and (ckpt_dir / STATE_DIR).exists():
        meta = load_training_state(ckpt_dir, net, ema.module if ema else None, optimizer, scheduler)
        if ema is not None:
            ema.n_averaged.fill_(max(1, meta["step"]))
        start_step = meta["step"]
        accelerator.print(f"resumed from {ckpt_dir} at step {start_step}")
    if ema is not None:
        ema.to(accelerator.device)

    module = LossModule(net, cfg.env_state_loss, cfg.keypoint_loss, data.projections, action_weights)
    module, optimizer, loader, scheduler = accelerator.prepare(module, optimizer, loader, scheduler)

    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    logger = TrainLogger(out / "logs", enabled=accelerator.is_main_process, resume=start_step > 0)

    def save(step: int, final_loss: float | None) -> None:
        """Atomic checkpoint: EMA weights as the policy, raw weights + optimizer as training_state/."""
        if not accelerator.is_main_process:
            return
        policy.meta.update(model_id=out.name, data=data_info, training={
            **{k: v for k, v in cfg.to_dict().items() if k not in ("out",)},
            "steps_done": step, "final_loss": final_loss, "wall_time_s": round(time.time() - t0 + prior_time, 1),
            "device": str(accelerator.device), "processes": accelerator.num_processes,
            "init_reinitialised": init_report["reinitialised"] if init_report else None})
        if lineage:
            policy.meta["lineage"] = lineage
        weights = plain_state_dict(ema.module if ema is not None else net)
        save_checkpoint(policy, ckpt_dir, weights_dtype=cfg.weights_dtype, state_dict=weights,
                        extra=lambda tmp: save_training_state(tmp, net, ema.module if ema else None, optimizer,
                                                              scheduler, step, {"wall_time_s": time.time() - t0
                                                                                + prior_time}))

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
    batches = _infinite(loader)
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not (progress and accelerator.is_main_process),
               desc="train", dynamic_ncols=True)
    window_t, window_samples, loss_avg, loss = time.time(), 0, None, float("nan")
    aux_avg: dict[str, float] = {}  # running averages of the auxiliary losses, logged as <name>_loss
    module.train()
    for step in range(start_step + 1, cfg.steps + 1):
        for _ in range(cfg.grad_accum):
            batch = next(batches)
            with accelerator.accumulate(module):
                images = batch["images"].to(accelerator.device, non_blocking=True)
                offsets = None  # how far augmentation moved each image (keypoint targets move with it)
                if cfg.augment:
                    images, offsets = augment(images, cfg.shift_pad, cfg.color_jitter, with_offsets=True)
                state = state_noise(batch["state"].to(accelerator.device), state_std, cfg.state_noise)
                state, point_shift = scene_shift(state, shift_dims, cfg.scene_shift)
                instructions = vary(batch["instruction"]) if vary else batch["instruction"]
                text, text_mask = policy.text.encode_torch(instructions, accelerator.device)
                with accelerator.autocast():
                    loss_t, parts = module(images, state, text, text_mask, batch["actions"], batch["action_pad"],
                                           batch.get("env_state"), batch.get("env_valid"), offsets, point_shift)
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
            val = _validate(module, val_loader, policy, accelerator) if val_loader and (
                step % (cfg.log_every * 10) == 0 or step == cfg.steps) else None
            bar.set_postfix(loss=f"{loss_avg:.4f}", samples_s=f"{sps:.1f}", **({"val": f"{val:.4f}"} if val else {}),
                            **{("env" if k == "env_state" else "kp"): f"{v:.3f}" for k, v in aux_avg.items()})
            logger.log(step, loss=loss_avg, **{f"{k}_loss": v for k, v in aux_avg.items()}, val_loss=val,
                       lr=scheduler.get_last_lr()[0],
                       grad_norm=float(grad_norm) if grad_norm is not None else None, samples_per_s=sps,
                       elapsed_s=time.time() - t0 + prior_time)
            window_t, window_samples = time.time(), 0
        if step % cfg.save_every == 0 or step == cfg.steps:
            accelerator.wait_for_everyone()
            save(step, loss_avg)
    bar.close()
    logger.close()
    if start_step >= cfg.steps:  # nothing to do: still make sure a checkpoint exists
        save(start_step, None)
    accelerator.end_training()
    return ckpt_dir


@torch.no_grad()
def _validate(module, loader, policy, accelerator) -> float:
    module.eval()
    total, n = 0.0, 0
    for batch in loader:
        text, mask = policy.text.encode_torch(batch["instruction"], accelerator.device)
        dev = accelerator.device
        loss, _ = module(batch["images"].to(dev), batch["state"].to(dev), text, mask, batch["actions"].to(dev),
                         batch["action_pad"].to(dev))
        total += loss.item() * len(batch["instruction"])
        n += len(batch["instruction"])
    module.train()
    return total / max(n, 1)
