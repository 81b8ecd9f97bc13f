"""ppo_baseline.py: run the real script with tiny budgets and check what it wrote."""

import glob
import math
import os
import re
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

import ppo_baseline as baseline
from llmppo import bot
from llmppo.env_groups import EnvGroups
from conftest import ROOT, TINY, only_run, outside_repo, run_script, scalars


# ---- observation preprocessing -------------------------------------------------------------------------------------


def test_encode_mission_known_unknown_and_padding():
    encoded = baseline.encode_mission("Go to the red ball")
    words = ["go", "to", "the", "red", "ball"]
    assert list(encoded[:5]) == [baseline.WORD_TO_ID[word] for word in words]
    assert (encoded[5:] == baseline.PAD_ID).all() and encoded.shape == (baseline.MAX_MISSION_WORDS,)
    assert baseline.encode_mission("go to the zebra")[3] == baseline.UNKNOWN_ID
    assert len(set(baseline.WORD_TO_ID.values())) == len(baseline.MISSION_WORDS)


def test_flat_observation_layout_matches_the_dict_observation():
    env = gym.make("BabyAI-GoToLocal-v0")
    obs, _ = env.reset(seed=3)
    flat = baseline.flatten_observation(obs, {})
    assert flat.dtype == np.uint8 and flat.shape == (baseline.OBS_SIZE,)
    assert (flat[: baseline.VIEW_CELLS].reshape(7, 7, 3) == obs["image"]).all()
    assert flat[baseline.VIEW_CELLS] == obs["direction"]
    assert (flat[baseline.VIEW_CELLS + 1 :] == baseline.encode_mission(obs["mission"])).all()


def test_every_mission_word_of_a_babyai_level_is_in_the_vocabulary():
    env = baseline.make_env("BabyAI-GoToLocal-v0")()
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        assert baseline.UNKNOWN_ID not in obs[baseline.VIEW_CELLS + 1 :]


def test_babyai_level_generation_prints_are_silenced(capfd):
    env = baseline.make_env("BabyAI-GoToLocal-v0")()
    for seed in range(30):  # some of these seeds reject samples while generating the level
        env.reset(seed=seed)
    assert "Sampling rejected" not in capfd.readouterr().out


def test_the_agent_reads_the_mission():
    torch.manual_seed(0)
    agent = baseline.Agent(7)
    env = baseline.make_env("BabyAI-GoToLocal-v0")()
    obs, _ = env.reset(seed=0)
    other = obs.copy()
    other[baseline.VIEW_CELLS + 1 :] = baseline.encode_mission("go to the purple box")
    with torch.no_grad():
        features = agent.features(torch.as_tensor(np.stack([obs, other])))
    assert not torch.allclose(features[0], features[1])


def observations(env_id, seeds):
    env = baseline.make_env(env_id)()
    return torch.as_tensor(np.stack([env.reset(seed=seed)[0] for seed in seeds]))


def test_the_memory_is_a_gru_reset_where_an_episode_starts():
    """get_states' written-out equations are nn.GRUCell's, step by step, with the memory zeroed at each `done`."""
    torch.manual_seed(0)
    agent = baseline.Agent(7)
    steps, num_envs = 5, 3
    obs = observations("BabyAI-GoToLocal-v0", range(steps * num_envs))
    done = torch.zeros(steps, num_envs)
    done[2, 1] = done[3, 0] = 1.0
    start = torch.randn(num_envs, baseline.MEMORY_SIZE)
    with torch.no_grad():
        hidden, last = agent.get_states(obs, start, done.flatten())
        features, memory, expected = agent.features(obs).view(steps, num_envs, -1), start, []
        for step in range(steps):
            memory = agent.memory(features[step], memory * (1 - done[step, :, None]))
            expected.append(memory)
    assert torch.allclose(hidden[:, -baseline.MEMORY_SIZE :], torch.cat(expected), atol=1e-5)
    assert torch.allclose(last, memory, atol=1e-5)
    # after a reset, the memory no longer depends on where it started
    with torch.no_grad():
        _, other_last = agent.get_states(obs, torch.randn(num_envs, baseline.MEMORY_SIZE), done.flatten())
    assert torch.allclose(last[:2], other_last[:2], atol=1e-6) and not torch.allclose(last[2], other_last[2])


# ---- the envs stepped in several processes ---------------------------------------------------------------------------


def expert_env():
    """A BabyAI env whose infos carry a masked key (the bot's action), as in the LLM scripts."""
    return baseline.FlatObservation(bot.BabyAIBotWrapper(gym.make("BabyAI-GoToLocal-v0")))


def assert_same(expected, got):
    """Equal through tuples, dicts and object arrays (infos["final_obs"] holds an array per env that ended)."""
    if isinstance(expected, (tuple, list)) or (isinstance(expected, np.ndarray) and expected.dtype == object):
        assert len(expected) == len(got)
        for expected_item, got_item in zip(expected, got):
            assert_same(expected_item, got_item)
    elif isinstance(expected, dict):
        assert expected.keys() == got.keys()
        for key in expected.keys() - {"t"}:  # infos["episode"]["t"]: the episode's wall time
            assert_same(expected[key], got[key])
    else:
        np.testing.assert_array_equal(expected, got)


def test_env_groups_step_exactly_like_one_sync_vector_env():
    """Envs split over 3 processes (shares of 2, 3 and 2 envs) give the observations, rewards, episode ends and infos
    (masks included) of one SyncVectorEnv, through episode ends and autoresets."""
    num_envs, autoreset = 7, gym.vector.AutoresetMode.SAME_STEP
    wrap = gym.wrappers.vector.RecordEpisodeStatistics
    one = wrap(gym.vector.SyncVectorEnv([expert_env] * num_envs, autoreset_mode=autoreset))
    groups = wrap(EnvGroups([expert_env] * num_envs, num_groups=3, autoreset_mode=autoreset))
    assert groups.unwrapped.group_sizes == [2, 3, 2] and len(groups.unwrapped.processes) == 2
    actions = np.random.default_rng(0).integers(0, 7, (150, num_envs))
    steps = [(one.reset(seed=5), groups.reset(seed=5))]
    steps += [(one.step(action), groups.step(action)) for action in actions]
    episodes = 0
    for expected, got in steps:
        assert_same(expected, got)
        episodes += int(np.sum(expected[-1].get("_episode", 0)))
    assert episodes > 5 and "_expert_action" in steps[-1][1][-1]  # episodes ended; the masked key came through
    processes = groups.unwrapped.processes
    one.close()
    groups.close()
    assert not any(process.is_alive() for process in processes)


class BrokenEnv(gym.Wrapper):
    def step(self, action):
        raise ValueError("this env is broken")


def test_a_failing_env_in_a_worker_process_raises_its_error():
    envs = EnvGroups([expert_env, lambda: BrokenEnv(expert_env())], num_groups=2)
    envs.reset(seed=1)
    with pytest.raises(RuntimeError, match="(?s)env worker process failed.*this env is broken"):
        envs.step(np.zeros(2, dtype=int))
    envs.close()
    assert not any(process.is_alive() for process in envs.processes)


def rollout_batch(agent, num_steps=32, num_envs=4):
    """A fixed batch as the script's rollout stores it (step-major), from real DoorKey steps, with episode starts
    marked inside the rollout and a rollout that starts from a non-zero memory."""
    envs = baseline.make_vector_env("MiniGrid-DoorKey-5x5-v0", num_envs)
    next_obs, _ = envs.reset(seed=1)
    dones = torch.zeros(num_steps, num_envs)
    dones[5, 0] = dones[13, 2] = dones[20, 1] = dones[20, 3] = 1.0
    memory = torch.randn(num_envs, baseline.MEMORY_SIZE)
    obs, memories, actions = [], [], []
    with torch.no_grad():
        for step in range(num_steps):
            obs.append(torch.as_tensor(next_obs))
            memories.append(memory)
            action, _, _, _, memory = agent.get_action_and_value(obs[-1], memory, dones[step])
            actions.append(action)
            next_obs, *_ = envs.step(action.numpy())
    envs.close()
    flat = lambda tensors: torch.stack(tensors).flatten(0, 1)
    return flat(obs), flat(memories), dones.flatten(), flat(actions)


def replay(agent, batch, inds, start_memories):
    """The update's replay of some chunks (columns of `inds`), as the script calls it: new log-probs, entropies, values."""
    b_obs, b_memories, b_dones, b_actions = batch
    mb_inds = inds.ravel()
    _, newlogprob, entropy, newvalue, _ = agent.get_action_and_value(b_obs[mb_inds], start_memories, b_dones[mb_inds],
                                                                     b_actions[mb_inds])
    return newlogprob, entropy, newvalue.flatten()


def test_a_whole_rollout_chunk_is_the_previous_update():
    """--recurrence = --num-steps: the minibatches are the previous update's (whole env sequences, replayed from the
    memory the rollout started with), so the losses and their gradients are the same, bit for bit."""
    torch.manual_seed(0)
    agent = baseline.Agent(7)
    num_steps, num_envs = 32, 4
    batch = rollout_batch(agent, num_steps, num_envs)
    b_memories = batch[1]
    initial_memory = b_memories[:num_envs]
    flat_inds = np.arange(num_steps * num_envs).reshape(num_steps, num_envs)  # the previous update's env sequences
    chunk_inds = baseline.rollout_chunks(num_steps, num_envs, num_steps)
    assert np.array_equal(chunk_inds, flat_inds)
    for mb_envs in ([2, 0], [3, 1]):  # one epoch's minibatches after a shuffle
        losses, gradients = [], []
        for outputs in (replay(agent, batch, flat_inds[:, mb_envs], initial_memory[mb_envs]),
                        replay(agent, batch, chunk_inds[:, mb_envs], b_memories[chunk_inds[0, mb_envs]])):
            newlogprob, entropy, newvalue = outputs
            loss = -newlogprob.mean() - 0.01 * entropy.mean() + 0.5 * (newvalue**2).mean()
            agent.zero_grad()
            loss.backward()
            losses.append(loss.item())
            gradients.append([parameter.grad.clone() for parameter in agent.parameters()])
        assert losses[0] == losses[1]
        assert all(torch.equal(before, after) for before, after in zip(*gradients))


def test_a_chunked_update_restarts_the_memory_at_episode_starts():
    """Chunks of 8 steps replayed from the memories the rollout stored give the whole-sequence replay's outputs;
    from a wrong start memory, a chunk's outputs are still right from the step where an episode starts."""
    torch.manual_seed(0)
    agent = baseline.Agent(7)
    num_steps, num_envs, recurrence = 32, 4, 8
    batch = rollout_batch(agent, num_steps, num_envs)
    b_dones = batch[2]
    flat_inds = np.arange(num_steps * num_envs).reshape(num_steps, num_envs)
    chunk_inds = baseline.rollout_chunks(num_steps, num_envs, recurrence)
    assert chunk_inds.shape == (recurrence, num_envs * num_steps // recurrence)
    assert sorted(chunk_inds.ravel()) == list(range(num_steps * num_envs))
    with torch.no_grad():
        whole = torch.stack(replay(agent, batch, flat_inds, batch[1][:num_envs]))  # the rollout's own outputs, flat order
        chunked = torch.stack(replay(agent, batch, chunk_inds, batch[1][chunk_inds[0]]))
        wrong_start = torch.stack(replay(agent, batch, chunk_inds, torch.randn(chunk_inds.shape[1], baseline.MEMORY_SIZE)))
    order = chunk_inds.ravel()  # flat index of each replayed sample
    assert torch.allclose(chunked, whole[:, order], atol=1e-5)
    same = torch.isclose(wrong_start, whole[:, order], atol=1e-5).all(0).view(recurrence, -1)
    for chunk in range(chunk_inds.shape[1]):
        starts = np.flatnonzero(b_dones[chunk_inds[:, chunk]].numpy())
        if len(starts) and starts[0] > 0:  # an episode starts inside this chunk: right from there on, wrong before
            assert same[starts[0]:, chunk].all() and not same[: starts[0], chunk].any()
    assert sum(len(np.flatnonzero(b_dones[chunk_inds[:, c]].numpy())) for c in range(chunk_inds.shape[1])) == 4


def test_stride_one_puts_a_2x2_window_at_every_cell():
    """With --patch-stride 1 a cell of the view reaches exactly the (up to 4) windows that cover it."""
    torch.manual_seed(0)
    agent = baseline.Agent(7, patch_stride=1)
    obs = observations("BabyAI-GoToLocal-v0", [0])
    channels = 16
    for x, y in [(0, 0), (3, 3), (6, 2)]:
        other = obs.clone()
        cell = (x * 7 + y) * 3
        other[0, cell : cell + 3] = torch.tensor([6, 3, 0]) if other[0, cell] != 6 else torch.tensor([5, 1, 0])
        with torch.no_grad():
            windows = [agent.features(o)[0, : 49 * channels].view(7, 7, channels) for o in (obs, other)]
        changed = {(a, b) for a in range(7) for b in range(7) if not torch.equal(windows[0][a, b], windows[1][a, b])}
        covering = {(a, b) for a in (x - 1, x) for b in (y - 1, y) if 0 <= a < 7 and 0 <= b < 7}
        assert changed == covering, (x, y, changed)


def test_the_memoryless_agent_has_no_gru():
    agent = baseline.Agent(7, memory=False)
    assert not any(name.startswith("memory.") for name in agent.state_dict())
    obs = observations("MiniGrid-DoorKey-5x5-v0", range(4))
    action, _, _, value, memory = agent.get_action_and_value(obs, agent.initial_memory(4, "cpu"), torch.zeros(4))
    assert action.shape == (4,) and value.shape == (4, 1) and memory.shape == (4, 0)


# ---- the script end to end -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the tests below: logs, checkpoint, stdout."""
    run_dir = tmp_path_factory.mktemp("runs")
    result = run_script("--total-timesteps", "1024", "--save-model", "--run-dir", str(run_dir), "--log-every", "2", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, only_run(run_dir)


def test_training_writes_tensorboard_logs_with_finite_returns(trained):
    result, run_path = trained
    logged = scalars(run_path)
    for tag in ["charts/episodic_return", "charts/episodic_length", "charts/SPS", "losses/value_loss",
                "losses/policy_loss", "losses/entropy", "losses/approx_kl"]:
        assert logged.get(tag), f"{tag} missing from {sorted(logged)}"
    assert all(math.isfinite(value) for value in logged["charts/episodic_return"])
    assert "frames 1024" in result.stdout and "FPS" in result.stdout


def test_checkpoint_loads_into_a_fresh_agent(trained):
    _, run_path = trained
    checkpoint = torch.load(os.path.join(run_path, "agent.pt"), weights_only=True)
    assert checkpoint["args"]["env_id"] == "MiniGrid-DoorKey-5x5-v0" and checkpoint["global_step"] == 1024
    agent = baseline.Agent(7)
    agent.load_state_dict(checkpoint["model"])


def test_eval_on_another_env_id_with_gifs(trained, tmp_path):
    _, run_path = trained
    flags = ["--checkpoint", os.path.join(run_path, "agent.pt"), "--eval-episodes", "3", "--env-id", "BabyAI-GoToObj-v0"]
    result = run_script(*flags, "--capture-video", "--run-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "eval on BabyAI-GoToObj-v0" in result.stdout and "success rate" in result.stdout
    gifs = glob.glob(os.path.join(only_run(str(tmp_path)), "videos", "*.gif"))  # under --run-dir, not ./videos
    assert gifs and all(os.path.getsize(gif) > 0 for gif in gifs)


def test_fine_tune_continues_from_a_checkpoint(trained, tmp_path):
    _, run_path = trained
    result = run_script("--checkpoint", os.path.join(run_path, "agent.pt"), "--fine-tune", "--total-timesteps", "256",
                        "--run-dir", str(tmp_path), *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded" in result.stdout and "frames 256" in result.stdout


def test_the_memory_and_patch_flags_follow_the_checkpoint(tmp_path):
    run_dir = tmp_path / "runs"
    result = run_script("--no-memory", "--patch-stride", "1", "--total-timesteps", "256", "--save-model", "--run-dir",
                        str(run_dir), *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint_path = os.path.join(only_run(str(run_dir)), "agent.pt")
    model = torch.load(checkpoint_path, weights_only=True)["model"]
    assert not any(name.startswith("memory.") for name in model)
    assert model["actor.0.weight"].shape[1] == 7 * 7 * 16 + 4 + 32  # a feature per window at each of the 7x7 cells
    # evaluated without --no-memory and --patch-stride: the agent is built as it was trained
    result = run_script("--checkpoint", checkpoint_path, "--eval-episodes", "2", "--run-dir", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "success rate" in result.stdout


def test_a_checkpoint_of_the_earlier_agent_gets_one_clear_line(trained, tmp_path):
    """The agent before FiLM and the memory: no film.* or memory.* weights, heads on the 548 plain features."""
    _, run_path = trained
    checkpoint = torch.load(os.path.join(run_path, "agent.pt"), weights_only=True)
    model = {name: value for name, value in checkpoint["model"].items() if not name.startswith(("film.", "memory."))}
    for head in ["actor.0.weight", "critic.0.weight"]:
        model[head] = model[head][:, : 4 * 4 * 16 + 4 + 32].clone()
    checkpoint["model"] = model
    checkpoint["args"].pop("memory")
    earlier = tmp_path / "earlier.pt"
    torch.save(checkpoint, earlier)
    result = run_script("--checkpoint", str(earlier), "--eval-episodes", "2", "--run-dir", str(tmp_path / "runs"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds the earlier agent" in lines[0] and "train a new agent" in lines[0], result.stderr
    assert not os.path.exists(tmp_path / "runs")


def test_actor_vs_bot_splits_episodes_by_the_target_in_view(trained):
    """tools/actor_vs_bot.py: the trained actor and the BabyAI bot on the same GoToLocal episodes."""
    _, run_path = trained
    tool = os.path.join(ROOT, "tools", "actor_vs_bot.py")
    result = subprocess.run([sys.executable, tool, run_path, "--episodes", "6", "--argmax"], capture_output=True,
                            text=True, timeout=300, cwd=outside_repo())
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in result.stdout.splitlines()
            if line.startswith("| target") or line.startswith("| all")}
    assert int(rows["all"][0]) == 6 and sum(int(rows[name][0]) for name in rows if name != "all") == 6
    for cells in rows.values():
        assert 0 <= float(cells[1]) <= 1 and abs(sum(float(share) for share in cells[4:]) - 1) < 0.01
    bad = subprocess.run([sys.executable, tool, run_path, "--env-id", "MiniGrid-DoorKey-5x5-v0"], capture_output=True,
                         text=True, timeout=120, cwd=outside_repo())
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "GoTo level" in bad.stderr


def test_same_seed_gives_the_same_learning_curve(tmp_path):
    """Twice with the envs stepped in two processes (the default), once in one: the same curve each time (the
    update's two torch threads, the default, included)."""
    curves = []
    for attempt, env_processes in enumerate(["2", "2", "1"]):
        run_dir = tmp_path / str(attempt)
        result = run_script("--total-timesteps", "1280", "--seed", "7", "--run-dir", str(run_dir),
                            "--env-processes", env_processes, *TINY)
        assert result.returncode == 0, result.stderr[-3000:]
        logged = scalars(only_run(str(run_dir)))
        curves.append((logged["charts/episodic_return"], logged["losses/value_loss"]))
    assert curves[0] == curves[1] == curves[2]


# The moment torch is first imported, what GOMP_SPINCOUNT is (libgomp reads it when torch loads).
SPIN_WHEN_TORCH_LOADS = """
import os, runpy, sys
seen = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("GOMP_SPINCOUNT"))
sys.meta_path.insert(0, Watch())
sys.argv = [sys.argv[1], "--help"]
sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as `python SCRIPT` would
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
print("GOMP_SPINCOUNT when torch loaded:", seen[0])
"""


@pytest.mark.parametrize("script", ["ppo_baseline.py", "ppo_llm_policy.py", "ppo_llm_explore.py"])
def test_torch_threads_spin_briefly_unless_the_user_set_it(script):
    """Two runs side by side on two cores crawl while the update's idle torch threads spin (issue 34): each script
    shortens the spin before torch loads, and keeps a GOMP_SPINCOUNT the user set."""
    for user_value, expected in [(None, "1000"), ("20000", "20000")]:
        env = {key: value for key, value in os.environ.items() if key != "GOMP_SPINCOUNT"}
        if user_value is not None:
            env["GOMP_SPINCOUNT"] = user_value
        result = subprocess.run([sys.executable, "-c", SPIN_WHEN_TORCH_LOADS, os.path.join(ROOT, script)], env=env,
                                capture_output=True, text=True, timeout=120, cwd=outside_repo())
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"GOMP_SPINCOUNT when torch loaded: {expected}" in result.stdout, result.stdout[-3000:]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--env-id", "MiniGrid-DoorKey-5x5-v9"], "did you mean MiniGrid-DoorKey-5x5-v0"),
        (["--env-id", "CartPole-v1"], "use a MiniGrid-* or BabyAI-* id"),
        (["--num-envs", "0"], "--num-envs must be at least 1"),
        (["--num-minibatches", "3"], "--num-minibatches 3 must divide the rollout's 128 chunks"),
        (["--recurrence", "12"], "--num-steps 64 must divide by --recurrence 12"),
        (["--checkpoint", "/nonexistent/agent.pt", "--eval-episodes", "2"], "does not exist"),
        (["--capture-video"], "add --eval-episodes N"),
        (["--patch-stride", "3"], "--patch-stride must be 1 or 2"),
        (["--env-processes", "0"], "--env-processes must be at least 1"),
        (["--torch-threads", "0"], "--torch-threads must be at least 1"),
    ],
)
def test_bad_input_gives_one_clear_line(flags, message, tmp_path):
    result = run_script(*flags, "--run-dir", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not os.listdir(tmp_path)  # nothing started


def test_ctrl_c_saves_a_checkpoint_and_keeps_the_logs(tmp_path):
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "ppo_baseline.py"), "--total-timesteps", "10000000", "--log-every", "1",
         "--run-dir", str(tmp_path), *TINY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=outside_repo(),
    )
    deadline = time.time() + 120
    for line in process.stdout:  # wait until training is under way
        if line.startswith("update 3/") or time.time() > deadline:
            break
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "saving a checkpoint" in stdout
    run_path = only_run(str(tmp_path))
    checkpoint = torch.load(os.path.join(run_path, "agent.pt"), weights_only=True)
    assert checkpoint["global_step"] >= 3 * 4 * 32
    assert len(scalars(run_path)["losses/value_loss"]) >= 3


def test_the_overlap_experiment_trains_with_the_rollout_in_a_worker(tmp_path):
    """tools/ppo_overlap.py: each update's rollout comes from the worker process (one update behind; --sequential: none);
    with --decoupled the ratio starts at the weights before the update. All log the baseline's scalars; bad input is
    one line."""
    for decoupled in [[], ["--decoupled"], ["--sequential", "--decoupled"]]:
        run_dir = tmp_path / str(len(decoupled))
        result = run_script("--total-timesteps", "640", "--seed", "3", "--run-dir", str(run_dir), "--eval-episodes", "2",
                            *decoupled, *TINY, script="tools/ppo_overlap.py")
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
        logged = scalars(only_run(str(run_dir)))
        assert len(logged["losses/approx_kl"]) == 5 and all(math.isfinite(value) for value in logged["losses/value_loss"])
        assert len(logged["eval/success_rate"]) == 1
    bad = run_script("--resume", str(run_dir), "--run-dir", str(tmp_path / "bad"), script="tools/ppo_overlap.py")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert not (tmp_path / "bad").exists()


def test_bench_update_times_the_update_with_and_without_the_memory():
    """tools/bench_update.py: the update of both agents timed on one rollout, the narrower memory the one asked for;
    bad input is one line."""
    result = run_script("--num-envs", "4", "--num-steps", "8", "--recurrence", "4", "--update-epochs", "1", "--repeats", "2",
                        "--memory-input", "4", "--memory-size", "8", script="tools/bench_update.py")
    assert result.returncode == 0, result.stderr[-3000:]
    times = re.findall(r"^  (.+): ([\d.]+) ms$", result.stdout, re.MULTILINE)
    assert [name for name, _ in times] == ["memory (GRU 8 units on a 4-unit projection)", "no memory"], result.stdout
    assert all(float(ms) > 0 for _, ms in times)
    bad = run_script("--num-steps", "8", "--recurrence", "3", script="tools/bench_update.py")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --recurrence must divide --num-steps", bad.stderr
    bad = run_script("--env-id", "MiniGrid-NoSuchLevel-v0", script="tools/bench_update.py")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--env-id" in bad.stderr, bad.stderr
