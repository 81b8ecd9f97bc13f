"""Tests for prompts.py: text rendering on hand-made grids, and the real SmolLM2 GGUF through llama.cpp."""

import json
import subprocess
import sys

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid and BabyAI envs)
import numpy as np
import pytest
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

import prompts
from llmppo import advisers, bot, flat_obs, llama
from conftest import ROOT, outside_repo
from prompts import (
    DONE, DROP, FORWARD, LEFT, PICKUP, RIGHT, TOGGLE, describe_observation, parse_action_reply,
)

N_THREADS = 1  # the tests share 2 cores with other work: one llama.cpp thread never oversubscribes


# ----------------------------------------------------------------------------------------------------
# describe_observation on hand-made grids
# ----------------------------------------------------------------------------------------------------
def empty_view():
    image = np.zeros((7, 7, 3), dtype=np.uint8)
    image[:, :, 0] = OBJECT_TO_IDX["empty"]
    return image


def put(image, x, y, object_type, color="red", state="open"):
    image[x, y] = (OBJECT_TO_IDX[object_type], COLOR_TO_IDX[color], STATE_TO_IDX[state])


def test_every_object_type_is_described_with_its_egocentric_position():
    cases = [
        (("key", "yellow"), (2, 6), "yellow key one left"),
        (("ball", "blue"), (5, 4), "blue ball two forward two right"),
        (("box", "purple"), (3, 5), "purple box one forward"),
        (("door", "yellow", "locked"), (4, 5), "locked yellow door one forward one right"),
        (("door", "green", "closed"), (2, 3), "closed green door three forward one left"),
        (("door", "grey", "open"), (3, 0), "open grey door six forward"),
        (("goal", "green"), (6, 2), "goal four forward three right"),
        (("lava", "red"), (0, 6), "lava three left"),
    ]
    for args, (x, y), expected in cases:
        image = empty_view()
        put(image, x, y, *args)
        text = describe_observation(image, 0, "get to the goal")
        assert f"You see {expected}." in text, (expected, text)


def test_empty_view_carrying_nothing_and_mission():
    text = describe_observation(empty_view(), 2, "open the door")
    assert text == "Goal: open the door. You see nothing. You carry nothing."


def test_carried_object_is_read_from_the_agent_cell_and_not_listed_as_seen():
    image = empty_view()
    put(image, 3, 6, "key", "blue")
    text = describe_observation(image, 1, "open the blue door")
    assert text.endswith("You carry blue key.")
    assert "You see nothing." in text


def test_walls_only_nearest_straight_ahead_and_unseen_cells_skipped():
    image = empty_view()
    image[:, 3, 0] = OBJECT_TO_IDX["wall"]  # a wall row three steps ahead
    image[:, :3, 0] = OBJECT_TO_IDX["unseen"]  # behind it: not visible
    put(image, 1, 1, "ball", "red")  # hidden ball must not leak into the text ...
    image[1, 1, 0] = OBJECT_TO_IDX["unseen"]
    text = describe_observation(image, 0, "go to the red ball")
    assert "Wall three forward." in text
    assert "ball" not in text.split("Goal: go to the red ball.")[1]
    # No wall straight ahead before an unseen cell: nothing is said about walls.
    image = empty_view()
    image[3, 4, 0] = OBJECT_TO_IDX["unseen"]
    image[3, 2, 0] = OBJECT_TO_IDX["wall"]
    assert "Wall" not in describe_observation(image, 0, "x")


def test_ordering_is_deterministic_mission_objects_first_then_nearest_and_capped():
    image = empty_view()
    put(image, 3, 5, "box", "grey")  # distance 1
    put(image, 2, 5, "key", "red")  # distance 2
    put(image, 5, 6, "ball", "green")  # distance 2, beside
    put(image, 0, 0, "ball", "purple")  # distance 9, but the mission names it
    put(image, 6, 0, "key", "blue")  # distance 9
    put(image, 0, 1, "box", "yellow")  # distance 8
    text = describe_observation(image, 0, "go to the purple ball")
    assert text.startswith("Goal: go to the purple ball. You see purple ball six forward three left, "
                           "grey box one forward, green ball two right, red key one forward one left.")
    assert text.count(",") + 1 == prompts.MAX_OBJECTS
    assert "blue key" not in text and "yellow box" not in text
    assert describe_observation(image.copy(), 3, "go to the purple ball") == text  # pure and stable


def test_bad_image_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="shape"):
        describe_observation(np.zeros((7, 7)), 0, "x")


# ----------------------------------------------------------------------------------------------------
# actions as words
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reply, action", [
    ("I would go forward.", FORWARD), ("Turn left", LEFT), (" right", RIGHT), ("pick it up", PICKUP),
    ("Pickup the key", PICKUP), ("PICK_UP", PICKUP), ("drop", DROP), ("put it down now", DROP),
    ("toggle", TOGGLE), ("Open the door.", TOGGLE), ("I am done", DONE), ("go straight ahead", FORWARD),
    ("turn right, then left", RIGHT), ("asdf qwerty", None), ("", None), ("12345", None),
])
def test_parse_action_reply(reply, action):
    assert parse_action_reply(reply) == action


def test_allowed_actions_per_env():
    assert prompts.allowed_actions("BabyAI-GoToLocal-v0") == [LEFT, RIGHT, FORWARD]
    assert prompts.allowed_actions("BabyAI-PickupLoc-v0") == [LEFT, RIGHT, FORWARD, PICKUP]
    assert prompts.allowed_actions("BabyAI-OpenDoor-v0") == [LEFT, RIGHT, FORWARD, TOGGLE]
    assert prompts.allowed_actions("BabyAI-UnlockLocal-v0") == [LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE]
    assert prompts.allowed_actions("MiniGrid-DoorKey-5x5-v0") == [LEFT, RIGHT, FORWARD, PICKUP, TOGGLE]
    assert prompts.allowed_actions("MiniGrid-GoToDoor-5x5-v0") == [LEFT, RIGHT, FORWARD, DONE]
    assert prompts.allowed_actions("SomethingElse-v0") == list(range(7))


# ----------------------------------------------------------------------------------------------------
# bad input, baseline advisers
# ----------------------------------------------------------------------------------------------------
def test_missing_model_path_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        llama.resolve_model_path(str(tmp_path / "nope.gguf"))
    message = str(error.value)
    assert "does not exist" in message and "--llm-model-path" in message and "Llama-2-7B-Chat-GGUF" in message
    assert "\n" not in message
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"this is not a model")
    with pytest.raises(ValueError, match="not a GGUF file"):
        llama.resolve_model_path(str(not_gguf))
    assert llama.resolve_model_path(None).endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_make_adviser_rejects_unknown_names_and_bad_flags():
    with pytest.raises(ValueError, match="unknown adviser 'oracle'"):
        advisers.make_adviser("oracle")
    with pytest.raises(ValueError, match="--llm-temperature"):
        advisers.make_adviser("llm", temperature=0.0)
    with pytest.raises(ValueError, match="--llm-mode"):
        advisers.make_adviser("llm", mode="chat")


def assert_valid_probs(probs, n_rows):
    assert probs.shape == (n_rows, 7) and probs.dtype == np.float32
    assert np.all(probs > 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_expert_uniform_and_random_advisers():
    texts = ["Goal: a. You see nothing. You carry nothing.", "Goal: b. You see nothing. You carry nothing."]
    expert = advisers.make_adviser("expert", smoothing=0.1, actions=[0, 1, 2])
    probs = expert.action_probs(texts, np.array([2, -1]))
    assert_valid_probs(probs, 2)
    assert probs[0].argmax() == FORWARD and probs[0, FORWARD] > 0.9
    np.testing.assert_allclose(probs[1, :3], 1 / 3, atol=1e-3)  # no expert action: uniform, counted
    assert expert.stats["fallbacks"] == 1 and expert.stats["queries"] == 2
    with pytest.raises(ValueError, match="BabyAIBotWrapper"):
        expert.action_probs(texts)

    uniform = advisers.make_adviser("uniform", actions=[0, 1, 2, 3])
    probs = uniform.action_probs(texts)
    assert_valid_probs(probs, 2)
    np.testing.assert_allclose(probs, 1 / 7, atol=1e-6)  # all 7 actions: the exact no-advice control

    random_adviser = advisers.make_adviser("random", seed=3)
    first, again = random_adviser.action_probs(texts), random_adviser.action_probs(texts[::-1])[::-1]
    assert_valid_probs(first, 2)
    np.testing.assert_array_equal(first, again)  # consistent per observation text
    assert not np.allclose(first[0], first[1])  # but different across texts
    assert not np.allclose(first, advisers.make_adviser("random", seed=4).action_probs(texts))


# ----------------------------------------------------------------------------------------------------
# the real LLM
# ----------------------------------------------------------------------------------------------------
def reset_texts(env_id, seeds):
    env = bot.BabyAIBotWrapper(gym.make(env_id)) if env_id.startswith("BabyAI") else gym.make(env_id)
    texts = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        texts.append(describe_observation(obs["image"], obs["direction"], obs["mission"]))
    return texts


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("llm-cache"))


@pytest.fixture(scope="session")
def adviser(cache_dir):
    adviser = prompts.LLMAdviser(n_threads=N_THREADS, cache_dir=cache_dir,
                                 actions=prompts.allowed_actions("BabyAI-GoToLocal-v0"))
    yield adviser
    adviser.close()


@pytest.fixture(scope="session")
def gotolocal_texts():
    return reset_texts("BabyAI-GoToLocal-v0", seeds=range(4))


def test_llm_scores_are_valid_distributions_on_real_observations(adviser, gotolocal_texts, cache_dir):
    probs = adviser.action_probs(gotolocal_texts)
    assert_valid_probs(probs, len(gotolocal_texts))
    assert np.all(probs[:, 3:] < 1e-3)  # outside GoTo's allowed actions: only the floor
    assert adviser.stats["misses"] == len(set(gotolocal_texts)) and adviser.stats["fallbacks"] == 0

    doorkey_actions = prompts.allowed_actions("MiniGrid-DoorKey-5x5-v0")
    doorkey = prompts.LLMAdviser(n_threads=N_THREADS, cache_dir=cache_dir, actions=doorkey_actions)
    probs = doorkey.action_probs(reset_texts("MiniGrid-DoorKey-5x5-v0", seeds=[0, 1]))
    doorkey.close()
    assert_valid_probs(probs, 2)
    assert np.all(probs[:, doorkey_actions].sum(axis=1) > 0.99)


def test_cache_hit_on_repeat_and_temperature_applies_after_the_cache(adviser, gotolocal_texts):
    first = adviser.action_probs(gotolocal_texts)
    before = dict(adviser.stats)
    again = adviser.action_probs(gotolocal_texts)
    np.testing.assert_array_equal(first, again)
    assert adviser.stats["memory_hits"] == before["memory_hits"] + len(gotolocal_texts)
    assert adviser.stats["misses"] == before["misses"]
    assert adviser.stats["tokens_evaluated"] == before["tokens_evaluated"]
    assert adviser.stats["queries"] == before["queries"] + len(gotolocal_texts)

    adviser.temperature = 10.0  # softer, from the same cached raw scores
    try:
        soft = adviser.action_probs(gotolocal_texts)
    finally:
        adviser.temperature = 1.0
    assert adviser.stats["misses"] == before["misses"]
    entropy = lambda p: -(p * np.log(p)).sum(axis=1)
    assert np.all(entropy(soft) > entropy(first))


def test_cached_only_answers_from_the_cache_and_never_calls_the_llm(adviser, gotolocal_texts):
    seen = adviser.action_probs(gotolocal_texts[:1])
    unseen_text = gotolocal_texts[0].replace("Goal:", "Goal: quickly")
    before = dict(adviser.stats)
    probs = adviser.action_probs([gotolocal_texts[0], unseen_text], cached_only=True)
    np.testing.assert_array_equal(probs[0], seen[0])
    np.testing.assert_allclose(probs[1], 1 / 7, atol=1e-6)  # no advice for the unseen state
    assert adviser.stats["misses"] == before["misses"] and adviser.stats["skipped"] == before["skipped"] + 1


def test_a_stopped_adviser_skips_the_queries_not_yet_asked(adviser, gotolocal_texts):
    """Ctrl-C (the scripts point adviser.stop at their flag) during a step's uncached queries: the query under way
    finishes, the rest get no advice, are not cached and are not fallbacks, so a run stops within one query."""
    texts = [text.replace("Goal:", "Goal: now") for text in gotolocal_texts]
    before = dict(adviser.stats)
    adviser.stop = lambda: adviser.stats["tokens_evaluated"] > before["tokens_evaluated"]  # true after one query
    try:
        probs = adviser.action_probs(texts)
    finally:
        del adviser.stop  # back to the class's "never"
    no_advice = np.all(np.abs(probs - 1 / 7) < 1e-6, axis=1)
    assert no_advice.sum() == len(texts) - 1 and not no_advice[texts.index(min(texts))]  # asked in sorted order
    assert adviser.stats["misses"] == before["misses"] + 1 and adviser.stats["fallbacks"] == before["fallbacks"]
    assert adviser.stats["skipped"] == before["skipped"] + len(texts) - 1
    adviser.action_probs(texts)  # the skipped ones were not cached: they are asked now
    assert adviser.stats["misses"] == before["misses"] + len(texts)


def test_cached_score_equals_a_fresh_score_and_a_full_prompt_evaluation(adviser, gotolocal_texts):
    cached = adviser.action_probs(gotolocal_texts[:2])
    fresh_adviser = prompts.LLMAdviser(n_threads=N_THREADS, cache_dir=None, actions=adviser.actions)
    fresh = fresh_adviser.action_probs(gotolocal_texts[:2])
    np.testing.assert_allclose(fresh, cached, atol=2e-3)

    # The prefix KV reuse gives the same log-probs as evaluating the whole prompt from scratch.
    text = gotolocal_texts[0]
    fresh_backend = fresh_adviser.backend  # the in-process model (llmppo.llama.LlamaBackend)
    llm = fresh_backend.llm
    full_prompt = fresh_backend.tokenize_prompt(text)
    assert full_prompt[:fresh_backend.n_prefix_tokens] == fresh_backend.prefix_tokens
    llm.n_tokens = 0
    llm.eval(full_prompt)
    log_probs = fresh_backend._last_log_probs()
    from_scratch = [log_probs[fresh_backend.answer_tokens[a][0]] for a in adviser.actions]
    reused = np.array(adviser.raw_answer(text))[adviser.actions]
    np.testing.assert_allclose(reused, from_scratch, atol=2e-2)
    fresh_adviser.close()


def test_only_the_suffix_is_evaluated_per_uncached_query(adviser, gotolocal_texts):
    adviser.action_probs(gotolocal_texts)
    stats = adviser.stats
    assert stats["prefix_tokens"] > 40
    assert 5 < stats["tokens_per_uncached_query"] <= stats["prompt_tokens_per_query"] - stats["prefix_tokens"]
    assert stats["ms_per_uncached_query"] > 0


PERSIST_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
import prompts
adviser = prompts.LLMAdviser(n_threads=1, cache_dir={cache!r}, actions=[0, 1, 2])
adviser.action_probs({texts!r})
print(json.dumps(adviser.stats))
"""


def test_disk_cache_survives_a_new_process(tmp_path):
    texts = ["Goal: go to the red ball. You see red ball two forward. You carry nothing.",
             "Goal: go to the red ball. You see red ball one left. You carry nothing."]
    script = PERSIST_SCRIPT.format(root=ROOT, cache=str(tmp_path), texts=texts)
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                           cwd=outside_repo())
            for _ in range(2)]
    first, second = (json.loads(run.stdout.strip().splitlines()[-1]) for run in runs)
    assert first["misses"] == 2 and first["disk_hits"] == 0
    assert second["misses"] == 0 and second["disk_hits"] == 2 and second["tokens_evaluated"] == 0


def test_corrupt_disk_cache_is_rebuilt_with_a_warning(tmp_path):
    texts = ["Goal: open the door. You see closed red door one forward. You carry nothing."]
    adviser = prompts.LLMAdviser(n_threads=N_THREADS, cache_dir=str(tmp_path), actions=[0, 1, 2, 5])
    adviser.action_probs(texts)
    adviser.close()
    sqlite_file = tmp_path / "llm-advice-v1" / "cache.db"
    assert sqlite_file.exists()
    sqlite_file.write_bytes(b"\x00garbage, not sqlite\xff" * 512)
    with pytest.warns(UserWarning, match="corrupt"):
        adviser = prompts.LLMAdviser(n_threads=N_THREADS, cache_dir=str(tmp_path), actions=[0, 1, 2, 5])
    assert_valid_probs(adviser.action_probs(texts), 1)
    assert adviser.stats["misses"] == 1  # the cache was rebuilt empty
    adviser.close()
    reopened = prompts.LLMAdviser(n_threads=N_THREADS, cache_dir=str(tmp_path), actions=[0, 1, 2, 5])
    reopened.action_probs(texts)
    assert reopened.stats["disk_hits"] == 1  # and works again
    reopened.close()


def test_generate_mode_and_garbage_reply_fallback(gotolocal_texts):
    generator = prompts.LLMAdviser(n_threads=N_THREADS, cache_dir=None, mode="generate", actions=[0, 1, 2])
    probs = generator.action_probs(gotolocal_texts[:2])
    assert_valid_probs(probs, 2)
    assert generator.stats["misses"] == 2 and generator.stats["tokens_evaluated"] > 0

    fallbacks = generator.stats["fallbacks"]
    garbage = generator.probs_from_reply("xyzzy 42 <|im_end|>")
    assert generator.stats["fallbacks"] == fallbacks + 1
    np.testing.assert_allclose(garbage[:3], 1 / 3, atol=1e-3)
    named = generator.probs_from_reply("I would go forward.")
    assert named.argmax() == FORWARD and generator.stats["fallbacks"] == fallbacks + 1
    generator.probs_from_reply("pick it up")  # a real action, but not allowed in this env
    assert generator.stats["fallbacks"] == fallbacks + 2
    generator.close()


# ----------------------------------------------------------------------------------------------------
# the expert wrapper
# ----------------------------------------------------------------------------------------------------
def test_following_the_expert_solves_gotolocal():
    env = bot.BabyAIBotWrapper(gym.make("BabyAI-GoToLocal-v0"))
    successes = 0
    for seed in range(10):
        obs, info = env.reset(seed=seed)
        for _ in range(env.unwrapped.max_steps):
            assert 0 <= info["expert_action"] < 7
            obs, reward, terminated, truncated, info = env.step(info["expert_action"])
            if terminated or truncated:
                successes += int(reward > 0)
                assert info["expert_action"] == -1
                break
    assert successes >= 8


def test_the_texts_of_the_scripts_flat_observations_are_those_of_the_dict_ones():
    import ppo_baseline as baseline

    env = gym.make("BabyAI-GoToLocal-v0")
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        flat, cache = baseline.flatten_observation(obs, {}), {}
        texts = flat_obs.observation_texts(np.stack([flat, flat]), cache, baseline.MISSION_WORDS)
        assert texts == [describe_observation(obs["image"], obs["direction"], obs["mission"])] * 2 and len(cache) == 1


def test_expert_wrapper_in_a_vector_env_and_elsewhere():
    envs = gym.vector.SyncVectorEnv(
        [lambda: bot.BabyAIBotWrapper(gym.make("BabyAI-GoToLocal-v0")) for _ in range(2)])
    obs, infos = envs.reset(seed=0)
    expert_actions = bot.expert_actions_from_infos(infos, 2)
    assert expert_actions.shape == (2,) and np.all((0 <= expert_actions) & (expert_actions < 7))
    for _ in range(5):
        obs, _, _, _, infos = envs.step(np.random.default_rng(0).integers(0, 3, size=2))
        assert np.all(bot.expert_actions_from_infos(infos, 2) >= -1)
    envs.close()

    with pytest.warns(UserWarning, match="not a BabyAI level"):
        env = bot.BabyAIBotWrapper(gym.make("MiniGrid-DoorKey-5x5-v0"))
    _, info = env.reset(seed=0)
    assert info["expert_action"] == -1


# ----------------------------------------------------------------------------------------------------
# the noisy expert: an adviser of known accuracy, with the real BabyAI bot underneath
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bot_states():
    """Distinct (observation text, expert action) pairs from GoToLocal episodes led by the bot with 30% random actions."""
    env = bot.BabyAIBotWrapper(gym.make("BabyAI-GoToLocal-v0"))
    rng = np.random.default_rng(0)
    states = {}
    for seed in range(150):
        obs, info = env.reset(seed=seed)
        for _ in range(40):
            states[(describe_observation(obs["image"], obs["direction"], obs["mission"]), info["expert_action"])] = 1
            action = info["expert_action"] if rng.random() > 0.3 else int(rng.integers(3))
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated or info["expert_action"] < 0:
                break
    texts, expert_actions = zip(*[(text, action) for text, action in states if action >= 0])
    assert len(texts) > 500
    return list(texts), np.array(expert_actions)


@pytest.mark.parametrize("accuracy", [1.0, 0.6, 0.25, 0.0])
def test_noisy_expert_agreement_matches_its_accuracy(bot_states, accuracy):
    texts, expert_actions = bot_states
    adviser = advisers.make_adviser("noisy-expert", accuracy=accuracy, seed=1,
                                   actions=prompts.allowed_actions("BabyAI-GoToLocal-v0"))
    probs = adviser.action_probs(texts, expert_actions)
    assert_valid_probs(probs, len(texts))
    agreement = (probs.argmax(1) == expert_actions).mean()
    tolerance = 4 * np.sqrt(accuracy * (1 - accuracy) / len(texts)) + 1e-9  # 4 standard errors
    assert abs(agreement - accuracy) <= tolerance, (agreement, accuracy, tolerance)
    assert adviser.stats["agreed"] == int(round(agreement * len(texts)))
    np.testing.assert_allclose(probs.max(1), 0.8, atol=1e-3)  # as confident as an LLM, whatever its accuracy
    wrong = probs.argmax(1) != expert_actions
    assert set(probs.argmax(1)[wrong]) <= {0, 1, 2}  # wrong advice stays within GoToLocal's allowed actions
    # consistent, like a cached LLM: the same state gets the same answer
    np.testing.assert_array_equal(probs, adviser.action_probs(texts, expert_actions))


def test_noisy_expert_calibrated_confidence_and_subgoal_ranking(bot_states):
    texts, expert_actions = bot_states
    calibrated = advisers.make_adviser("noisy-expert", accuracy=0.6, calibrated=True, actions=[0, 1, 2, 3, 4, 5])
    probs = calibrated.action_probs(texts[:50], expert_actions[:50])
    np.testing.assert_allclose(probs.max(1), 0.6, atol=1e-3)
    assert calibrated.action_probs(texts[:1], [-1])[0].max() < 0.2 and calibrated.stats["fallbacks"] == 1
    with pytest.raises(ValueError, match="BabyAIBotWrapper"):
        calibrated.action_probs(texts[:1])
    with pytest.raises(ValueError, match="accuracy"):
        advisers.make_adviser("noisy-expert", accuracy=1.5)

    candidates = ["pick up the red key", "open the red door", "go to the green goal", "drop the ball"]
    for accuracy in (1.0, 0.5):
        noisy = advisers.make_adviser("noisy-expert", accuracy=accuracy, seed=2)
        tops = [noisy.subgoal_probs(text, candidates, expert_plan=["open the red door"]).argmax() for text in texts]
        agreement = np.mean(np.array(tops) == 1)
        assert abs(agreement - accuracy) <= 4 * np.sqrt(accuracy * (1 - accuracy) / len(texts)) + 1e-9
    # nothing on the bot's plan: a right answer pays nothing (zeros, like the expert), a wrong one ranks a candidate
    off_plan = [advisers.make_adviser("noisy-expert", accuracy=0.5).subgoal_probs(text, candidates) for text in texts]
    assert 0.35 < np.mean([not probs.any() for probs in off_plan]) < 0.65
