"""Closed-loop evaluation: the pipeline end to end on a tiny random policy, and the chunk-execution maths."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from rfm import RFMPolicy
from rfm.client.executor import ChunkExecutor
from rfm.config import RobotInterface
from rfm.eval.card import weights_digest
from rfm.runtime import load_runner
from rfm.sim.metaworld import ACTION_NAMES, CONTROL_HZ, STATE_NAMES
from tests.cli_in_process import rfm


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "tiny"
    itf = RobotInterface(cameras=["corner2"], image_size=(48, 48), state_names=STATE_NAMES,
                         action_names=ACTION_NAMES, chunk_size=8, control_hz=CONTROL_HZ)
    RFMPolicy.build("tiny", interface=itf).save_pretrained(path)
    return path


@pytest.mark.integration
def test_cli_writes_results_json(ckpt, tmp_path):
    out = tmp_path / "results.json"
    proc = rfm("eval", "--checkpoint", str(ckpt), "--tasks", "reach-v3", "--episodes", "1", "--max-steps", "20",
               "--out", str(out), "--no-progress", "--video-dir", str(tmp_path / "videos"))
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["tasks"]["reach-v3"]["episodes"] == 1 and 0.0 <= res["mean_success_rate"] <= 1.0
    assert res["tasks"]["reach-v3"]["mean_steps"] == 20 and res["tasks"]["reach-v3"]["mean_inferences"] == 3
    (ep,) = res["tasks"]["reach-v3"]["rollouts"]  # one record per episode: which seed, whether it succeeded
    assert ep["seed"] == 1_000_000 and ep["steps"] == 20 and isinstance(ep["success"], bool)
    assert min(res["seeds"]) >= 1_000_000
    # whole chunks of 8 over 20 ticks: 2 switches to a new chunk, 17 steps inside one; jerk measured at both
    assert res["jerk_switch"] is not None and res["jerk_within"] is not None and res["delay"] == 0
    assert (tmp_path / "videos" / "reach-v3.gif").stat().st_size > 0
    assert "reach-v3" in proc.stdout and "mean" in proc.stdout


@pytest.mark.integration
def test_ensembled_rollout_predicts_every_step(ckpt):
    from rfm.eval import evaluate
    from rfm.runtime import load_runner

    res = evaluate(load_runner(ckpt), ["drawer-close-v3"], 1, ensemble=True, max_steps=6, paraphrase=True,
                   progress=False)
    assert res["tasks"]["drawer-close-v3"]["mean_inferences"] == 6 and res["paraphrase"]


@pytest.mark.integration
def test_rollout_reports_every_step_to_its_observer(ckpt):
    from rfm.eval.rollout import rollout
    from rfm.runtime import load_runner
    from rfm.sim.metaworld import MetaWorldEnv

    runner = load_runner(ckpt)
    env = MetaWorldEnv("reach-v3", ["corner2"], 48, max_steps=7)
    seen = []
    try:
        res = rollout(runner, env, 1_000_000, on_step=lambda e, step: seen.append((step, e.steps, e.env_state()[6:9])))
    finally:
        env.close()
    assert [s for s, _, _ in seen] == list(range(1, 8)) == [n for _, n, _ in seen] and res.steps == 7
    assert all(np.allclose(goal, seen[0][2]) for _, _, goal in seen)  # the goal stays put within an episode


@pytest.mark.integration
def test_worker_processes_run_the_same_episodes_as_one(ckpt, tmp_path):
    """--workers shards the episodes over processes; every episode's outcome matches the single-process run, and
    --video-dir films each task's first episode whichever worker runs it (it was ignored with workers)."""
    from rfm.eval import evaluate

    tasks = ["reach-v3", "drawer-close-v3"]
    one = evaluate(None, tasks, 2, max_steps=8, checkpoint=str(ckpt), progress=False)
    two = evaluate(None, tasks, 2, max_steps=8, checkpoint=str(ckpt), workers=2, progress=False,
                   video_dir=tmp_path / "videos")
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["drawer-close-v3.gif", "reach-v3.gif"]
    for task in tasks:
        assert two["tasks"][task]["episodes"] == 2
        assert two["tasks"][task]["rollouts"] == one["tasks"][task]["rollouts"]
    assert two["seeds"] == one["seeds"] and len(two["seeds"]) == 4


@pytest.mark.integration
def test_snapped_paraphrases_are_listed_with_where_they_went(tmp_path):
    from rfm.eval import evaluate, format_table

    itf = RobotInterface(cameras=["corner2"], image_size=(48, 48), state_names=STATE_NAMES,
                         action_names=ACTION_NAMES, chunk_size=8, control_hz=CONTROL_HZ)
    policy = RFMPolicy.build("tiny", interface=itf)
    policy.meta["data"] = {"tasks": ["close the drawer", "open the window"]}
    path = policy.save_pretrained(tmp_path / "ck")
    res = evaluate(None, ["drawer-close-v3"], 3, max_steps=4, checkpoint=str(path), workers=2, paraphrase=True,
                   snap_instructions=0.5, progress=False)
    matches = res["instruction_matches"]
    assert len(matches) == 3 and "close the drawer" not in matches  # the three held-out paraphrases
    assert all(m["nearest"] == "close the drawer" and m["snapped"] for m in matches.values()), matches
    assert res["snap_instructions"] == 0.5 and "snapped to a trained one" in format_table(res)


def test_training_seeds_are_refused(ckpt):
    from rfm.eval import evaluate

    with pytest.raises(ValueError, match="evaluation seeds must be >= 1000000"):
        evaluate(None, ["reach-v3"], 1, seed=3, checkpoint=str(ckpt))


def _chunks(values: list[np.ndarray]):
    """An act() that returns the given chunks in order, and counts its calls."""
    it = iter(values)
    return lambda obs: next(it)


def test_temporal_ensembling_weights_oldest_most():
    with ChunkExecutor(_chunks([np.full((3, 1), v) for v in (1.0, 3.0, 5.0, 7.0)]), action_steps=1,
                       ensemble_decay=0.5) as ex:
        a0 = ex.step({})  # only chunk 0 covers tick 0
        assert a0[0] == 1.0
        a1 = ex.step({})  # chunks 0 and 1 cover tick 1
        w = np.exp(-0.5 * np.arange(2))
        assert a1[0] == pytest.approx((w[0] * 1 + w[1] * 3) / w.sum())
        ex.step({})
        a3 = ex.step({})  # chunk 0 (len 3) has expired at tick 3
        w = np.exp(-0.5 * np.arange(3))
        assert a3[0] == pytest.approx((w[0] * 3 + w[1] * 5 + w[2] * 7) / w.sum())
        assert ex.requests == 4


def test_action_steps_execute_k_then_replan():
    with ChunkExecutor(_chunks([np.arange(5.0)[:, None], 10 + np.arange(5.0)[:, None]]), action_steps=2) as ex:
        assert [ex.step({})[0] for _ in range(4)] == [0.0, 1.0, 10.0, 11.0] and ex.requests == 2


def test_a_simulated_delay_keeps_executing_the_previous_chunk_until_the_new_one_is_usable():
    """K = 4 actions per request, D = 2 ticks of latency, H = 8: the chunk computed from tick 4's observation is
    usable from tick 6, where its action for tick 6 (index 2) runs; ticks 4 and 5 finish the previous chunk."""
    first, second = np.arange(8.0)[:, None], 100 + np.arange(8.0)[:, None]
    with ChunkExecutor(_chunks([first, second, second + 100]), action_steps=4, delay_ticks=2) as ex:
        got = [ex.step({})[0] for _ in range(8)]
    assert got == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 102.0, 103.0] and ex.waits == 0
    with pytest.raises(ValueError, match="delay_ticks=2: a simulated delay needs action_steps"):
        ChunkExecutor(lambda obs: first, delay_ticks=2)


@pytest.mark.integration
def test_update_card_records_results_without_touching_weights(ckpt, tmp_path):
    import shutil

    local = tmp_path / "ck"
    shutil.copytree(ckpt, local)
    before = (local / "model.safetensors").read_bytes()
    proc = rfm("eval", "--checkpoint", str(local), "--tasks", "reach-v3", "--episodes", "1", "--max-steps", "5",
               "--no-progress", "--update-card")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((local / "config.json").read_text())["meta"]
    assert set(meta["evaluation"]["metaworld"]["tasks"]) == {"reach-v3"}
    assert "Evaluation" in (local / "README.md").read_text()
    assert (local / "model.safetensors").read_bytes() == before
    # another execution mode gets its own entry instead of overwriting the whole-chunk result
    out = tmp_path / "steps2.json"
    proc = rfm("eval", "--checkpoint", str(local), "--tasks", "reach-v3", "--episodes", "1", "--max-steps", "5",
               "--no-progress", "--update-card", "--action-steps", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    evals = json.loads((local / "config.json").read_text())["meta"]["evaluation"]
    assert set(evals) == {"metaworld", "metaworld-steps2"} and evals["metaworld-steps2"]["action_steps"] == 2
    assert json.loads(out.read_text())["weights_sha256"] == weights_digest(local)

    # the saved results go into a copy's card (a checkpoint promoted elsewhere) without rerunning the rollouts
    copy = tmp_path / "promoted"
    shutil.copytree(ckpt, copy)
    proc = rfm("card", str(copy), "--add", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((copy / "config.json").read_text())["meta"]["evaluation"] == {
        "metaworld-steps2": evals["metaworld-steps2"]}
    assert "metaworld-steps2" in proc.stdout and "Evaluation" in (copy / "README.md").read_text()
    # a second block of seeds (`rfm eval --seed`) sits beside the first
    block = json.loads(out.read_text())
    block["seeds"] = [s + 50 for s in block["seeds"]]
    block["mean_success_rate"] = 0.8140000000000001  # a float mean as older `rfm eval` wrote it
    (tmp_path / "block2.json").write_text(json.dumps(block))
    assert rfm("card", str(copy), "--add", str(tmp_path / "block2.json")).returncode == 0
    evals = json.loads((copy / "config.json").read_text())["meta"]["evaluation"]
    assert set(evals) == {"metaworld-steps2", "metaworld-steps2-seed1000050"}
    assert evals["metaworld-steps2-seed1000050"]["mean_success_rate"] == 0.814  # the card shows it rounded


@pytest.mark.integration
def test_card_refuses_results_measured_on_other_weights(ckpt, tmp_path):
    """Numbers from one model must never land in another's card: the weights' sha256 decides."""
    other = tmp_path / "other"
    itf = RobotInterface(cameras=["corner2"], image_size=(48, 48), state_names=STATE_NAMES,
                         action_names=ACTION_NAMES, chunk_size=8, control_hz=CONTROL_HZ)
    RFMPolicy.build("tiny", interface=itf).save_pretrained(other)  # freshly initialised: other weights
    results = {"tasks": {"reach-v3": {"success_rate": 1.0, "episodes": 1}}, "mean_success_rate": 1.0,
               "seeds": [1_000_000], "checkpoint": str(ckpt), "weights_sha256": weights_digest(ckpt)}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    before = (other / "config.json").read_text()
    proc = rfm("card", str(other), "--add", str(path))
    assert proc.returncode == 2 and "measured on other weights" in proc.stderr and str(path) in proc.stderr
    # one good file beside a bad one: nothing is written, not even the good one
    good = tmp_path / "good.json"
    good.write_text(json.dumps({**results, "checkpoint": str(other), "weights_sha256": weights_digest(other)}))
    proc = rfm("card", str(other), "--add", str(good), str(path))
    assert proc.returncode == 2 and str(path) in proc.stderr
    assert (other / "config.json").read_text() == before
    # an ONNX evaluation measured no torch weights
    onnx = tmp_path / "onnx.json"
    onnx.write_text(json.dumps({**results, "backend": "onnx", "weights_sha256": None}))
    proc = rfm("card", str(other), "--add", str(onnx))
    assert proc.returncode == 2 and "onnx backend" in proc.stderr
    # results without a digest whose checkpoint is gone cannot be tied to any weights
    del results["weights_sha256"]
    results["checkpoint"] = str(tmp_path / "deleted")
    path.write_text(json.dumps(results))
    proc = rfm("card", str(other), "--add", str(path))
    assert proc.returncode == 2 and "cannot be tied" in proc.stderr
    # a file that is not eval results is named with the field it lacks
    path.write_text(json.dumps({"tasks": {}}))
    proc = rfm("card", str(other), "--add", str(path))
    assert proc.returncode == 2 and "'mean_success_rate'" in proc.stderr
    assert (other / "config.json").read_text() == before


@pytest.mark.integration
def test_killing_eval_stops_its_worker_processes(ckpt):
    """A killed `rfm eval --workers 2` must not leave its workers running their shards for minutes."""
    import os
    import signal
    import time

    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "rfm.cli.main", "eval", "--checkpoint", str(ckpt), "--tasks",
                             "reach-v3", "--episodes", "20", "--workers", "2", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    deadline = time.time() + 120
    workers = []
    while time.time() < deadline and len(workers) < 2:
        workers = [c for c in parent.children() if "spawn_main" in " ".join(c.cmdline())]
        time.sleep(0.5)
    assert len(workers) == 2, "the pool's two workers started"
    time.sleep(3)  # let them load the model and start rolling out
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(workers, timeout=15)
    for p in alive:
        p.kill()
    assert not alive, f"{len(alive)} worker(s) outlived the killed eval"


def test_continuation_sends_the_actions_committed_for_the_delay_and_continues_them():
    """K = 4, D = 2, H = 8, prefix_max = 3: the request at tick 4 carries the previous chunk's actions for ticks 4
    and 5 (what the robot executes while it is computed); the answer starts with them, so ticks 4-7 run 4, 5, then
    the new chunk's 102, 103. The first request of an episode carries none (nothing is committed yet)."""
    sent = []

    def act(obs):
        sent.append(obs.get("committed_actions"))
        chunk = 100.0 * len(sent) + np.arange(8.0)[:, None]
        if sent[-1] is not None:
            chunk[:len(sent[-1])] = sent[-1]  # what a delay-aware model returns
        return chunk

    with ChunkExecutor(act, action_steps=4, delay_ticks=2, continuation=True, prefix_max=3) as ex:
        got = [ex.step({})[0] for _ in range(8)]
    assert sent[0] is None and sent[1].tolist() == [[104.0], [105.0]]
    assert got == [100.0, 101.0, 102.0, 103.0, 104.0, 105.0, 202.0, 203.0] and ex.waits == 0
    with ChunkExecutor(act, action_steps=4, delay_ticks=6, continuation=True, prefix_max=3) as ex:
        sent.clear()
        [ex.step({}) for _ in range(5)]
    assert len(sent[1]) == 3  # never more than the model takes
    with pytest.raises(ValueError, match="prefix_max > 0"):
        ChunkExecutor(act, action_steps=4, continuation=True, prefix_max=0)
    with pytest.raises(ValueError, match="pick one"):
        ChunkExecutor(act, action_steps=1, continuation=True, prefix_max=3, ensemble_decay=0.1)


def test_prefetching_continuation_sends_as_many_committed_actions_as_the_round_trip_takes():
    """Real-robot schedule: the executor measures its control period and the request round trip, and commits the
    ticks that pass before an answer lands (plus the one it lands in)."""
    import time

    sent = []

    def act(obs):
        sent.append(obs.get("committed_actions"))
        time.sleep(0.025)
        chunk = np.arange(16.0)[:, None] + 100 * len(sent)
        if sent[-1] is not None:
            chunk[:len(sent[-1])] = sent[-1]
        return chunk

    with ChunkExecutor(act, continuation=True, prefix_max=8, prefetch_steps=8) as ex:
        for _ in range(40):
            ex.step({})
            time.sleep(0.01)
    later = [s for s in sent[2:] if s is not None]
    assert later and ex.latency_s is not None and ex.tick_s is not None
    assert all(2 <= len(s) <= 8 for s in later)  # ~25 ms round trip over ~10 ms ticks: 3-4 ticks committed


@pytest.mark.integration
def test_continuation_rollout_through_a_prefix_model(tmp_path):
    """rfm eval --continuation --delay: a checkpoint trained for delay-aware continuation runs end to end; one
    without it is refused before any rollout."""
    itf = RobotInterface(cameras=["corner2"], image_size=(48, 48), state_names=STATE_NAMES,
                         action_names=ACTION_NAMES, chunk_size=8, control_hz=CONTROL_HZ)
    RFMPolicy.build("tiny", interface=itf, prefix_max=4).save_pretrained(tmp_path / "prefix")
    RFMPolicy.build("tiny", interface=itf).save_pretrained(tmp_path / "plain")
    base = ["eval", "--tasks", "reach-v3", "--episodes", "1", "--max-steps", "12", "--action-steps", "4", "--delay",
            "2", "--continuation", "--no-progress"]
    proc = rfm(*base, "--checkpoint", str(tmp_path / "prefix"), "--out", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["continuation"] and res["delay"] == 2 and res["tasks"]["reach-v3"]["mean_steps"] == 12
    assert "waits" not in proc.stderr  # 4 + 2 <= 8: the chunks never run out
    proc = rfm(*base, "--checkpoint", str(tmp_path / "plain"))  # refused before any rollout
    assert proc.returncode == 2 and "prefix_max = 0" in proc.stderr
    late = [a if a != "2" else "6" for a in base if a != "--continuation"]  # 4 + 6 > 8: each chunk runs out
    proc = rfm(*late, "--checkpoint", str(tmp_path / "plain"))
    assert proc.returncode == 0, proc.stderr
    assert "the robot waits 2 ticks for each chunk" in proc.stderr and "--action-steps 2 keeps it moving" in proc.stderr


@pytest.mark.integration
def test_card_records_the_actions_per_request_robots_should_run(tmp_path):
    """`rfm card --action-steps K`: on the card and its README, served by the runner; a bad K changes nothing."""
    ckpt = tmp_path / "ckpt"
    itf = RobotInterface(cameras=["corner2"], image_size=(48, 48), state_names=STATE_NAMES,
                         action_names=ACTION_NAMES, chunk_size=8, control_hz=CONTROL_HZ)
    RFMPolicy.build("tiny", interface=itf).save_pretrained(ckpt)
    proc = rfm("card", str(ckpt), "--action-steps", "3")
    assert proc.returncode == 0, proc.stderr
    assert "execution: 3 actions per request" in proc.stdout
    assert "| actions per request | 3, rfm card --action-steps |" in (ckpt / "README.md").read_text()
    assert load_runner(ckpt, device="cpu").describe()["execution"]["action_steps"] == 3
    before = (ckpt / "config.json").read_text()
    for bad in ("9", "0", "two"):  # more than the chunk of 8, none, not a number
        proc = rfm("card", str(ckpt), "--action-steps", bad)
        assert proc.returncode == 2 and "--action-steps=" in proc.stderr and str(ckpt) in proc.stderr
        assert "Traceback" not in proc.stderr and (ckpt / "config.json").read_text() == before
    assert rfm("card", str(ckpt), "--action-steps", "none").returncode == 0
    assert load_runner(ckpt, device="cpu").execution is None
