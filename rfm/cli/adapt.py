"""`rfm adapt`: the adaptation protocol in one command (rfm.eval.adapt): demos of new tasks, fine-tune, evaluate."""

from __future__ import annotations

import argparse

from rfm.cli.args import checkpoint_dir, comma_list, ints, positive_int
from rfm.cli.errors import CLIError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="adapt a checkpoint to new tasks: demos, fine-tune, closed-loop evaluation",
                       description="Generate --demos scripted demonstrations per task with only what a field dataset "
                                   "has (no simulator state), fine-tune --init on them (no simulator training aid), "
                                   "evaluate on --episodes unseen seeds per task. Writes OUT/demos, OUT/checkpoint, "
                                   "OUT/eval.json and OUT/adapt.json; rerunning continues where it stopped.")
    p.add_argument("--task", type=comma_list, required=True,
                   help="Meta-World task(s), comma-separated, fine-tuned together (or a set: ml45-test, mt10, ...)")
    p.add_argument("--init", required=True, type=checkpoint_dir, help="checkpoint directory to fine-tune, or 'scratch'")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--demos", type=int, default=10,
                   help="demonstrations per task (default 10). The fine-tune normalises state and actions with the "
                        "demos' own statistics, as rfm train does: from very few demos (or few steps) they can be far "
                        "from the init's, and the model scores below the init until it has adapted to them")
    p.add_argument("--steps", type=int, default=None,
                   help="fine-tuning steps, from scratch as many (default 2000 per task: tasks fine-tuned together "
                        "get the budget each would get alone)")
    p.add_argument("--episodes", type=positive_int, default=50, help="evaluation episodes per task (default 50)")
    p.add_argument("--dataset", default=None, metavar="DIR",
                   help="use these demonstrations (a LeRobot dataset without environment state) instead of generating")
    p.add_argument("--preset", default=None, help="scratch: model preset (default: --like's model config)")
    p.add_argument("--like", default=None, metavar="CHECKPOINT",
                   help="scratch: the checkpoint whose architecture and cameras to copy (default checkpoints/default)")
    p.add_argument("--cameras", type=comma_list, default=None, help="demo cameras (default: the checkpoint's)")
    p.add_argument("--size", type=int, default=None, help="demo image size (default: the checkpoint's input size)")
    p.add_argument("--start-jitter", type=int, default=15, metavar="STEPS",
                   help="random hand steps before each demo (default 15, as the default checkpoint's demos)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--world-model", type=float, default=0.0, metavar="W",
                   help="fine-tune with the world-model objective at weight W (training aid world_model; frames and "
                        "actions only, as a field dataset has them; default 0: off)")
    p.add_argument("--world-model-target", choices=("auto", "keypoints", "features"), default="auto",
                   help="what it predicts of the frames a chunk ahead: the vision encoder's keypoints, or its pooled "
                        "features (auto: keypoints where the model has them)")
    p.add_argument("--world-model-horizon", type=int, default=None, metavar="STEPS",
                   help="how many control steps ahead it predicts (default: one chunk)")
    p.add_argument("--seed", type=int, default=0, help="first demo seed and training seed")
    p.add_argument("--workers", type=positive_int, default=2, help="processes generating demos and evaluating (default 2)")
    p.add_argument("--num-workers", type=int, default=1, help="DataLoader workers while fine-tuning (default 1)")
    p.add_argument("--max-steps", type=positive_int, default=None, help="evaluation episode step limit (default 500)")
    p.add_argument("--action-steps", type=ints, default=None, metavar="K[,K...]",
                   help="actions executed per chunk in evaluation (default: half a chunk, as the robot SDK's "
                        "ChunkExecutor requests the next one); several, e.g. 4,8, score each on the same episodes: "
                        "the first into eval.json, the others into eval-kK.json")
    p.add_argument("--select-episodes", type=int, default=0, metavar="N",
                   help="with several --action-steps: choose each task's on N validation episodes of seeds the score "
                        "never uses (from 2,000,000), and score the chosen modes into eval-selected.json (default 0: "
                        "do not choose)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rfm.config import ConfigError
    from rfm.eval.adapt import AdaptConfig, adapt

    try:
        cfg = AdaptConfig(tasks=args.task, init=args.init, out=args.out, demos=args.demos, steps=args.steps,
                          episodes=args.episodes, dataset=args.dataset, preset=args.preset, like=args.like,
                          cameras=args.cameras, size=args.size, start_jitter=args.start_jitter,
                          batch_size=args.batch_size, lr=args.lr, seed=args.seed, workers=args.workers,
                          num_workers=args.num_workers, max_steps=args.max_steps,
                          action_steps=args.action_steps, select_episodes=args.select_episodes,
                          world_model=args.world_model,
                          world_model_target=args.world_model_target, world_model_horizon=args.world_model_horizon)
    except ValueError as e:  # ConfigError and an unknown task's did-you-mean
        raise CLIError(str(e)) from e
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        record = adapt(cfg, progress=not args.no_progress)
    except ConfigError as e:
        raise CLIError(str(e)) from e
    scores = "; ".join(f"{m['mean_success_rate'] * 100:.1f}% at {k} actions per request"
                       for k, m in record["by_action_steps"].items())
    if "selected" in record:
        sel = record["selected"]
        scores += (f"; {sel['mean_success_rate'] * 100:.1f}% each task in the mode chosen on "
                   f"{cfg.select_episodes} validation episodes ("
                   + ", ".join(f"{t} {k}" for t, k in sel["action_steps"].items()) + ")")
    print(f"{', '.join(cfg.tasks)} from {cfg.init}, {cfg.episodes} episodes per task: {scores}; "
          f"wrote {args.out}/adapt.json")
    return 0
