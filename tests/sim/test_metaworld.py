"""Meta-World wrapper and scripted-expert demonstrations (real MuJoCo, headless rendering)."""

from __future__ import annotations

import numpy as np
import pytest

from rfm.sim.metaworld import (
    ACTION_NAMES,
    EVAL_SEED_BASE,
    MT10_TASKS,
    STATE_NAMES,
    MetaWorldEnv,
    camera_projections,
    expand_tasks,
    generate_episode,
    generate_episodes,
    instructions_for,
    jittered_start,
)

pytestmark = pytest.mark.integration  # real MuJoCo rendering and rollouts


def test_env_gives_runtime_observations():
    env = MetaWorldEnv("reach-v3", ["corner2", "gripperPOV"], size=64)
    obs = env.reset(EVAL_SEED_BASE)
    assert set(obs) == {"images", "state", "instruction"}
    assert obs["images"]["corner2"].shape == (64, 64, 3) and obs["images"]["corner2"].dtype == np.uint8
    assert obs["state"].shape == (4,) and obs["instruction"] == "reach the red target"
    _, _, done, info = env.step(np.zeros(4))
    assert "success" in info and not done
    env.close()


def test_first_frame_shows_this_episodes_goal():
    # Meta-World sets the goal site in reset_model without recomputing positions: without a forward pass the first
    # frame of every episode showed the previous episode's goal.
    env = MetaWorldEnv("reach-v3", ["corner2"], size=64)
    env.reset(EVAL_SEED_BASE)
    first = env.reset(EVAL_SEED_BASE + 1)["images"]["corner2"]
    site = env.env.data.site_xpos[env.env.model.site("goal").id]
    np.testing.assert_allclose(site, env.env._target_pos, atol=1e-9)
    again = env.step(np.zeros(4))[0]["images"]["corner2"]  # a zero action barely moves the arm; the goal stays put
    assert np.abs(first.astype(int) - again.astype(int)).mean() < 2.0
    env.close()


def test_goal_pixels_measure_how_much_of_the_goal_each_camera_sees():
    env = MetaWorldEnv("reach-v3", ["corner2", "topview"], size=96)
    before = env.reset(EVAL_SEED_BASE)["images"]
    px = env.goal_pixels()
    assert 0 < px["corner2"] <= 4  # why corner2 at 96 px could not teach reach: the goal is a pixel or two
    assert px["topview"] >= 6
    after = env._obs()["images"]  # the goal marker is shown again afterwards
    np.testing.assert_array_equal(before["topview"], after["topview"])
    env.close()


def test_object_pixels_show_the_top_view_losing_the_puck_under_the_hand():
    env = MetaWorldEnv("push-v3", ["corner", "topview"], size=128)
    env.reset(EVAL_SEED_BASE)
    for _ in range(20):  # the expert's approach: the hand is over the puck
        env.step(env.expert_action())
    shown = env._obs()["images"]
    px = env.object_pixels()
    assert px["corner"] >= 5 and px["topview"] == 0  # why corner + topview triangulates the puck badly mid-grasp
    np.testing.assert_array_equal(shown["corner"], env._obs()["images"]["corner"])  # the puck is drawn again
    env.close()
    door = MetaWorldEnv("door-open-v3", ["corner"], size=32)
    with pytest.raises(ValueError, match="no object body"):
        door.object_pixels()
    door.close()


def test_an_env_dropped_without_close_leaves_the_others_frames_intact():
    import gc

    alone = MetaWorldEnv("reach-v3", ["corner", "topview"], size=64)
    expected = alone.reset(EVAL_SEED_BASE)["images"]
    alone.close()
    env = MetaWorldEnv("push-v3", ["corner"], size=64)
    env.reset(EVAL_SEED_BASE)
    env = MetaWorldEnv("reach-v3", ["corner", "topview"], size=64)  # the push env is garbage now, never closed
    gc.collect()
    frames = env.reset(EVAL_SEED_BASE)["images"]
    for cam in expected:
        np.testing.assert_array_equal(frames[cam], expected[cam])
    env.close()


def test_threads_creating_and_closing_envs_while_others_render_get_the_same_frames():
    # The fleet's robot threads open an env per task as they go; a renderer created or freed while another thread
    # rendered crashed the process (segmentation fault; a script of four threads over MT10 crashed 1 run in 3 before
    # the GL lock, 0 in 6 after). This small version rarely crashes without the lock: it guards the frames' content.
    import threading

    tasks = ["reach-v3", "push-v3", "drawer-open-v3"]

    def frames(task: str) -> list[dict]:
        env = MetaWorldEnv(task, ["corner", "topview"], size=64)
        out = [env.reset(EVAL_SEED_BASE)["images"]]
        out += [env.step(env.expert_action())[0]["images"] for _ in range(8)]
        env.close()
        return out

    expected = {t: frames(t) for t in tasks}
    got: dict[tuple[int, str], list[dict]] = {}

    def robot(i: int) -> None:
        for t in tasks[i:] + tasks[:i]:  # each thread opens and closes envs while the others render
            got[i, t] = frames(t)

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(got) == 9
    for (_, task), seq in got.items():
        for a, b in zip(seq, expected[task], strict=True):
            for cam in a:
                np.testing.assert_array_equal(a[cam], b[cam])


def test_camera_projection_puts_the_goal_on_its_rendered_marker():
    env = MetaWorldEnv("reach-v3", ["corner", "topview"], size=128)
    for seed in (EVAL_SEED_BASE, EVAL_SEED_BASE + 1):
        env.reset(seed)
        proj, masks, goal = env.camera_projections(), env.goal_mask(), env.env_state()[6:9]
        for cam in env.cameras:
            u, v, w = np.asarray(proj[cam]) @ np.r_[goal, 1.0]
            rows, cols = np.nonzero(masks[cam])
            centroid = (cols.mean() + 0.5) / 128 * 2 - 1, (rows.mean() + 0.5) / 128 * 2 - 1
            assert w > 0 and np.allclose((u / w, v / w), centroid, atol=1 / 64)  # within half a pixel
    assert camera_projections("mt10", ["topview"])["topview"] == env.camera_projections()["topview"]
    env.close()


def test_jittered_start_varies_the_hand_pose_reproducibly():
    env = MetaWorldEnv("reach-v3", ["topview"], size=32)
    plain = env.reset(3)["state"]
    starts = [jittered_start(env, seed, 15)["state"] for seed in range(6)]
    assert env.steps == 0  # the jitter does not count against the episode
    assert np.std([s[:3] for s in starts], axis=0).min() > 0.005  # metres: the start pose now varies per seed
    np.testing.assert_array_equal(jittered_start(env, 4, 15)["state"], starts[4])  # same seed, same start
    assert np.abs(starts[0][:3] - plain[:3]).max() > 0 or np.abs(starts[1][:3] - plain[:3]).max() > 0
    ep = generate_episode("reach-v3", seed=4, cameras=["topview"], size=32, env=env, start_jitter=15)
    assert ep.success
    np.testing.assert_array_equal(ep.state[0], starts[4])
    env.close()


def test_steps_after_success_extends_the_episode_toward_the_goal():
    """A longer tail repeats the same episode up to success, then shows the expert closing the last cm."""
    env = MetaWorldEnv("reach-v3", ["topview"], size=32)
    short = generate_episode("reach-v3", seed=2, cameras=["topview"], size=32, env=env, steps_after_success=0)
    long = generate_episode("reach-v3", seed=2, cameras=["topview"], size=32, env=env, steps_after_success=20)
    env.close()
    assert short.success and long.success and len(long.action) == len(short.action) + 20
    np.testing.assert_array_equal(long.state[:len(short.state)], short.state)
    goal = long.env_state[-1, 6:9]
    assert np.linalg.norm(long.state[-1, :3] - goal) < np.linalg.norm(short.state[-1, :3] - goal)


def test_seeds_change_the_scene():
    env = MetaWorldEnv("reach-v3", ["topview"], size=32)
    env.reset(1)
    goal_a = env.env._target_pos.copy()
    env.reset(2)
    assert np.abs(env.env._target_pos - goal_a).max() > 1e-3
    env.reset(1)
    np.testing.assert_allclose(env.env._target_pos, goal_a)  # same seed, same scene
    env.close()


def test_expert_succeeds_and_frames_precede_actions():
    ep = generate_episode("reach-v3", seed=0, cameras=["corner2"], size=32)
    assert ep.success and 10 < len(ep.action) < 200
    assert ep.frames["corner2"].shape == (len(ep.action), 32, 32, 3)
    assert ep.state.shape == (len(ep.action), 4)
    # the privileged positions recorded beside each frame: reach's goal is where the simulator put it
    assert ep.env_state.shape == (len(ep.action), 9) and ep.env_state.dtype == np.float32
    env = MetaWorldEnv("reach-v3", ["corner2"], size=32)
    env.reset(0)
    np.testing.assert_allclose(ep.env_state[0, 6:], env.env._target_pos, atol=1e-6)
    env.close()
    # state t+1 follows from action t: the hand moves in the direction it was told to
    moved = ep.state[1:, :3] - ep.state[:-1, :3]
    assert (np.sign(moved[:10, 1]) == np.sign(ep.action[:10, 1])).mean() > 0.7


def test_generate_episodes_is_deterministic_and_in_order():
    eps = list(generate_episodes(["reach-v3", "drawer-close-v3"], 2, ["corner2"], size=32, seed=5, workers=1,
                                 progress=False))
    assert [(e.task, e.seed) for e in eps] == [("reach-v3", 5), ("reach-v3", 6), ("drawer-close-v3", 5),
                                              ("drawer-close-v3", 6)]
    again = generate_episode("reach-v3", seed=5, cameras=["corner2"], size=32)
    np.testing.assert_array_equal(again.action, eps[0].action)


def test_images_are_upright():
    # the table (brown, lower half) must be below the wall/sky in corner2 after the 180-degree fix
    env = MetaWorldEnv("reach-v3", ["corner2"], size=64)
    img = env.reset(0)["images"]["corner2"].astype(float)
    env.close()
    brownness = lambda part: (part[..., 0] - part[..., 2]).mean()
    assert brownness(img[40:]) > brownness(img[:16])


def test_instructions_and_paraphrases():
    for task in MT10_TASKS:
        train = instructions_for(task)
        para = instructions_for(task, paraphrase=True)
        assert len(train) == 1 and len(para) >= 2 and not set(train) & set(para)
    with pytest.raises(KeyError, match="Did you mean 'reach-v3'"):
        instructions_for("reach-v2")


def test_task_names_and_constants():
    assert expand_tasks("mt10") == MT10_TASKS and len(MT10_TASKS) == 10
    with pytest.raises(ValueError, match="Did you mean 'push-v3'"):
        expand_tasks(["psuh-v3"])
    assert len(STATE_NAMES) == 4 and len(ACTION_NAMES) == 4


class _SpyEnv(MetaWorldEnv):
    """Records what the expert asked for and what was executed, per rollout."""

    def reset(self, seed=None):
        self.asked, self.executed = [], []
        return super().reset(seed)

    def expert_action(self):
        self.asked.append(super().expert_action())
        return self.asked[-1]

    def step(self, action):
        self.executed.append(np.array(action, np.float32))
        return super().step(action)


def test_action_noise_perturbs_what_is_executed_and_records_the_experts_action():
    env = _SpyEnv("reach-v3", ["topview"], size=32)
    clean = generate_episode("reach-v3", seed=3, cameras=["topview"], size=32, env=env)
    noisy = generate_episode("reach-v3", seed=3, cameras=["topview"], size=32, env=env, action_noise=0.2,
                             noise_correlation=0.9)
    assert clean.success and noisy.success
    np.testing.assert_array_equal(noisy.state[0], clean.state[0])  # the same scene and start...
    n = min(len(clean.state), len(noisy.state))
    assert np.abs(noisy.state[:n, :3] - clean.state[:n, :3]).max() > 0.01  # ...a different path (metres)
    asked, executed = np.stack(env.asked), np.stack(env.executed)
    np.testing.assert_array_equal(noisy.action, asked)  # the labels are the expert's own actions
    np.testing.assert_array_equal(executed[:, 3], asked[:, 3])  # the gripper as asked
    assert 0.05 < (executed[:, :3] - asked[:, :3]).std() < 0.4
    assert np.array_equal(noisy.env_state[0], clean.env_state[0])
    env.close()


def test_a_failed_noisy_rollout_is_retried_on_the_same_seed():
    class FailsFirst(_SpyEnv):
        resets = 0

        def reset(self, seed=None):
            FailsFirst.resets += 1
            return super().reset(seed)

        def step(self, action):
            obs, reward, done, info = super().step(action)
            if FailsFirst.resets == 1:  # the first rollout never succeeds and ends after 5 steps
                return obs, reward, self.steps >= 5, {**info, "success": False}
            return obs, reward, done, info

    env = FailsFirst("reach-v3", ["topview"], size=32)
    ep = generate_episode("reach-v3", seed=6, cameras=["topview"], size=32, env=env, action_noise=0.1)
    env.close()
    assert FailsFirst.resets == 2 and ep.success and ep.seed == 6
