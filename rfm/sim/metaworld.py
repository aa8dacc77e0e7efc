"""Meta-World (MuJoCo) for rfm: a runtime-observation env wrapper and scripted-expert demonstration generation.

Observations use rfm's runtime format: {"images": {cam: (H, W, 3) uint8}, "state": (4,) f32, "instruction": str}.
The state is the robot's proprioception only (hand xyz + gripper opening); goals are seen, not given.
Training seeds are < TRAIN_SEED_LIMIT; evaluation seeds start at EVAL_SEED_BASE, so they never overlap.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from rfm.constants import EVAL_SEED_BASE, STEPS_AFTER_SUCCESS
from rfm.processes import Processes
from rfm.sim import render  # noqa: F401  (sets MUJOCO_GL before mujoco is imported)
from rfm.sim.instructions import INSTRUCTIONS, instructions_for
from rfm.sim.noise import CorrelatedNoise
from rfm.sim.render import CameraRenderer, camera_projection

MT10_TASKS = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
              "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"]
# The base checkpoint's pretraining tasks, and no others (examples/pretrain_base.sh checks its data against them):
# ML45's 45 training tasks less seven (coffee-button, faucet-open, hammer, handle-press, pick-out-of-hole,
# plate-slide, sweep-into), so that adapting to a held-out task is measured from a base that never saw it.
BASE38_TASKS = [f"{t}-v3" for t in (
    "assembly", "basketball", "button-press-topdown", "button-press-topdown-wall", "button-press", "button-press-wall",
    "coffee-pull", "coffee-push", "dial-turn", "disassemble", "door-close", "door-open", "drawer-close", "drawer-open",
    "faucet-close", "handle-press-side", "handle-pull-side", "handle-pull", "lever-pull", "peg-insert-side",
    "peg-unplug-side", "pick-place", "pick-place-wall", "plate-slide-back-side", "plate-slide-back", "plate-slide-side",
    "push-back", "push", "push-wall", "reach", "reach-wall", "shelf-place", "soccer", "stick-pull", "stick-push",
    "sweep", "window-close", "window-open")]
# ML45's five test tasks: what `rfm adapt` is measured on (examples/adapt_ml45.sh)
ML45_TEST_TASKS = ["bin-picking-v3", "box-close-v3", "door-lock-v3", "door-unlock-v3", "hand-insert-v3"]
STATE_NAMES = ["hand_x", "hand_y", "hand_z", "gripper_open"]
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]
EE_POSITION = STATE_NAMES[:3]  # the hand's x, y, z: the end effector, in the cameras' world frame
# Privileged simulator state recorded beside each demo frame (observation.environment_state): where the objects and
# the goal are. Never an input to the policy; an auxiliary training target that teaches the encoder to find them.
ENV_STATE_NAMES = ["obj1_x", "obj1_y", "obj1_z", "obj2_x", "obj2_y", "obj2_z", "goal_x", "goal_y", "goal_z"]
_ENV_STATE_SLICES = (slice(4, 7), slice(11, 14), slice(36, 39))  # in Meta-World's full 39-d observation
CONTROL_HZ = 80.0  # MuJoCo timestep 2.5 ms x frame_skip 5
MAX_STEPS = 500  # Meta-World's episode limit
TRAIN_SEED_LIMIT = 100_000
NOISE_TRIES = 5  # noisy rollouts per seed before the seed counts as failed

__all__ = [
    "ACTION_NAMES",
    "BASE38_TASKS",
    "CONTROL_HZ",
    "ENV_STATE_NAMES",
    "INSTRUCTIONS",
    "ML45_TEST_TASKS",
    "MT10_TASKS",
    "STATE_NAMES",
    "Episode",
    "MetaWorldEnv",
    "camera_projections",
    "expand_tasks",
    "generate_episode",
    "generate_episodes",
    "instructions_for",
    "task_sets",
]


def task_sets() -> dict[str, list[str]]:
    """Named task sets expand_tasks accepts (any case): mt10, base38, ml45-test and mt50 (all 50 v3 tasks)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return {"mt10": list(MT10_TASKS), "base38": list(BASE38_TASKS), "ml45-test": list(ML45_TEST_TASKS),
            "mt50": list(ALL_V3_ENVIRONMENTS)}


def expand_tasks(tasks: list[str] | str) -> list[str]:
    """Task names and set names (task_sets: 'mt10' -> the ten MT10 tasks) -> task names, each once; unknown names
    get a 'did you mean'."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    from rfm.config import did_you_mean

    sets = task_sets()
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    out: list[str] = []
    for t in names:
        t = t.strip()
        if t.lower() in sets:
            out.extend(sets[t.lower()])
        elif t in ALL_V3_ENVIRONMENTS:
            out.append(t)
        else:
            raise ValueError(f"unknown Meta-World task {t!r}.{did_you_mean(t, [*ALL_V3_ENVIRONMENTS, *sets])}")
    return list(dict.fromkeys(out))


class MetaWorldEnv:
    """One Meta-World task with rendered cameras; reset(seed) -> obs, step(action) -> (obs, reward, done, info)."""

    def __init__(self, task: str, cameras: list[str], size: int = 128, seed: int = EVAL_SEED_BASE,
                 instruction: str | None = None, max_steps: int = MAX_STEPS) -> None:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        self.task = expand_tasks([task])[0]
        env = ALL_V3_ENVIRONMENTS[self.task]()
        env._freeze_rand_vec = False  # new object/goal positions at every reset...
        env.seeded_rand_vec = True  # ...drawn from the env's own seeded generator
        env._set_task_called = True
        env._partially_observable = False  # the scripted expert reads the goal from the full observation
        try:
            del env.sawyer_observation_space  # cached for the partially observable space: recompute
        except AttributeError:
            pass
        self.env = env
        self.renderer = CameraRenderer(env.model, size, cameras)
        self.cameras, self.size = list(cameras), size
        self.instruction = instruction or instructions_for(self.task)[0]
        self.max_steps = min(max_steps, MAX_STEPS)
        self.seed, self.steps, self._raw = seed, 0, None

    def _obs(self) -> dict:
        return {"images": self.renderer.render(self.env.data),
                "state": np.asarray(self._raw[:4], np.float32), "instruction": self.instruction}

    def reset(self, seed: int | None = None) -> dict:
        if seed is not None:
            self.seed = seed
        self.env.seed(int(self.seed))
        self._raw, _ = self.env.reset()
        # Meta-World moves goal sites in reset_model without recomputing positions, so the first frame would show
        # the previous episode's goal (reach's red sphere, push's target). Recompute before rendering.
        import mujoco

        mujoco.mj_forward(self.env.model, self.env.data)
        self.steps = 0
        return self._obs()

    def env_state(self) -> np.ndarray:
        """(9,) float32: object 1, object 2 and goal positions (ENV_STATE_NAMES); zeros where a task has none."""
        return np.concatenate([self._raw[s] for s in _ENV_STATE_SLICES]).astype(np.float32)

    def camera_projections(self) -> dict[str, list[list[float]]]:
        """{camera: (3, 4) matrix} taking world points to normalised image coordinates (render.camera_projection)."""
        return {c: camera_projection(self.env.model, self.env.data, c).round(6).tolist() for c in self.cameras}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, dict]:
        action = np.clip(np.asarray(action, np.float32).reshape(4), -1.0, 1.0)
        self._raw, reward, _, truncated, info = self.env.step(action)
        self.steps += 1
        success = bool(info.get("success", 0.0))
        done = success or truncated or self.steps >= self.max_steps
        return self._obs(), float(reward), done, {**info, "success": success}

    def goal_pixels(self) -> dict[str, int]:
        """Pixels each camera spends on the task's goal marker in the current frame (0 = not visible).

        A camera that shows a goal in 1-2 pixels cannot teach a policy where the goal is (reach in corner2 at 96 px),
        so pick cameras and sizes with this before collecting.
        """
        return {c: int(m.sum()) for c, m in self.goal_mask().items()}

    def goal_mask(self) -> dict[str, np.ndarray]:
        """(H, W) bool per camera: where the goal marker is drawn, found by rendering with and without it."""
        import mujoco

        m = self.env.model
        goal = [i for i in range(m.nsite) if "goal" in (mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_SITE, i) or "")]
        return self._drawn(m.site_rgba, goal)

    def object_pixels(self) -> dict[str, int]:
        """Pixels each camera spends on object 1 (the puck, the peg) in the current frame (0 = hidden, e.g. under
        the hand in a top view): a camera that loses the object while the hand grasps it cannot locate it then."""
        return {c: int(m.sum()) for c, m in self.object_mask().items()}

    def object_mask(self) -> dict[str, np.ndarray]:
        """(H, W) bool per camera: where object 1's body is drawn (its geoms hidden and shown)."""
        m = self.env.model
        name = _OBJECT_BODIES.get(self.task, "obj")
        try:
            body = m.body(name).id
        except KeyError:
            raise ValueError(f"{self.task}: no object body {name!r} to mask") from None
        return self._drawn(m.geom_rgba, [g for g in range(m.ngeom) if m.geom_bodyid[g] == body])

    def _drawn(self, rgba: np.ndarray, index: list[int]) -> dict[str, np.ndarray]:
        """Per camera, the pixels that change when the elements `index` of `rgba` (site or geom colours) are hidden."""
        shown = self.renderer.render(self.env.data)
        alpha = rgba[index, 3].copy()
        rgba[index, 3] = 0.0
        try:
            hidden = self.renderer.render(self.env.data)
        finally:
            rgba[index, 3] = alpha
        return {c: np.abs(shown[c].astype(np.int16) - hidden[c]).sum(-1) > 30 for c in self.cameras}

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state (for demonstrations and DAgger corrections)."""
        return np.clip(_expert(self.task).get_action(self._raw), -1.0, 1.0).astype(np.float32)

    def close(self) -> None:
        self.renderer.close()
        self.env.close()


_EXPERTS: dict = {}
_OBJECT_BODIES = {"peg-insert-side-v3": "peg"}  # object 1's body where it is not "obj"


def camera_projections(tasks: list[str] | str, cameras: list[str]) -> dict[str, list[list[float]]]:
    """Where world points appear in each camera: the cameras are fixed to the world, so every episode of every
    task shares these matrices (checked over MT10); computed on the first task."""
    env = MetaWorldEnv(expand_tasks(tasks)[0], cameras, size=16)
    try:
        env.reset(0)
        return env.camera_projections()
    finally:
        env.close()


def _expert(task: str):
    """Meta-World's scripted expert for `task` (one per process). Its proportional controller warns on every step
    it saturates ("Constant(s) may be too high"): intended, the env clips to [-1, 1], so that warning is dropped."""
    import warnings

    from metaworld.policies import ENV_POLICY_MAP

    warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", module=r"metaworld\.policies")
    if task not in _EXPERTS:
        _EXPERTS[task] = ENV_POLICY_MAP[task]()
    return _EXPERTS[task]


@dataclass
class Episode:
    task: str  # env name, e.g. "reach-v3"
    instruction: str  # language instruction used for this episode
    seed: int  # env seed: replaying it reproduces the episode
    frames: dict[str, np.ndarray]  # {camera: (T, H, W, 3) uint8}; frame t is seen before action t
    state: np.ndarray  # (T, 4) float32
    action: np.ndarray  # (T, 4) float32
    success: bool
    env_state: np.ndarray | None = None  # (T, 9) float32 privileged positions (ENV_STATE_NAMES)


_WORKER_ENVS: dict = {}


def jittered_start(env: MetaWorldEnv, seed: int, max_steps: int) -> dict:
    """Reset, then move the hand 0..max_steps steps in one random direction (seeded): a varied start pose.

    Every Meta-World episode starts from the same hand pose, so a policy can tell where the goal is from how far
    the hand has already moved (a copycat shortcut) and never learns to see it; demos from varied starts remove
    that shortcut. Falls back to the plain reset if the motion already solved the task.
    """
    obs = env.reset(seed)
    rng = np.random.default_rng([seed, 7])
    n = int(rng.integers(0, max_steps + 1))
    push = np.append(rng.uniform(-1.0, 1.0, 3), -1.0).astype(np.float32)  # gripper open
    for _ in range(n):
        obs, _, _, info = env.step(push)
        if info["success"]:
            return env.reset(seed)
    env.steps = 0
    return obs


def generate_episode(task: str, seed: int, cameras: list[str], size: int, max_steps: int | None = None,
                     env: MetaWorldEnv | None = None, start_jitter: int = 0,
                     steps_after_success: int = STEPS_AFTER_SUCCESS, action_noise: float = 0.0,
                     noise_correlation: float = 0.9) -> Episode:
    """Roll out the scripted expert on `seed`; success tells whether to keep it. start_jitter: see jittered_start.

    steps_after_success: expert steps kept once the task succeeds. Success is a threshold (reach: the hand within
    5 cm of the goal), so an episode cut there never shows the last few cm nor holding still at the goal.
    action_noise: std (action units) of rfm.sim.noise.CorrelatedNoise added to the executed hand motion; the
    recorded action stays the expert's. A noisy rollout that fails is retried on the same seed with fresh noise
    (up to NOISE_TRIES times), so noise changes the trajectories, not which scenes are demonstrated.
    """
    own = env is None
    env = env or MetaWorldEnv(task, cameras, size)
    try:
        for attempt in range(NOISE_TRIES if action_noise > 0 else 1):
            noise = None
            if action_noise > 0:  # hand motion only (dx, dy, dz): a noisy gripper command would drop what it holds
                noise = CorrelatedNoise(action_noise, noise_correlation, 3, [seed, 11, attempt])
            ep = _rollout(env, seed, cameras, max_steps, start_jitter, steps_after_success, noise)
            if ep.success:
                break
        return ep
    finally:
        if own:
            env.close()


def _rollout(env: MetaWorldEnv, seed: int, cameras: list[str], max_steps: int | None, start_jitter: int,
             steps_after_success: int, noise: CorrelatedNoise | None) -> Episode:
    """One expert rollout, recording frame, state and the expert's action at every step; `noise` perturbs what
    is executed."""
    obs = jittered_start(env, seed, start_jitter) if start_jitter > 0 else env.reset(seed)
    frames: dict[str, list] = {c: [] for c in cameras}
    states, actions, env_states = [], [], []
    success, after = False, 0
    for _ in range(max_steps or MAX_STEPS):
        action = env.expert_action()
        for c in cameras:
            frames[c].append(obs["images"][c])
        states.append(obs["state"])
        env_states.append(env.env_state())
        actions.append(action)
        obs, _, done, info = env.step(noise(action) if noise is not None else action)
        success = success or info["success"]
        if success:
            after += 1
            if after > steps_after_success:
                break
        elif done:
            break
    return Episode(env.task, env.instruction, int(seed), {c: np.stack(v) for c, v in frames.items()},
                   np.stack(states).astype(np.float32), np.stack(actions).astype(np.float32), success,
                   np.stack(env_states))


def _work(item: tuple) -> Episode:
    """(task, seed, cameras, size, generate_episode's keyword options) -> the episode, on this worker's env."""
    task, seed, cameras, size, options = item
    key = (task, tuple(cameras), size)
    if key not in _WORKER_ENVS:
        _WORKER_ENVS[key] = MetaWorldEnv(task, cameras, size)
    return generate_episode(task, seed, cameras, size, env=_WORKER_ENVS[key], **options)


def generate_episodes(tasks: list[str] | str, episodes_per_task: int, cameras: list[str], size: int = 128,
                      seed: int = 0, workers: int = 2, progress: bool = True,
                      max_steps: int | None = None, start_jitter: int = 0,
                      steps_after_success: int = STEPS_AFTER_SUCCESS, action_noise: float = 0.0,
                      noise_correlation: float = 0.9) -> Iterator[Episode]:
    """Yield `episodes_per_task` successful expert episodes per task, in a deterministic order.

    Seeds seed, seed+1, ... are tried per task (failures are skipped and replaced by the next seed); all stay below
    TRAIN_SEED_LIMIT. Work runs in `workers` spawned processes, each with its own renderer.
    """
    from rfm.progress import progress_bar

    tqdm = progress_bar()
    tasks = expand_tasks(tasks)
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task={episodes_per_task}: expected >= 1")
    options = {"max_steps": max_steps, "start_jitter": start_jitter, "steps_after_success": steps_after_success,
               "action_noise": action_noise, "noise_correlation": noise_correlation}
    bar = tqdm(total=episodes_per_task * len(tasks), desc="episodes", disable=not progress, dynamic_ncols=True)
    pool = Processes(workers) if workers > 1 else None
    try:
        for task in tasks:
            kept, next_seed = 0, seed
            while kept < episodes_per_task:
                n = episodes_per_task - kept + max(2, (episodes_per_task - kept) // 10)  # a small margin for failures
                seeds = list(range(next_seed, next_seed + n))
                next_seed += n
                if seeds[-1] >= TRAIN_SEED_LIMIT:
                    raise RuntimeError(f"{task}: ran out of training seeds below {TRAIN_SEED_LIMIT}")
                items = [(task, s, list(cameras), size, options) for s in seeds]
                results = pool.map(_work, items) if pool else map(_work, items)
                for ep in results:
                    if ep.success and kept < episodes_per_task:
                        kept += 1
                        bar.update(1)
                        yield ep
                if kept == 0 and next_seed - seed > 50:
                    raise RuntimeError(f"{task}: the scripted expert failed on 50 seeds in a row")
    except BaseException:  # Ctrl-C, an error, or the consumer stopped early: the workers need not finish
        if pool is not None:
            pool.terminate()
            pool = None
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.close()
