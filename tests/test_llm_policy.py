"""ppo_llm_policy.py with every adviser, the real embedded model included (no fake LLM)."""

import re

import pytest

from conftest import TINY, only_run, run_script, scalars

LLM_SCALARS = ["llm/coef", "llm/queries", "llm/cache_hit_rate", "llm/ms_per_query", "llm/fallbacks",
               "llm/agree_with_policy", "llm/kl_policy_prior", "llm/logprob_replay_error"]


def run_policy(*flags, cache_dir):
    return run_script(*flags, "--llm-cache-dir", str(cache_dir), "--llm-n-threads", "2", script="ppo_llm_policy.py")


@pytest.mark.parametrize(
    "adviser, env_id",
    [("llm", "MiniGrid-DoorKey-5x5-v0"), ("expert", "BabyAI-GoToObj-v0"), ("uniform", "MiniGrid-DoorKey-5x5-v0"),
     ("random", "BabyAI-GoToObj-v0")],
)
def test_a_tiny_run_logs_the_llm_scalars(adviser, env_id, tmp_path):
    result = run_policy("--advisor", adviser, "--env-id", env_id, "--total-timesteps", "512", "--distill-coef", "0.1",
                        "--eval-episodes", "2", "--run-dir", str(tmp_path / "runs"), *TINY, cache_dir=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    logged = scalars(only_run(str(tmp_path / "runs")))
    for tag in LLM_SCALARS:
        assert logged.get(tag), f"{tag} missing from {sorted(logged)}"
    assert logged["llm/coef"][0] == 0.5 and logged["llm/coef"][-1] < 0.5  # the default --llm-coef, annealed
    assert logged["llm/queries"][0] == 4 * 32  # every state of the first rollout was advised
    # The PPO ratio is computed for the mixed policy from stored tensors: before the first gradient step it is 1.
    assert max(logged["llm/logprob_replay_error"]) < 1e-5
    assert "eval of the actor alone (no LLM)" in result.stdout


def test_uniform_advice_changes_nothing(tmp_path):
    """A uniform prior adds the same constant to every logit: the run must match the baseline's exactly."""
    flags = ["--total-timesteps", "1280", "--seed", "3", *TINY]
    baseline = run_script(*flags, "--run-dir", str(tmp_path / "baseline"))
    guided = run_policy(*flags, "--advisor", "uniform", "--run-dir", str(tmp_path / "uniform"), cache_dir=tmp_path)
    assert baseline.returncode == 0 and guided.returncode == 0, guided.stderr[-3000:]
    returns = [scalars(only_run(str(tmp_path / name)))["charts/episodic_return"] for name in ("baseline", "uniform")]
    assert returns[0] == pytest.approx(returns[1], abs=1e-6)


def test_the_expert_as_the_policy_solves_the_level(tmp_path):
    result = run_policy("--advisor", "expert", "--llm-only", "--env-id", "BabyAI-GoToObj-v0", "--eval-episodes", "10",
                        "--eval-argmax", "--num-envs", "4", "--run-dir", str(tmp_path), cache_dir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    success_rate = float(re.search(r"success rate ([\d.]+)", result.stdout).group(1))
    assert success_rate >= 0.9


def test_the_llm_as_the_policy_prints_a_success_rate_and_reuses_its_cache(tmp_path):
    flags = ["--advisor", "llm", "--llm-only", "--env-id", "BabyAI-GoToObj-v0", "--eval-episodes", "2",
             "--num-envs", "2", "--run-dir", str(tmp_path / "runs")]
    first = run_policy(*flags, cache_dir=tmp_path / "cache")
    assert first.returncode == 0, first.stderr[-3000:]
    assert re.search(r"adviser 'llm' as the policy on BabyAI-GoToObj-v0: mean return [\d.]+, success rate [\d.]+",
                     first.stdout), first.stdout
    queries = re.search(r"\((\d+) queries, (\d+) uncached", first.stdout)
    assert queries and int(queries[2]) > 0, first.stdout
    # the same seed plays the same states: the second run finds every answer in the persistent cache
    second = run_policy(*flags, cache_dir=tmp_path / "cache")
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"({queries[1]} queries, 0 uncached" in second.stdout, second.stdout


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--advisor", "oracle"], "unknown --advisor 'oracle'"),
        (["--advisor", "expert"], "needs a BabyAI-* level"),
        (["--llm-model-path", "/nonexistent/llama-2-7b-chat.Q4_K_M.gguf"], "--llm-model-path"),
        (["--llm-only"], "add --eval-episodes N"),
        (["--llm-anneal-frac", "0"], "--llm-anneal-frac must be a number in (0, 1]"),
    ],
)
def test_bad_llm_input_gives_one_clear_line(flags, message, tmp_path):
    result = run_policy(*flags, "--run-dir", str(tmp_path / "runs"), cache_dir=tmp_path / "cache")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_the_entropy_bonus_is_the_actors_own_not_the_mixed_policys():
    """A bonus on the mixed policy's entropy pays the actor to cancel a confident adviser (a bad adviser then leaves a
    distorted actor behind); the bonus must be the actor's own entropy, whatever the adviser says."""
    import numpy as np
    import torch
    from torch.distributions.categorical import Categorical

    import ppo_llm_policy as policy

    torch.manual_seed(0)
    agent = policy.Agent(7)
    env = policy.make_env("MiniGrid-DoorKey-5x5-v0")()
    obs = torch.as_tensor(np.stack([env.reset(seed=seed)[0] for seed in range(4)]))
    confident_prior = torch.log(torch.tensor([[0.994] + [0.001] * 6] * 4))
    _, logprob, entropy, _, _, actor_logits = agent.get_action_and_value(
        obs, agent.initial_memory(4, "cpu"), torch.zeros(4), confident_prior, 1.0
    )
    mixed = Categorical(logits=actor_logits + confident_prior)
    assert torch.allclose(entropy, Categorical(logits=actor_logits).entropy())
    assert (entropy > mixed.entropy() + 1.0).all()  # near-uniform actor vs a near-deterministic mixture
