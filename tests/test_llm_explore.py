"""ppo_llm_explore.py and prompts.py sections 3 and 7: candidate subgoals, achievements read from the env's state,
the subgoal advisers (the real embedded LLM included), and tiny training runs."""

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid and BabyAI envs)
import numpy as np
import pytest
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX
from minigrid.core.world_object import Ball, Door, Key

from conftest import TINY, only_run, run_script, scalars

import prompts
from llmppo import advisers, bot
from prompts import DROP, FORWARD, LEFT, PICKUP, RIGHT, TOGGLE

LLM_SCALARS = ["llm/bonus_coef", "llm/queries", "llm/cache_hit_rate", "llm/ms_per_query", "llm/bonus_per_episode",
               "llm/subgoals_achieved"]


def run_explore(*flags, cache_dir):
    return run_script(*flags, "--llm-cache-dir", str(cache_dir), "--llm-n-threads", "1", script="ppo_llm_explore.py")


# ---- candidate subgoals from the egocentric view ---------------------------------------------------------------------
def view(*objects, carrying=None):
    """A 7x7 view of empty floor; objects are (x, y, type, color, state); the agent stands at (3, 6)."""
    image = np.zeros((7, 7, 3), dtype=np.uint8)
    image[:, :, 0] = OBJECT_TO_IDX["empty"]
    if carrying:  # the agent's own cell shows what it carries
        objects += ((3, 6, *carrying, "open"),)
    for x, y, object_type, color, state in objects:
        image[x, y] = (OBJECT_TO_IDX[object_type], COLOR_TO_IDX[color], STATE_TO_IDX[state])
    return image


def texts(image, mission="use the key to open the door and then get to the goal", actions=None):
    return [subgoal.text for subgoal in prompts.candidate_subgoals(image, 0, mission, actions)]


DOORKEY = prompts.allowed_actions("MiniGrid-DoorKey-5x5-v0")  # no drop


def test_candidates_are_grounded_in_the_view_and_what_is_carried():
    objects = ((2, 6, "key", "yellow", "open"), (4, 4, "door", "yellow", "locked"), (5, 2, "goal", "green", "open"))
    # Locked door, no key: it cannot be opened yet. Nearest first, then by kind.
    assert texts(view(*objects), actions=DOORKEY) == [
        "pick up the yellow key", "go to the yellow key", "go to the yellow door", "go to the green goal"]
    # Carrying the yellow key: the door can be opened, nothing can be picked up, drop only where the env can.
    carrying = view(*objects[1:], carrying=("key", "yellow"))
    assert texts(carrying, actions=DOORKEY) == ["open the yellow door", "go to the yellow door", "go to the green goal"]
    assert "drop the yellow key" in texts(carrying)
    assert "open the yellow door" not in texts(view(*objects[1:], carrying=("key", "red")))  # wrong key
    # GoTo levels: only goto (and through) subgoals.
    assert texts(view(*objects), actions=prompts.allowed_actions("BabyAI-GoToLocal-v0")) == [
        "go to the yellow key", "go to the yellow door", "go to the green goal"]
    # Doors by state; the object already faced is not a goto candidate; empty view: nothing.
    doors = view((3, 5, "ball", "red", "open"), (1, 3, "door", "blue", "open"), (5, 3, "door", "grey", "closed"))
    assert texts(doors) == ["pick up the red ball", "open the grey door", "go through the blue door",
                            "go to the blue door", "go to the grey door"]
    assert texts(view()) == []


def test_candidates_are_capped_deterministic_and_keep_the_mission_objects():
    colors = ["red", "green", "blue", "purple", "yellow"]
    objects = tuple((x, 5, "ball", colors[x], "open") for x in range(5)) + ((6, 0, "key", "grey", "open"),)
    image = view(*objects)
    first = texts(image, mission="pick up the grey key")
    assert len(first) == prompts.MAX_SUBGOALS and first == texts(image.copy(), mission="pick up the grey key")
    assert "pick up the grey key" in first and "go to the grey key" in first  # far away, but the mission's
    assert "pick up the grey key" not in texts(image, mission="go to the red ball")


# ---- achievements from the env's state -------------------------------------------------------------------------------
def hand_built_env():
    """MiniGrid-Empty-8x8 with a yellow key in front of the agent, a locked yellow door and a red ball."""
    tracker = bot.SubgoalTracker(gym.make("MiniGrid-Empty-8x8-v0"))
    tracker.reset(seed=0)
    env = tracker.unwrapped
    env.agent_pos, env.agent_dir = np.array([1, 1]), 0  # facing right (+x)
    env.grid.set(2, 1, Key("yellow"))
    env.grid.set(4, 1, Door("yellow", is_locked=True))
    env.grid.set(4, 2, Ball("red"))
    tracker.before = bot.env_snapshot(tracker)  # objects placed after reset: look again
    return tracker


def step_texts(tracker, action):
    return [text for text in tracker.step(action)[4]["subgoals_achieved"].split("\n") if text]


def test_achievements_are_read_from_the_env_state_once_per_episode():
    tracker = hand_built_env()
    script = [
        (PICKUP, ["pick up the yellow key"]), (FORWARD, []), (FORWARD, ["go to the yellow door"]),
        (TOGGLE, ["open the yellow door"]), (FORWARD, ["go through the yellow door"]),
        (DROP, ["drop the yellow key"]),  # the key lands in front: not a "go to the yellow key"
        (PICKUP, []), (DROP, []),  # no farming: the same achievements again pay nothing
        (RIGHT, ["go to the red ball"]), (LEFT, ["go to the yellow key"]),
    ]
    for action, expected in script:
        assert step_texts(tracker, action) == expected, (action, expected)
    assert tracker.unwrapped.grid.get(4, 1).is_open
    # A new episode starts with a clean slate.
    tracker.reset(seed=0)
    env = tracker.unwrapped
    env.agent_pos, env.agent_dir = np.array([1, 1]), 0
    env.grid.set(2, 1, Key("yellow"))
    tracker.before = bot.env_snapshot(tracker)
    assert step_texts(tracker, PICKUP) == ["pick up the yellow key"]


def test_the_last_step_of_an_episode_is_read_from_final_info():
    envs = gym.vector.SyncVectorEnv([lambda: bot.SubgoalTracker(gym.make("MiniGrid-Empty-5x5-v0"))] * 2,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs.reset(seed=0)
    for env in envs.envs:  # one step from the goal at (3, 3), facing it
        env.unwrapped.agent_pos, env.unwrapped.agent_dir = np.array([3, 2]), 1
        env.before = bot.env_snapshot(env)
    _, reward, terminated, _, infos = envs.step(np.array([FORWARD, LEFT]))
    assert terminated.tolist() == [True, False] and reward[0] > 0
    assert bot.subgoals_from_infos(infos, 2) == [["go to the green goal"], []]
    envs.close()


def test_bonus_weights_prob_topk_and_ties():
    probs = np.array([0.5, 0.3, 0.2])
    np.testing.assert_allclose(bot.bonus_weights(probs, "prob"), probs)
    np.testing.assert_allclose(bot.bonus_weights(probs, "topk", 1), [1, 0, 0])
    np.testing.assert_allclose(bot.bonus_weights(probs, "topk", 2), [1, 1, 0])
    np.testing.assert_allclose(bot.bonus_weights(np.full(4, 0.25), "topk", 1), 0.25)  # uniform: k/n each
    np.testing.assert_allclose(bot.bonus_weights(np.zeros(3), "topk", 1), 0)  # expert, nothing on its plan


def test_the_expert_ranks_the_bots_next_step_first_and_following_it_pays_every_achievement():
    expert, uniform = advisers.make_adviser("expert"), advisers.make_adviser("uniform")
    actions = prompts.allowed_actions("BabyAI-UnlockLocal-v0")
    for seed in range(3):
        env = bot.SubgoalTracker(bot.BabyAIBotWrapper(gym.make("BabyAI-UnlockLocal-v0")))
        obs, info = env.reset(seed=seed)
        achieved_all, unpaid = [], []
        for _ in range(100):
            candidates = [s.text for s in prompts.candidate_subgoals(obs["image"], 0, obs["mission"], actions)]
            plan = tuple(text for text in info["expert_plan"].split("\n") if text)
            probs = dict(zip(candidates, expert.subgoal_probs("", candidates, plan)))
            assert sum(uniform.subgoal_probs("", candidates)) == pytest.approx(1.0 if candidates else 0.0)
            obs, reward, terminated, truncated, info = env.step(info["expert_action"])
            achieved = [text for text in info["subgoals_achieved"].split("\n") if text]
            achieved_all += achieved
            unpaid += [text for text in achieved if probs.get(text, 0.0) < 1.0]
            if terminated or truncated:
                break
        assert reward > 0 and achieved_all[-1].startswith("open the") and len(achieved_all) == 4
        # Each achievement was the bot's next planned step, ranked first. The exception: the bot may face the key
        # while it still plans to go to the locked door (seed 0), before it switches to fetching the key.
        assert len(unpaid) <= 1 and all(text.startswith("go to the") for text in unpaid), (achieved_all, unpaid)


# ---- the real LLM ---------------------------------------------------------------------------------------------------
def test_llm_subgoal_probs_is_a_cached_distribution_over_the_candidates(tmp_path):
    adviser = advisers.make_adviser("llm", n_threads=1, cache_dir=str(tmp_path),
                                           actions=prompts.allowed_actions("BabyAI-UnlockLocal-v0"))
    obs_text = "Goal: open the door. You see locked red door two forward one right, red key one left. You carry nothing."
    candidates = ["pick up the red key", "go to the red key", "go to the red door"]
    probs = adviser.subgoal_probs(obs_text, candidates)
    assert probs.shape == (3,) and probs.dtype == np.float32 and np.all(probs > 0)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert adviser.stats["misses"] == 1 and adviser.stats["queries"] == 1
    np.testing.assert_array_equal(adviser.subgoal_probs(obs_text, candidates), probs)
    assert adviser.stats["misses"] == 1 and adviser.stats["memory_hits"] == 1  # the repeat is a cache hit
    assert adviser.subgoal_probs(obs_text, candidates[:1]).tolist() == [1.0] and adviser.stats["queries"] == 2
    assert adviser.action_probs([obs_text]).shape == (1, 7)  # still the action adviser too
    adviser.close()
    again = advisers.make_adviser("llm", n_threads=1, cache_dir=str(tmp_path), actions=adviser.actions)
    np.testing.assert_allclose(again.subgoal_probs(obs_text, candidates), probs, atol=1e-6)
    assert again.stats["disk_hits"] == 1 and again.stats["misses"] == 0  # and it persists on disk
    again.close()


# ---- the script end to end ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("adviser, env_id", [("llm", "BabyAI-PickupLoc-v0"), ("expert", "BabyAI-GoToObj-v0")])
def test_a_tiny_run_logs_the_llm_scalars(adviser, env_id, tmp_path):
    result = run_explore("--advisor", adviser, "--env-id", env_id, "--total-timesteps", "512", "--eval-episodes", "2",
                         "--run-dir", str(tmp_path / "runs"), *TINY, cache_dir=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    logged = scalars(only_run(str(tmp_path / "runs")))
    for tag in LLM_SCALARS:
        assert logged.get(tag), f"{tag} missing from {sorted(logged)}"
    assert logged["llm/bonus_coef"][0] == pytest.approx(0.1) and logged["llm/bonus_coef"][-1] == 0.0  # annealed, then no queries
    assert logged["llm/queries"][0] > 0 and logged["llm/queries"][-1] == 0
    assert max(logged["charts/episodic_return"]) <= 1.0  # extrinsic only
    assert f"LLM adviser '{adviser}'" in result.stdout and "eval of the actor alone (no bonus)" in result.stdout


def test_uniform_action_bonus_is_exactly_the_baseline(tmp_path):
    """Uniform advice has no unique top action, so the action-mode bonus is 0 and the run is the baseline's."""
    flags = ["--total-timesteps", "512", "--seed", "3", "--env-id", "BabyAI-GoToObj-v0", *TINY]
    baseline = run_script(*flags, "--run-dir", str(tmp_path / "baseline"))
    explore = run_explore(*flags, "--advisor", "uniform", "--bonus-mode", "action", "--run-dir", str(tmp_path / "uniform"),
                          cache_dir=tmp_path)
    assert baseline.returncode == 0 and explore.returncode == 0, explore.stderr[-3000:]
    returns = [scalars(only_run(str(tmp_path / name)))["charts/episodic_return"] for name in ("baseline", "uniform")]
    assert returns[0] and returns[0] == pytest.approx(returns[1], abs=1e-6)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--advisor", "oracle"], "unknown --advisor 'oracle'"),
        (["--advisor", "expert"], "needs a BabyAI-* level"),
        (["--bonus-mode", "count"], "--bonus-mode must be prob, topk or action"),
        (["--bonus-anneal-frac", "0"], "--bonus-anneal-frac must be a number in (0, 1]"),
    ],
)
def test_bad_bonus_input_gives_one_clear_line(flags, message, tmp_path):
    result = run_explore(*flags, "--run-dir", str(tmp_path / "runs"), cache_dir=tmp_path / "cache")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
