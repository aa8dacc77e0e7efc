"""The adaptation protocol (`rfm adapt`): a few demonstrations of new tasks, a fine-tune, a closed-loop score.

One run, in OUT: (1) `demos` scripted demonstrations per task in OUT/demos (or a given dataset) holding only what a
field dataset has: frames, state, actions, instruction and camera calibration, no environment state; (2) a fine-tune
from a checkpoint, or from scratch with the same architecture and steps, with no simulator-privileged training aid,
into OUT/checkpoint; (3) `episodes` closed-loop episodes per task on unseen seeds, into OUT/eval.json (what
`rfm eval --out` writes), executing `action_steps` actions per chunk (default half a chunk, as the robot SDK's
ChunkExecutor does on a robot; with several, the first is scored into eval.json and each other K into
eval-k{K}.json; with `select_episodes`, each task's K is chosen on a validation block of other seeds and the
chosen modes' scores go into eval-selected.json); OUT/adapt.json sums it up. A finished stage is reused, so
rerunning continues a run.

Normalisation uses the demonstrations' own state/action stats (rfm train's default, not --keep-init-stats): they
are right for whatever robot recorded them, where the init's are right only for the robot it was trained on, and
10 demos pin down a mean and spread. A model with triangulated points keeps the init's point frame (rfm.train.loop).
The episodes' env task and seed stay in the dataset's episode metadata as provenance; training never reads them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rfm.config import PRESETS, ConfigError, did_you_mean
from rfm.eval.card import task_rates

SCRATCH = "scratch"
STEPS_PER_TASK = 2000  # fine-tuning steps per task by default: tasks fine-tuned together get each one's budget alone
START_JITTER = 15  # random hand steps before each demo, as the default checkpoint's demos (examples/default_checkpoint.sh)
PLAN_FILE, EVAL_FILE, DEMOS_DIR = "adapt.json", "eval.json", "demos"
RERUNNABLE = ("out", "episodes", "workers", "num_workers", "max_steps", "action_steps",
              "select_episodes")  # may change between runs of one OUT
SELECTED_FILE = "eval-selected.json"
VALIDATION_SEED = 2_000_000  # first seed of the block execution modes are chosen on; the score's block starts at 1e6


def default_like() -> Path:
    """checkpoints/default at the repository root: the architecture and cameras `scratch` copies."""
    import rfm

    return Path(rfm.__file__).resolve().parents[1] / "checkpoints" / "default"


@dataclass
class AdaptConfig:
    """One adaptation run: which tasks, from which checkpoint, with how many demos, steps and test episodes."""

    tasks: list[str]  # Meta-World env tasks, fine-tuned together (one task: adapting to it alone)
    init: str  # checkpoint directory to fine-tune, or "scratch"
    out: str  # run directory: demos/, checkpoint/, eval.json, adapt.json
    demos: int = 10  # scripted demonstrations per task (not with dataset)
    steps: int | None = None  # fine-tuning steps, scratch as many (None: STEPS_PER_TASK per task, so together = alone)
    episodes: int = 50  # evaluation episodes per task, on seeds no demo used
    dataset: str | None = None  # demonstrations to use instead of generating them (no environment state)
    preset: str | None = None  # scratch: a model preset instead of `like`'s model config
    like: str | None = None  # scratch: checkpoint whose model config and cameras to copy (None: checkpoints/default)
    cameras: list[str] | None = None  # demo cameras (None: the init's, or like's)
    size: int | None = None  # demo image size (None: the init's model input, or like's)
    start_jitter: int = START_JITTER
    batch_size: int = 8
    lr: float = 3e-4
    seed: int = 0  # first demo seed and the training seed
    workers: int = 2  # processes generating demos and evaluating
    num_workers: int = 1  # DataLoader workers while fine-tuning
    max_steps: int | None = None  # evaluation episode step limit (None: Meta-World's 500)
    action_steps: int | list[int] | None = None  # actions executed per chunk in evaluation, one K or several to
    # score each (None: half a chunk, as on a robot; the first K is the run's score)
    select_episodes: int = 0  # with several K: choose each task's on this many validation episodes (0: do not)
    world_model: float = 0.0  # weight of the world-model objective while fine-tuning (0: off); frames and actions only
    world_model_target: str = "auto"  # its target: keypoints of the future frames, or their pooled features
    world_model_horizon: int | None = None  # how many control steps ahead (None: one chunk)

    def __post_init__(self) -> None:
        from rfm.sim.metaworld import expand_tasks

        self.tasks = expand_tasks(self.tasks)
        if isinstance(self.action_steps, int):
            self.action_steps = [self.action_steps]
        if self.action_steps is not None:
            self.action_steps = list(dict.fromkeys(int(k) for k in self.action_steps)) or None
        if self.steps is None:
            self.steps = STEPS_PER_TASK * len(self.tasks)
        for name in ("demos", "steps", "episodes", "batch_size", "workers"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected an integer >= 1")
        checks = [(self.lr > 0, "lr", "a positive number"), (self.num_workers >= 0, "num_workers", ">= 0"),
                  (0 <= self.start_jitter <= 100, "start_jitter", "in [0, 100] steps"),
                  (self.max_steps is None or self.max_steps >= 1, "max_steps", ">= 1"),
                  (self.action_steps is None or min(self.action_steps) >= 1, "action_steps", "K >= 1 each"),
                  (0 <= self.select_episodes < 1000, "select_episodes", "in [0, 1000)"),
                  (self.size is None or self.size >= 8, "size", ">= 8 pixels"), (self.seed >= 0, "seed", ">= 0"),
                  (self.world_model >= 0, "world_model", "a weight >= 0")]
        for ok, name, expected in checks:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected {expected}")
        if self.select_episodes and len(self.action_steps or []) < 2:
            raise ConfigError(f"select_episodes={self.select_episodes}: choosing an execution mode needs two or more "
                              f"action_steps to choose from (e.g. --action-steps 8,4,2)")
        if self.init != SCRATCH:
            if not (Path(self.init) / "config.json").is_file():
                raise ConfigError(f"init={self.init}: no checkpoint there (no config.json); give a checkpoint "
                                  f"directory or {SCRATCH!r}")
            if self.preset or self.like:
                raise ConfigError(f"preset and like choose the architecture of {SCRATCH!r}; a fine-tune keeps "
                                  f"{self.init}'s")
        elif not (Path(self.reference) / "config.json").is_file():
            raise ConfigError(f"like={self.reference}: no checkpoint there (no config.json) to copy the "
                              f"architecture of")
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"preset={self.preset!r}: expected one of {sorted(PRESETS)}."
                              f"{did_you_mean(self.preset, list(PRESETS))}")
        if self.dataset is not None and not Path(self.dataset).is_dir():
            raise ConfigError(f"dataset={self.dataset}: dataset directory not found")

    @property
    def reference(self) -> str:
        """The checkpoint whose interface the demos follow: the init, or for scratch the one it copies."""
        return self.init if self.init != SCRATCH else str(self.like or default_like())

    def plan(self) -> dict:
        """What makes a run this run: every setting but those a rerun may change (RERUNNABLE)."""
        return {k: v for k, v in asdict(self).items() if k not in RERUNNABLE}


def adapt(cfg: AdaptConfig, progress: bool = True, log=print) -> dict:
    """Demos, fine-tune, evaluation (each reused when done); writes and returns OUT/adapt.json's record."""
    from rfm.checkpoint import read_config

    out = Path(cfg.out)
    _check_plan(out, cfg)
    ref_config, ref_raw = read_config(cfg.reference)
    chunk = ref_config.interface.chunk_size
    too_many = [k for k in cfg.action_steps or [] if k > chunk]
    if too_many:  # before the demos and the fine-tune, not after them
        raise ConfigError(f"action_steps={too_many[0]}: more than {cfg.reference}'s chunk of {chunk} actions")
    record = {"tasks": cfg.tasks, "init": _source(cfg, ref_config, ref_raw), "plan": cfg.plan()}
    demos = _demos(cfg, ref_config.interface, progress, log)
    out.mkdir(parents=True, exist_ok=True)
    (out / PLAN_FILE).write_text(json.dumps({**record, "demos": demos, "status": "training"}, indent=2))
    ckpt = _fine_tune(cfg, ref_config, demos["dataset"], progress, log)
    paths = {k: _eval_path(cfg, k, i) for i, k in enumerate(_action_steps(cfg, ckpt))}
    modes = {k: _evaluate(cfg, ckpt, k, path, progress, log) for k, path in paths.items()}
    results = next(iter(modes.values()))
    if cfg.select_episodes:
        record["selected"] = _select(cfg, ckpt, modes, progress, log)
    else:
        (out / SELECTED_FILE).unlink(missing_ok=True)  # a choice made by an earlier run of other modes
    training = read_config(ckpt)[1]["meta"]["training"]
    record.update(demos=demos, steps=cfg.steps, checkpoint=str(ckpt), stats="dataset", training={
        k: training.get(k) for k in ("batch_size", "lr", "steps_done", "final_loss", "wall_time_s", "device")},
        eval=results, eval_file=str(out / EVAL_FILE), by_action_steps={
            str(k): {"mean_success_rate": r["mean_success_rate"], "eval_file": str(paths[k]),
                     "success_rate": task_rates(r)}
            for k, r in modes.items()}, status="done")
    (out / PLAN_FILE).write_text(json.dumps(record, indent=2))
    return record


def _check_plan(out: Path, cfg: AdaptConfig) -> None:
    """A rerun into an existing OUT must be the same run (tasks, init, demos, steps, ...), else its stages differ."""
    try:
        before = json.loads((out / PLAN_FILE).read_text()).get("plan", {})
    except (OSError, ValueError):
        return
    changed = [f"{k}={before[k]!r}, now {v!r}" for k, v in cfg.plan().items() if k in before and before[k] != v]
    if changed:
        raise ConfigError(f"{out / PLAN_FILE}: this run was made with other settings ({'; '.join(changed)}); "
                          f"use another out directory")


def _source(cfg: AdaptConfig, config, raw: dict) -> dict:
    """What the run started from: the init checkpoint's path, id and version, or scratch and what it copies."""
    meta = raw.get("meta", {})
    ident = {"model_id": meta.get("model_id"), "model_version": meta.get("model_version")}
    if cfg.init != SCRATCH:
        return {"path": cfg.init, **ident}
    return {"path": SCRATCH, "like": {"path": cfg.reference, **ident},
            "preset": cfg.preset or config.model.preset, "model_config": "preset" if cfg.preset else "like"}


def _demos(cfg: AdaptConfig, itf, progress: bool, log) -> dict:
    """The demonstration dataset: --dataset, OUT/demos when already generated, else generated there now."""
    from rfm.sim.generate import write_metaworld
    from rfm.sim.render import CAMERAS

    cameras = cfg.cameras or list(itf.cameras)
    size = cfg.size or int(itf.image_size[0])
    unknown = [c for c in cameras if c not in CAMERAS]
    if unknown and cfg.dataset is None:
        raise ConfigError(f"camera {unknown[0]!r} (of {cfg.reference}) is not a Meta-World camera: give cameras "
                          f"from {list(CAMERAS)}")
    path = Path(cfg.dataset) if cfg.dataset else Path(cfg.out) / DEMOS_DIR
    generated = cfg.dataset is None and not path.exists()
    if cfg.dataset:
        log(f"== demos: {path}, as given")
    elif not generated:
        log(f"== {path}: demos done, reused")
    else:
        log(f"== {cfg.demos} demos per task of {', '.join(cfg.tasks)} -> {path} ({','.join(cameras)} at {size} px)")
        write_metaworld(path, cfg.tasks, cfg.demos, cameras, size, seed=cfg.seed, workers=cfg.workers,
                        use_videos=False, progress=progress, start_jitter=cfg.start_jitter, env_state=False)
    info = _check_demos(path, cfg, cameras, expect=None if cfg.dataset else cfg.demos)
    return {"dataset": str(path), "generated": generated, "per_task": None if cfg.dataset else cfg.demos,
            "cameras": cameras, "size": size, "start_jitter": None if cfg.dataset else cfg.start_jitter, **info}


def _check_demos(path: Path, cfg: AdaptConfig, cameras: list[str], expect: int | None) -> dict:
    """Episodes and frames of the demos, after checking they fit this run: only field data (no environment
    state), the cameras, each task's instruction (the one evaluation gives), `expect` episodes per task."""
    from rfm.constants import OBS_ENV_STATE
    from rfm.data.reader import LeRobotDataset
    from rfm.sim.instructions import instructions_for
    from rfm.sim.metaworld import ACTION_NAMES, STATE_NAMES

    ds = LeRobotDataset(path)
    if OBS_ENV_STATE in ds.features:
        raise ConfigError(f"{path}: has {OBS_ENV_STATE}, a simulator label a field dataset lacks; adapt from demos "
                          f"without it (rfm data generate metaworld --no-env-state)")
    missing = [c for c in cameras if c not in ds.cameras]
    if missing:
        raise ConfigError(f"{path}: no camera {missing[0]!r}; it has {ds.cameras}, the model takes {cameras}")
    for what, have, sim in (("state", ds.state_names, STATE_NAMES), ("action", ds.action_names, ACTION_NAMES)):
        if len(have) != len(sim):  # evaluation runs the Meta-World Sawyer: checked before any training
            raise ConfigError(f"{path}: {len(have)} {what} values ({', '.join(have[:6])}{' ...' if len(have) > 6 else ''}"
                              f"), but the Meta-World robot the adaptation is evaluated on has {len(sim)} "
                              f"({', '.join(sim)}): give demonstrations of that robot")
    for task in cfg.tasks:
        text = instructions_for(task)[0]
        if text not in ds.tasks:
            raise ConfigError(f"{path}: no episode instructed {text!r} ({task}'s instruction, which evaluation "
                              f"gives); its instructions: {ds.tasks[:5]}")
    if expect is not None:
        counts = {t: sum(ep.meta.get("env_task") == t for ep in ds.episodes) for t in cfg.tasks}
        if any(n != expect for n in counts.values()) or ds.num_episodes != expect * len(cfg.tasks):
            raise ConfigError(f"{path}: holds {ds.num_episodes} episodes ({counts}), not {expect} per task; "
                              f"remove it or use another out directory")
    return {"episodes": ds.num_episodes, "frames": ds.num_frames, "env_state": False}


def _train_config(cfg: AdaptConfig, ref_config, dataset: str):
    """The fine-tune's TrainConfig: the init's architecture (scratch: like's, or --preset), no simulator training aid
    (the world-model objective, when asked, reads only frames and actions)."""
    from rfm.train.config import TrainConfig

    scratch = cfg.init == SCRATCH
    arch: dict = {}
    if scratch:
        model = ref_config.model.to_dict()
        name, head = model.pop("preset"), model.pop("head")
        arch = {"preset": cfg.preset or name, "head": head, "image_size": list(ref_config.interface.image_size),
                "model_overrides": {} if cfg.preset else model}
    base = {"dataset": dataset, "out": cfg.out, "init": None if scratch else cfg.init, **arch,
            "chunk_size": ref_config.interface.chunk_size, "cameras": cfg.cameras or list(ref_config.interface.cameras),
            "steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "warmup_steps": 200, "ema_decay": 0.995,
            "balance": "tasks", "aids": {"world_model": {"weight": cfg.world_model, "target": cfg.world_model_target,
                                                         "horizon": cfg.world_model_horizon}} if cfg.world_model else {},
            "num_workers": cfg.num_workers, "frame_cache_gb": 2.0,
            "save_every": min(500, cfg.steps), "log_every": min(50, cfg.steps), "seed": cfg.seed, "resume": True}
    return TrainConfig.from_dict(base, "rfm adapt")


def _fine_tune(cfg: AdaptConfig, ref_config, dataset: str, progress: bool, log) -> Path:
    """OUT/checkpoint after cfg.steps steps: reused when done, continued when interrupted."""
    from rfm.checkpoint import read_config
    from rfm.train.loop import CHECKPOINT_DIR, train

    ckpt = Path(cfg.out) / CHECKPOINT_DIR
    done = 0
    if (ckpt / "config.json").is_file():
        done = int(read_config(ckpt)[1].get("meta", {}).get("training", {}).get("steps_done") or 0)
    if done == cfg.steps:
        log(f"== {ckpt}: {done} steps done, reused")
        return ckpt
    tc = _train_config(cfg, ref_config, dataset)
    log(f"== fine-tune {cfg.init} for {cfg.steps} steps on {dataset}{f' from step {done}' if done else ''}")
    return train(tc, progress=progress)


def _action_steps(cfg: AdaptConfig, ckpt: Path) -> list[int]:
    """The actions per chunk to score, the run's own first: cfg's, else half the checkpoint's chunk (the SDK's)."""
    from rfm.checkpoint import read_config
    from rfm.client.executor import half_chunk

    return cfg.action_steps or [half_chunk(read_config(ckpt)[0].interface.chunk_size)]


def _eval_path(cfg: AdaptConfig, steps: int, index: int) -> Path:
    """OUT/eval.json for the first K scored, OUT/eval-k{K}.json for each other."""
    return Path(cfg.out) / (EVAL_FILE if index == 0 else f"eval-k{steps}.json")


def _evaluate(cfg: AdaptConfig, ckpt: Path, steps: int, path: Path, progress: bool, log, episodes: int | None = None,
              seed: int | None = None) -> dict:
    """The score at `steps` actions per chunk, in `path`: reused when that file was measured on these weights with
    these episodes, seeds and actions per chunk, else measured now. A validation block (`seed`) stays off the card."""
    from rfm.eval.card import record_in_card, weights_digest
    from rfm.eval.evaluate import evaluate, format_table
    from rfm.sim.metaworld import EVAL_SEED_BASE, MAX_STEPS

    episodes, first = episodes or cfg.episodes, seed or EVAL_SEED_BASE
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        before = {}
    same = (before.get("weights_sha256") == weights_digest(ckpt) and list(before.get("tasks", {})) == cfg.tasks
            and all(r["episodes"] == episodes for r in before["tasks"].values())
            and min(before.get("seeds") or [0]) == first
            and before.get("max_steps") == (cfg.max_steps or MAX_STEPS)
            and before.get("action_steps") == steps) if before else False
    if same:
        log(f"== {path}: measured on these weights, reused")
        return before
    log(f"== evaluate {ckpt} on {episodes} {'validation' if seed else 'unseen'} episodes per task, {steps} actions "
        f"per chunk")
    results = evaluate(None, cfg.tasks, episodes, seed=first, max_steps=cfg.max_steps, workers=cfg.workers,
                       checkpoint=str(ckpt), progress=progress, action_steps=steps)
    path.write_text(json.dumps(results, indent=2))
    if seed is None:
        record_in_card(ckpt, results, source=str(path))
    log(format_table(results))
    return results


def _recommend(ckpt: Path, chosen: dict[str, int], modes: list[int], episodes: int) -> None:
    """Record the chosen modes in the checkpoint's card (meta.execution, rfm.runtime.execution): keyed by each
    task's instruction, the default the mode chosen most often (ties: the first listed), so a robot's SDK runs the
    fine-tune as it was validated."""
    from rfm.checkpoint import update_meta
    from rfm.sim.instructions import instructions_for

    counts = [sum(k == m for k in chosen.values()) for m in modes]
    update_meta(ckpt, "execution", {
        "action_steps": modes[counts.index(max(counts))],
        "by_instruction": {instructions_for(t)[0]: k for t, k in chosen.items()},
        "source": f"rfm adapt: chosen of {modes} actions per request on {episodes} validation episodes per task "
                  f"(seeds from {VALIDATION_SEED})"})


def _select(cfg: AdaptConfig, ckpt: Path, modes: dict[int, dict], progress: bool, log) -> dict:
    """Each task's execution mode, chosen on `select_episodes` validation episodes (seeds from VALIDATION_SEED,
    which the score never uses; ties go to the K listed first), and the score of the chosen modes on the test
    episodes, composed from each K's results into OUT/eval-selected.json (what `rfm compare` reads)."""
    val = {k: _evaluate(cfg, ckpt, k, Path(cfg.out) / f"val-k{k}.json", progress, log,
                        episodes=cfg.select_episodes, seed=VALIDATION_SEED) for k in modes}
    chosen = {t: max(modes, key=lambda k: (val[k]["tasks"][t]["success_rate"], -list(modes).index(k)))
              for t in cfg.tasks}
    first = next(iter(modes.values()))
    tasks = {t: {**modes[k]["tasks"][t], "action_steps": k} for t, k in chosen.items()}
    composed = {**first, "tasks": tasks, "action_steps": None, "action_steps_by_task": chosen,
                "mean_success_rate": sum(r["success_rate"] for r in tasks.values()) / len(tasks),
                "selected_on": {"seed": VALIDATION_SEED, "episodes": cfg.select_episodes}}
    for key in ("jerk_switch", "jerk_within", "wall_time_s"):  # measured per execution mode, not for the mixture
        composed.pop(key, None)
    path = Path(cfg.out) / SELECTED_FILE
    path.write_text(json.dumps(composed, indent=2))
    _recommend(ckpt, chosen, list(modes), cfg.select_episodes)
    log("== execution mode per task, chosen on validation episodes: " + ", ".join(
        f"{t} {k} ({val[k]['tasks'][t]['success_rate'] * 100:.0f}%)" for t, k in chosen.items())
        + f"; recorded on {ckpt}'s card, which the SDK's ChunkExecutor follows")
    return {"action_steps": chosen, "mean_success_rate": composed["mean_success_rate"], "eval_file": str(path),
            "success_rate": task_rates(composed),
            "validation": {str(k): task_rates(v) for k, v in val.items()},
            "validation_seed": VALIDATION_SEED, "validation_episodes": cfg.select_episodes}
