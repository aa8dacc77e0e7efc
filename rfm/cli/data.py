"""`rfm data`: generate (Meta-World demonstrations), check-tasks, info, view (PNG contact sheet), import-hdf5."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rfm.cli.args import comma_list, positive_int
from rfm.cli.errors import CLIError, require_checkpoint
from rfm.constants import STEPS_AFTER_SUCCESS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets: generate, check-tasks, info, view, import-hdf5")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    g = dsub.add_parser("generate", help="generate demonstrations in simulation into a LeRobot v3.0 dataset")
    g.add_argument("source", choices=["metaworld"], help="simulator")
    g.add_argument("--tasks", type=comma_list, required=True, help="comma-separated env tasks, e.g. reach-v3,button-press-topdown-v3, or sets: mt10, base38, "
                        "ml45-test, mt50")
    g.add_argument("--episodes", type=int, default=50, help="episodes per task (only successful ones are written)")
    g.add_argument("--cameras", type=comma_list, default=["corner", "topview"],
                   help="comma-separated camera names (default corner,topview: at 128 px they show reach's goal in "
                        "about 10 and 16 pixels; corner2 shows it in 4, gripperPOV often not at all)")
    g.add_argument("--size", type=int, default=128, help="rendered image height and width")
    g.add_argument("--out", required=True, help="output dataset directory (must not exist unless --overwrite)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=positive_int, default=2)
    g.add_argument("--images", choices=["video", "image"], default="image",
                   help="store cameras as lossless PNG (default) or mp4. Video's 4:2:0 chroma erases details of "
                        "a pixel or two (Meta-World's reach goal is one): fine for viewing, not for small-image training")
    g.add_argument("--vcodec", default=None, help="h264 | av1 (default: the first PyAV can encode, h264 first)")
    g.add_argument("--start-jitter", type=int, default=0, metavar="STEPS",
                   help="start each episode after 0..STEPS random hand steps. Meta-World always starts from one pose, "
                        "so a policy can infer the goal from how far the hand has moved instead of seeing it; varied "
                        "starts remove that shortcut (15 is a good value)")
    g.add_argument("--steps-after-success", type=int, default=STEPS_AFTER_SUCCESS, metavar="STEPS",
                   help=f"expert steps kept after the task succeeds (default {STEPS_AFTER_SUCCESS}). Success is a "
                        "threshold (reach: hand within 5 cm of the goal); a longer tail shows the last cm and holding "
                        "still at the goal")
    g.add_argument("--action-noise", type=float, default=0.0, metavar="STD",
                   help="add Gaussian noise of this std (action units; 1 = the largest step) to the hand motion the "
                        "expert executes, recording the expert's own action (DART): demos that show recovering from "
                        "slips. A failed noisy rollout is retried on the same seed (default 0: off)")
    g.add_argument("--noise-correlation", type=float, default=0.9, metavar="RHO",
                   help="step-to-step correlation of --action-noise in [0, 1): 0 is white noise, 0.9 drifts the hand "
                        "off the path for ~10 steps (default 0.9)")
    g.add_argument("--no-env-state", action="store_true",
                   help="leave out the simulator's object and goal positions (observation.environment_state): a "
                        "dataset with only what a real robot records (frames, state, actions, instruction)")
    g.add_argument("--overwrite", action="store_true")
    g.set_defaults(func=run_generate)

    c = dsub.add_parser("check-tasks", help="check that datasets hold only a Meta-World task set's tasks "
                                            "(e.g. a base model's pretraining data)")
    c.add_argument("datasets", type=comma_list, nargs="?", default=[],
                   help="comma-separated LeRobot dataset directories (none: check --init alone)")
    c.add_argument("--tasks", required=True,
                   help="the allowed tasks: names or sets (base38, mt10, ml45-test, mt50), comma-separated")
    c.add_argument("--init", type=comma_list, default=[], metavar="CHECKPOINT",
                   help="also check the checkpoint(s) the run starts from: the tasks its model card and its lineage "
                        "say it was trained on")
    c.add_argument("--out", default=None, metavar="JSON", help="write the check's result here")
    c.add_argument("--record", default=None, metavar="CHECKPOINT",
                   help="record the passed check in this checkpoint's model card (meta.data.task_check)")
    c.set_defaults(func=run_check_tasks)

    i = dsub.add_parser("info", help="summary of a dataset: episodes, frames, tasks, features, fps, size")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=run_info)

    v = dsub.add_parser("view", help="PNG contact sheet of an episode's frames plus state/action plots")
    v.add_argument("path")
    v.add_argument("--episode", type=int, default=0)
    v.add_argument("--out", required=True, help="output PNG path")
    v.add_argument("--frames", type=positive_int, default=8, help="frames shown per camera")
    v.set_defaults(func=run_view)

    h = dsub.add_parser("import-hdf5", help="import ALOHA or robomimic HDF5 demonstrations")
    h.add_argument("paths", nargs="+", help="HDF5 files or directories of them")
    h.add_argument("--out", required=True)
    h.add_argument("--fps", type=int, required=True, help="control rate of the recordings")
    h.add_argument("--task", required=True, help="language instruction for every episode")
    h.add_argument("--layout", choices=["auto", "aloha", "robomimic"], default="auto",
                   help="aloha: one file per episode with /observations/qpos, /observations/images/<camera> and "
                        "/action; robomimic: one file with data/demo_N/obs/<key> (images: <camera>_image) and "
                        "data/demo_N/actions; auto: whichever the file is")
    h.add_argument("--cameras", type=comma_list, default=None, help="cameras to keep (default: all)")
    h.add_argument("--state-keys", type=comma_list, default=None, help="robomimic: low-dim obs keys forming the state")
    h.add_argument("--robot-type", default="unknown")
    h.add_argument("--images", choices=["video", "image"], default="video")
    h.add_argument("--vcodec", default=None, help="h264 | av1 (default: h264 where PyAV has it)")
    h.add_argument("--overwrite", action="store_true")
    h.set_defaults(func=run_import)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def _check_new_output(out: str, overwrite: bool) -> None:
    """Before any work: the writer refuses a non-empty --out at the end, after the episodes were made."""
    path = Path(out)
    if path.exists() and not overwrite and (not path.is_dir() or any(path.iterdir())):
        raise CLIError(f"--out {out} already exists and is not empty: choose a new directory, or pass --overwrite "
                       f"to replace it")


def run_generate(args: argparse.Namespace) -> int:
    from rfm.sim.generate import write_metaworld

    _check_new_output(args.out, args.overwrite)
    if args.episodes < 1 or args.size < 8:
        raise CLIError(f"--episodes must be >= 1 and --size >= 8 (got {args.episodes}, {args.size})")
    if not 0 <= args.start_jitter <= 100:
        raise CLIError(f"--start-jitter must be in [0, 100] steps (got {args.start_jitter})")
    if not 0 <= args.steps_after_success <= 200:
        raise CLIError(f"--steps-after-success must be in [0, 200] steps (got {args.steps_after_success})")
    if not 0.0 <= args.action_noise <= 1.0 or not 0.0 <= args.noise_correlation < 1.0:
        raise CLIError(f"--action-noise must be in [0, 1] and --noise-correlation in [0, 1) "
                       f"(got {args.action_noise}, {args.noise_correlation})")
    res = write_metaworld(args.out, args.tasks, args.episodes, args.cameras, args.size, seed=args.seed,
                          workers=args.workers, use_videos=args.images == "video", vcodec=args.vcodec,
                          overwrite=args.overwrite, start_jitter=args.start_jitter,
                          steps_after_success=args.steps_after_success, action_noise=args.action_noise,
                          noise_correlation=args.noise_correlation, env_state=not args.no_env_state)
    for task, tried in res["tried"].items():
        print(f"{task}: kept {res['kept'].get(task, 0)}/{tried} episodes (successful ones only)")
    print(f"wrote {res['episodes']} episodes, {res['frames']} frames at {res['fps']} Hz to {res['out']}")
    return 0


def run_check_tasks(args: argparse.Namespace) -> int:
    from rfm.sim.task_check import TaskCheckError, check_tasks, record_check

    try:
        if not args.datasets and not args.init:
            raise CLIError("check-tasks: give dataset directories, --init CHECKPOINT, or both")
        for ckpt in args.init:
            require_checkpoint(ckpt, "--init")
        result = check_tasks(args.datasets, args.tasks, args.init)
    except TaskCheckError as e:
        raise CLIError(str(e)) from e
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.record:
        require_checkpoint(args.record, "--record")
        record_check(args.record, result)
    found = sorted({t for d in result["datasets"] for t in d["env_tasks"]})
    print(f"ok: {len(found)} of the {len(result['allowed'])} allowed tasks in {', '.join(args.datasets + args.init)}, "
          f"no other task{f'; recorded in {args.record}' if args.record else ''}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from rfm.data.reader import LeRobotDataset
    from rfm.data.view import summary

    info = summary(LeRobotDataset(args.path, check_finite=False))  # a NaN is reported here, not refused
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for k, v in info.items():
        if k == "features":
            print(f"{k:<{width}}")
            for fk, fv in v.items():
                print(f"  {fk:<{width + 14}} {fv}")
            continue
        if k == "tasks":
            v = f"{len(v)}: " + "; ".join(repr(t) for t in v[:10]) + (" ..." if len(v) > 10 else "")
        if k == "unchanging":  # a stuck sensor or an unused joint: worth seeing before a fine-tune
            v = "; ".join(f"{part}: {', '.join(names)}" for part, names in v.items() if names) or "none"
        if k == "recording":  # what a fine-tune on it would learn from (rfm train --recorded-episodes)
            v = _recording_line(v)
        if k == "non_finite":  # training refuses the dataset: say so, and how to mend it
            v = "REFUSED for training: " + " | ".join(v)
        print(f"{k:<{width}}  {v}")
    return 0


def _recording_line(rec: dict) -> str:
    outcomes = ", ".join(f"{n} {o}" for o, n in rec["outcomes"].items())
    ended = ", ".join(f"{why} {n}" for why, n in rec.get("ended_by", {}).items())
    parts = (f" (recorded as {rec['parts']} episodes: some were cut, at lost ticks, a server's restart or a length "
             f"cap, and each part counts with the robot's outcome)") if rec.get("parts") else ""
    return (f"episodes by outcome: {outcomes}{parts}; {rec['corrected_frames']} corrected frames in "
            f"{rec['episodes_with_corrections']} episodes; {rec['sessions']} sessions"
            + (f"; ended by {ended}" if ended else "")
            + (f"; {rec['start_mid_episode']} start mid-episode (their first ticks were not recorded)"
               if rec.get("start_mid_episode") else "")
            + ("; by model: " + ", ".join(f"{m} ({', '.join(f'{n} {o}' for o, n in by.items())})"
                                          for m, by in rec["models"].items()) if rec.get("models") else "")
            + _timing_words(rec.get("timing")))


def _timing_words(timing: dict | None) -> str:
    """The recording's real tick timing, where the robots said when they ticked (the tick_time column)."""
    if not timing or not timing["timed_episodes"]:
        return ""
    from rfm.data.view import listed_episodes

    eps = timing["episodes_with_late_ticks"]
    late = (f"{timing['late_ticks']} late ticks (more than {timing['late_after_periods']:g} control periods after "
            f"the one before) in episodes {listed_episodes(eps)}" if eps else "no late ticks")
    longest, rate = timing["longest_interval_ms"], timing["median_rate_hz"]
    return (f"; timing: {late}"
            + (f", longest interval {longest:g} ms (a period is {1000 / timing['fps']:g} ms)" if longest else "")
            + (f", median rate {rate:g} Hz" if rate else "")
            + (f", {timing['early_ticks']} early ticks (within {timing['early_within_periods']:g} of a period: a loop "
               f"catching up)" if timing.get("early_ticks") else "")
            + (f", {timing['untimed_episodes']} episodes untimed" if timing["untimed_episodes"] else ""))


def run_view(args: argparse.Namespace) -> int:
    from rfm.data.reader import LeRobotDataset
    from rfm.data.view import contact_sheet

    ds = LeRobotDataset(args.path, check_finite=False)  # a dataset with a NaN can still be looked at
    if args.episode not in {e.index for e in ds.episodes}:
        raise CLIError(f"--episode {args.episode} is not in {args.path} (episodes 0..{ds.num_episodes - 1})")
    print(f"wrote {contact_sheet(ds, args.episode, args.out, args.frames)}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from rfm.data.hdf5 import import_hdf5

    _check_new_output(args.out, args.overwrite)
    root = import_hdf5(args.paths, args.out, fps=args.fps, task=args.task, layout=args.layout,
                       robot_type=args.robot_type, cameras=args.cameras, state_keys=args.state_keys,
                       use_videos=args.images == "video", vcodec=args.vcodec, overwrite=args.overwrite)
    from rfm.data.reader import LeRobotDataset

    ds = LeRobotDataset(root)
    print(f"imported {ds.num_episodes} episodes, {ds.num_frames} frames into {root}")
    return 0
