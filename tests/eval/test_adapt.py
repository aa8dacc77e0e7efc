"""`rfm adapt`: demos, fine-tune and evaluation end to end at tiny sizes, from a checkpoint and from scratch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rfm import RFMPolicy
from rfm.cli.main import main
from rfm.config import RobotInterface
from rfm.constants import OBS_ENV_STATE
from rfm.sim.instructions import instructions_for
from tests.cli_in_process import rfm

TINY = ["--demos", "2", "--steps", "5", "--episodes", "1", "--max-steps", "10", "--batch-size", "4", "--workers", "1",
        "--num-workers", "0", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny model like checkpoints/default: corner + topview, triangulated points relative to the hand."""
    from rfm.sim.metaworld import ACTION_NAMES, CONTROL_HZ, STATE_NAMES, camera_projections

    cams = ["corner", "topview"]
    itf = RobotInterface(cameras=cams, image_size=(48, 48), state_names=STATE_NAMES, action_names=ACTION_NAMES,
                         chunk_size=8, control_hz=CONTROL_HZ, robot_type="sawyer", ee_position=STATE_NAMES[:3],
                         calibration={c: {"projection": p} for c, p in camera_projections("reach-v3", cams).items()})
    def stat(n, mean):
        return {"mean": [mean] * n, "std": [0.1] * n, "min": [-1.0] * n, "max": [1.0] * n}
    stats = {"observation.state": stat(4, 0.0), "action": stat(4, 0.0), OBS_ENV_STATE: stat(9, 0.3)}
    path = tmp_path_factory.mktemp("adapt") / "tiny"
    RFMPolicy.build("tiny", interface=itf, stats=stats, vision_points=3, relative_points=True,
                    vision_keypoint_source="branch").save_pretrained(path)
    return path


def _adapt(*args: str):
    proc = rfm("adapt", *args, *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.integration
def test_adapt_from_a_checkpoint_then_from_scratch_on_the_same_demos(ckpt, tmp_path):
    from rfm.data.reader import LeRobotDataset

    run = tmp_path / "from-ckpt"
    _adapt("--task", "reach-v3", "--init", str(ckpt), "--out", str(run))
    rec = json.loads((run / "adapt.json").read_text())
    meta = json.loads((ckpt / "config.json").read_text())["meta"]
    assert rec["tasks"] == ["reach-v3"] and rec["steps"] == 5 and rec["status"] == "done"
    assert rec["init"] == {"path": str(ckpt), "model_id": meta.get("model_id"), "model_version": meta["model_version"]}
    assert rec["demos"]["per_task"] == 2 and rec["demos"]["episodes"] == 2 and not rec["demos"]["env_state"]
    assert rec["training"]["steps_done"] == 5 and rec["checkpoint"] == str(run / "checkpoint")
    res = rec["eval"]["tasks"]["reach-v3"]
    assert res["episodes"] == 1 and res["mean_steps"] <= 10 and min(rec["eval"]["seeds"]) >= 1_000_000
    assert json.loads((run / "eval.json").read_text()) == rec["eval"]  # what `rfm eval --out` writes
    assert rec["eval"]["action_steps"] == 4  # half the chunk of 8 per request, as the SDK's executor on a robot
    demos = LeRobotDataset(run / "demos")  # only what a field dataset has
    assert OBS_ENV_STATE not in demos.features and "environment_state" not in json.dumps(demos.features)
    assert demos.num_episodes == 2 and demos.cameras == ["corner", "topview"] and demos.image_shape("corner")[0] == 48
    assert max(demos.episode_meta(e)["seed"] for e in range(2)) < 100_000  # demo seeds never evaluated on
    out_stats = json.loads((run / "checkpoint" / "stats.json").read_text())
    assert out_stats[OBS_ENV_STATE]["mean"] == [0.3] * 9  # the points keep the init's frame, no label of the demos
    card = json.loads((run / "checkpoint" / "config.json").read_text())["meta"]
    assert card["training"]["aids"] == {} and "metaworld-steps4" in card["evaluation"]

    again = _adapt("--task", "reach-v3", "--init", str(ckpt), "--out", str(run))  # every stage reused
    assert again.stdout.count("reused") == 3 and json.loads((run / "adapt.json").read_text())["eval"] == rec["eval"]
    modes = _adapt("--task", "reach-v3", "--init", str(ckpt), "--out", str(run), "--action-steps", "8,2")
    assert modes.stdout.count("reused") == 2  # an evaluation setting: the demos and weights stay, the score is redone
    rec = json.loads((run / "adapt.json").read_text())
    assert rec["eval"]["action_steps"] == 8 and json.loads((run / "eval.json").read_text()) == rec["eval"]
    other = json.loads((run / "eval-k2.json").read_text())  # each further K scored on the same episodes
    assert other["action_steps"] == 2 and other["seeds"] == rec["eval"]["seeds"]
    assert list(rec["by_action_steps"]) == ["8", "2"] and rec["by_action_steps"]["2"]["eval_file"] == str(
        run / "eval-k2.json") and set(rec["by_action_steps"]["2"]["success_rate"]) == {"reach-v3"}
    assert "at 8 actions per request; " in modes.stdout and "at 2 actions per request" in modes.stdout
    assert "metaworld-steps2" in json.loads((run / "checkpoint" / "config.json").read_text())["meta"]["evaluation"]
    chosen = _adapt("--task", "reach-v3", "--init", str(ckpt), "--out", str(run), "--action-steps", "8,2",
                    "--select-episodes", "1")  # each task's mode chosen on seeds the score never uses
    assert chosen.stdout.count("reused") == 4  # demos, weights and both scores; only the validation block is new
    sel = json.loads((run / "adapt.json").read_text())["selected"]
    val = {k: json.loads((run / f"val-k{k}.json").read_text()) for k in (8, 2)}
    assert all(v["seeds"] == [2_000_000] and v["action_steps"] == k for k, v in val.items())
    k = sel["action_steps"]["reach-v3"]
    rates = {k: v["tasks"]["reach-v3"]["success_rate"] for k, v in val.items()}
    assert rates[k] == max(rates.values()) and (k == 8 or rates[2] > rates[8])  # best on validation, ties to the first
    composed = json.loads((run / "eval-selected.json").read_text())
    test = json.loads((run / ("eval.json" if k == 8 else "eval-k2.json")).read_text())
    assert composed["tasks"]["reach-v3"] == {**test["tasks"]["reach-v3"], "action_steps": k}
    assert composed["seeds"] == test["seeds"] and sel["mean_success_rate"] == test["mean_success_rate"]
    assert f"in the mode chosen on 1 validation episodes (reach-v3 {k})" in chosen.stdout
    meta = json.loads((run / "checkpoint" / "config.json").read_text())["meta"]
    assert all(e.get("seed") != 2_000_000 for e in meta["evaluation"].values())  # validation stays off the card
    # the choice goes on the card, keyed by the instruction a robot sends, so the SDK runs the model in that mode
    assert meta["execution"]["by_instruction"] == {instructions_for("reach-v3")[0]: k}
    assert meta["execution"]["action_steps"] == k and "validation episodes" in meta["execution"]["source"]

    scratch = tmp_path / "scratch"
    _adapt("--task", "reach-v3", "--init", "scratch", "--like", str(ckpt), "--dataset", str(run / "demos"),
           "--out", str(scratch), "--world-model", "0.1", "--world-model-horizon", "12")
    rec = json.loads((scratch / "adapt.json").read_text())
    assert rec["plan"]["world_model"] == 0.1  # the world-model objective: frames and actions, nothing a field dataset lacks
    assert json.loads((scratch / "checkpoint" / "config.json").read_text())["meta"]["training"]["aids"] == {
        "world_model": {"weight": 0.1, "target": "auto", "horizon": 12}}
    assert rec["init"]["path"] == "scratch" and rec["init"]["like"]["path"] == str(ckpt)
    assert rec["demos"]["dataset"] == str(run / "demos") and not rec["demos"]["generated"]
    assert rec["training"]["steps_done"] == 5 and rec["eval"]["tasks"]["reach-v3"]["episodes"] == 1
    ours, theirs = (json.loads((p / "config.json").read_text()) for p in (scratch / "checkpoint", ckpt))
    assert ours["model"] == theirs["model"]  # the same architecture as the checkpoint it is compared with
    assert ours["interface"]["image_size"] == [48, 48] and "lineage" not in ours["meta"]
    assert not np.isnan(rec["eval"]["mean_success_rate"])


def test_cli_errors_are_one_line(ckpt, tmp_path, capsys):
    def error(*args: str) -> str:
        assert main(["adapt", "--out", str(tmp_path / "run"), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        return err

    assert "Did you mean 'door-lock-v3'" in error("--task", "door-lok-v3", "--init", str(ckpt))
    assert "no checkpoint there" in error("--task", "reach-v3", "--init", str(tmp_path / "nope"))
    assert "demos=0: expected an integer >= 1" in error("--task", "reach-v3", "--init", str(ckpt), "--demos", "0")
    assert "world_model=-1.0: expected a weight >= 0" in error("--task", "reach-v3", "--init", str(ckpt),
                                                               "--world-model", "-1")
    assert "choosing an execution mode needs two or more" in error("--task", "reach-v3", "--init", str(ckpt),
                                                                   "--select-episodes", "5")
    assert "action_steps=[8, 0]: expected K >= 1 each" in error("--task", "reach-v3", "--init", str(ckpt),
                                                                "--action-steps", "8,0")
    assert "action_steps=400: more than" in error("--task", "reach-v3", "--init", str(ckpt), "--action-steps", "1,400")
    assert "lr=-1.0" in error("--task", "reach-v3", "--init", "scratch", "--like", str(ckpt), "--lr", "-1")
    assert "architecture of 'scratch'" in error("--task", "reach-v3", "--init", str(ckpt), "--preset", "tiny")
    assert "Did you mean 'tiny'" in error("--task", "reach-v3", "--init", "scratch", "--like", str(ckpt), "--preset",
                                          "tiyn")
    assert "dataset directory not found" in error("--task", "reach-v3", "--init", str(ckpt), "--dataset",
                                                  str(tmp_path / "none"))
    assert not (tmp_path / "run").exists()  # nothing written before the settings were checked
    # another robot's demonstrations (14 joints, though with the model's cameras): refused before any training
    from rfm.data.lerobot import LeRobotDatasetWriter

    joints = [f"q{i}" for i in range(14)]
    w = LeRobotDatasetWriter(tmp_path / "arm14", fps=10, cameras={"corner": (48, 48), "topview": (48, 48)},
                             state_names=joints, action_names=joints, use_videos=False)
    for _ in range(3):
        w.add_frame(images={c: np.zeros((48, 48, 3), np.uint8) for c in ("corner", "topview")},
                    state=np.zeros(14, np.float32), action=np.zeros(14, np.float32), task="reach the red target")
    w.save_episode()
    w.finalize()
    said = error("--task", "reach-v3", "--init", str(ckpt), "--dataset", str(tmp_path / "arm14"))
    assert "14 state values" in said and "Meta-World robot" in said and not (tmp_path / "run" / "checkpoint").exists()


def test_tasks_fine_tuned_together_get_the_steps_each_would_get_alone(ckpt, tmp_path):
    from rfm.eval.adapt import STEPS_PER_TASK, AdaptConfig

    one = AdaptConfig(tasks=["door-lock-v3"], init=str(ckpt), out=str(tmp_path / "one"))
    five = AdaptConfig(tasks=["ml45-test"], init=str(ckpt), out=str(tmp_path / "five"))
    assert one.steps == STEPS_PER_TASK and len(five.tasks) == 5 and five.steps == 5 * STEPS_PER_TASK
    assert AdaptConfig(tasks=["ml45-test"], init=str(ckpt), out=str(tmp_path / "x"), steps=300).steps == 300
