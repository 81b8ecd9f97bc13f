"""The served LLM adviser against real server processes on 127.0.0.1, each test against both: llama_cpp.server and
llama.cpp's own llama-server (built once from the installed llama-cpp-python's sources: tools/llama_server.py), serving
the same embedded SmolLM2 GGUF."""

import glob
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, TINY, only_run, outside_repo, run_script, scalars

import prompts
from llmppo import advisers, llama
from advice_eval import collect_states
from bench_server import start_server, stop_server
from llama_server import start_llama_server

SERVERS = ["llama_cpp.server", "llama-server"]
# Served log-probs against in-process ones: llama_cpp.server returns llama.cpp's logits through the same Python code
# (equal to float rounding); llama-server computes its log-probs in float32 in C++ (measured within 2e-4 nats).
TOLERANCE = {"llama_cpp.server": 1e-4, "llama-server": 1e-3}


def start(kind):
    """One server of `kind` with the embedded model; llama-server serves it under an alias, so the chat template
    comes from its /props (there is no GGUF path to read)."""
    if kind == "llama_cpp.server":
        return start_server(llama.default_model_path())
    return start_llama_server(llama.default_model_path(), parallel=4, extra=("--alias", "smollm2"))


@pytest.fixture(scope="session", params=SERVERS)
def server(request):
    process, base_url = start(request.param)
    yield base_url
    stop_server(process)


def kind(request) -> str:
    return request.node.callspec.params["server"]


def test_served_scores_equal_the_in_process_ones(server, request):
    texts, _ = collect_states("BabyAI-UnlockLocal-v0", 20, 0.2, seed=1)
    actions = prompts.allowed_actions("BabyAI-UnlockLocal-v0")
    local = advisers.make_adviser("llm", actions=actions, cache_dir=None, n_threads=1)
    # One request at a time: llama-server evaluates concurrent requests in one batch across its slots, and a prompt's
    # log-probs then depend on the prompts batched with it (benchmarks/pages/server); alone, each is the in-process one.
    served = advisers.make_adviser("llm", actions=actions, cache_dir=None, base_url=server, max_concurrency=1)
    assert served.prefix == local.prefix and served.backend.template_source == {
        "llama_cpp.server": f"the chat template of {os.path.basename(llama.default_model_path())}",
        "llama-server": "the server's /props"}[kind(request)]
    local_probs, served_probs = local.action_probs(texts), served.action_probs(texts)
    assert served.stats["misses"] == len(set(texts)) and served.stats["requests"] >= len(set(texts))
    assert served.stats["prompt_tokens"] > 0 and served.stats["fallbacks"] == 0
    for text in texts:  # every allowed word came back in the top-100, with the in-process log-prob
        local_raw, served_raw = np.array(local.raw_answer(text)), np.array(served.raw_answer(text))
        assert np.all(np.isfinite(served_raw[actions]))
        np.testing.assert_allclose(served_raw[actions], local_raw[actions], atol=TOLERANCE[kind(request)])
    np.testing.assert_allclose(served_probs, local_probs, atol=TOLERANCE[kind(request)])
    # Subgoal ranking goes through the same backend and ranks like the in-process model.
    candidates = ["go to the yellow key", "pick up the yellow key", "go to the locked yellow door"]
    np.testing.assert_allclose(served.subgoal_probs(texts[0], candidates), local.subgoal_probs(texts[0], candidates),
                               atol=1e-3)
    local.close()
    served.close()


def test_a_small_top_k_scores_missing_words_by_echo_or_floors_them_and_rps_is_capped(server, request):
    texts, _ = collect_states("BabyAI-UnlockLocal-v0", 8, 0.2, seed=2)
    texts = list(dict.fromkeys(texts))
    actions = prompts.allowed_actions("BabyAI-UnlockLocal-v0")
    local = advisers.make_adviser("llm", actions=actions, cache_dir=None, n_threads=1)
    served = advisers.make_adviser("llm", actions=actions, cache_dir=None, base_url=server, top_logprobs=2, max_rps=5)
    # With the prompt's first token kept (<|im_start|>, SmolLM2's BOS id), llama_cpp.server's echo lines up with the
    # prompt and passes the start-up check: the words missing from the top-2 are scored as continuations, exactly.
    # llama-server does not echo ("Only no echo is supported").
    assert served.backend.echo_scoring == (kind(request) == "llama_cpp.server")
    start = time.monotonic()
    probs = served.action_probs(texts)
    elapsed = time.monotonic() - start
    assert served.stats["requests"] > len(texts) or not served.backend.echo_scoring  # plus the echoes, if any
    assert (served.stats["requests"] - 1) / elapsed <= 5.0  # requests start at least 1/5 s apart
    if served.backend.echo_scoring:
        for text in texts:
            np.testing.assert_allclose(np.array(served.raw_answer(text))[actions],
                                       np.array(local.raw_answer(text))[actions], atol=1e-3)
        # A server without an exact echo: the words outside the top-2 get the floor probability.
        served.backend.echo_scoring, served.cache.memory = False, type(served.cache.memory)()
        probs = served.action_probs(texts)
    assert np.allclose(probs.sum(1), 1) and np.any(np.isclose(probs[:, actions], prompts.PROB_FLOOR, rtol=0.01))
    local.close()
    served.close()


def run_served(script, *flags, run_dir, cache_dir, base_url):
    return run_script("--llm-base-url", base_url, "--run-dir", str(run_dir), "--llm-cache-dir", str(cache_dir),
                      "--total-timesteps", "256", *TINY, *flags, script=script)


@pytest.mark.parametrize("script, env_id", [("ppo_llm_policy.py", "MiniGrid-DoorKey-5x5-v0"),
                                            ("ppo_llm_explore.py", "BabyAI-UnlockLocal-v0")])
def test_tiny_runs_log_usage_and_a_second_run_makes_no_request(server, script, env_id, tmp_path):
    first = run_served(script, "--env-id", env_id, "--llm-usd-per-mtok", "0.5", run_dir=tmp_path / "first",
                       cache_dir=tmp_path / "cache", base_url=server)
    assert first.returncode == 0, first.stderr[-3000:]
    logged = scalars(only_run(str(tmp_path / "first")))
    assert sum(logged["llm/uncached_queries"]) > 0 and logged["llm/requests"][-1] > 0
    assert logged["llm/prompt_tokens"][-1] > 0 and logged["llm/usd"][-1] > 0
    assert "requests (0 retries, 0 failed)" in first.stdout and "prompt +" in first.stdout
    second = run_served(script, "--env-id", env_id, run_dir=tmp_path / "second", cache_dir=tmp_path / "cache",
                        base_url=server)
    assert second.returncode == 0, second.stderr[-3000:]
    logged = scalars(only_run(str(tmp_path / "second")))
    assert sum(logged["llm/uncached_queries"]) == 0 and logged["llm/requests"][-1] == 0


@pytest.mark.parametrize("server_kind", SERVERS)
def test_a_server_stopped_mid_run_gives_fallbacks_and_one_warning(server_kind, tmp_path):
    process, base_url = start(server_kind)
    try:
        run = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "ppo_llm_policy.py"), "--llm-base-url", base_url, "--llm-timeout", "2",
             "--llm-anneal-frac", "1", "--total-timesteps", "1536", *TINY, "--log-every", "1", "--run-dir",
             str(tmp_path / "runs"), "--llm-cache-dir", "none"],
            cwd=outside_repo(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first_line = run.stdout.readline()
        while first_line and not first_line.startswith("update 1/"):
            first_line = run.stdout.readline()
        assert first_line.startswith("update 1/"), run.stderr.read()[-3000:]
        stop_server(process)
        stdout, stderr = run.communicate(timeout=300)
    finally:
        stop_server(process)
    assert run.returncode == 0, stderr[-3000:]
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: the LLM server")]
    assert len(warnings) == 1, stderr[-3000:]
    fallbacks = int(stdout.split(" fallbacks")[0].rsplit(" ", 1)[1])
    assert fallbacks > 0 and "failed)" in stdout


@pytest.mark.parametrize("flags, message", [
    (["--llm-base-url", "http://127.0.0.1:9/v1"], "cannot reach an LLM server"),
    (["--llm-model", "no-such-model"], "is not one of them"),
    (["--llm-api-key-env", "MINIGRID_LLM_PPO_NO_SUCH_KEY"], "environment variable is not set"),
])
def test_bad_server_set_up_gives_one_line_and_no_run_directory(server, flags, message, tmp_path):
    result = run_script("--llm-base-url", server, *flags, "--run-dir", str(tmp_path / "runs"), script="ppo_llm_policy.py")
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "runs")


def test_the_benchmark_passes_the_server_to_its_llm_runs(server, tmp_path):
    command = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--preset", "tiny", "--only", "policy+llm",
               "--workers", "1", "--out", str(tmp_path), "--llm-cache-dir", str(tmp_path / "cache"),
               "--llm-base-url", server]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=outside_repo())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (path,) = glob.glob(str(tmp_path / "runs" / "*policy+llm*" / "result.json"))
    with open(path) as f:
        made = json.load(f)
    assert f"--llm-base-url {server}" in made["command"] and "requests (0 retries" in made["llm_summary"]


def test_the_chat_api_reads_answer_words_or_counts_a_fallback(server):
    texts, _ = collect_states("BabyAI-GoToLocal-v0", 6, 0.2, seed=3)
    texts = list(dict.fromkeys(texts))
    actions = prompts.allowed_actions("BabyAI-GoToLocal-v0")
    chat = advisers.make_adviser("llm", actions=actions, cache_dir=None, base_url=server, api="chat")
    probs = chat.action_probs(texts)
    uniform = prompts.finalize_probs(prompts.uniform_probs(actions))
    no_word = [np.allclose(row, uniform) for row in probs]  # SmolLM2's chat answers often start with "You ..."
    assert chat.stats["fallbacks"] == sum(no_word) and np.allclose(probs.sum(1), 1)
    ranked = chat.subgoal_probs(texts[0], ["go to the red ball", "go to the grey door", "go to the blue key"])
    assert np.isclose(ranked.sum(), 1) and ranked.max() - ranked.min() > 0.01  # the digits came back with log-probs
    chat.close()


def test_the_prompt_keeps_the_chat_templates_first_token_in_process_and_served(server, request):
    """Issue 38: SmolLM2's BOS token is <|im_start|>, the opening of its first chat turn, and llama.cpp does not add it
    (the GGUF sets tokenizer.ggml.add_bos_token = false): the prompt must keep it. The tokens llama.cpp evaluates are
    the tokenization of the whole rendered chat template, <|im_start|> first; a KV-reused score equals a fresh one."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    texts, _ = collect_states("BabyAI-GoToLocal-v0", 6, 0.2, seed=3)
    texts = list(dict.fromkeys(texts))[:3]  # distinct: each one is evaluated, none comes from the memory cache
    actions = prompts.allowed_actions("BabyAI-GoToLocal-v0")
    local = advisers.make_adviser("llm", actions=actions, cache_dir=None, n_threads=1)
    llm = local.backend.llm
    template = llm.metadata["tokenizer.chat_template"]
    im_start = llm.tokenize(b"<|im_start|>", add_bos=False, special=True)
    assert len(im_start) == 1 and llm.token_bos() == im_start[0]
    for text in texts:
        messages = [{"role": "system", "content": prompts.SYSTEM_PROMPT},
                    {"role": "user", "content": prompts.instruction_text(actions) + text}]
        rendered = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template).render(
            messages=messages, add_generation_prompt=True) + prompts.SCORE_LEAD_IN
        assert local.prompt_text(text) == rendered and rendered.startswith("<|im_start|>system\n")
        local.raw_answer(text)  # evaluates the prompt (the instructions' KV cache reused)
        evaluated = list(llm.input_ids[: len(local.backend.tokenize_prompt(text))])
        assert evaluated == llm.tokenize(rendered.encode(), add_bos=False, special=True) and evaluated[0] == im_start[0]
    subgoal_text = local.subgoal_text(prompts.subgoal_query(texts[0], ["go to the red ball", "turn around"]))
    assert subgoal_text.startswith("<|im_start|>system\n")
    # A KV-reused score equals a from-scratch one (a fresh adviser, its first query after the instructions).
    fresh = advisers.make_adviser("llm", actions=actions, cache_dir=None, n_threads=1)
    np.testing.assert_allclose(fresh.raw_answer(texts[-1]), local.raw_answer(texts[-1]), atol=2e-2)
    # The served adviser sends the same text, first token included, and gets the same scores.
    served = advisers.make_adviser("llm", actions=actions, cache_dir=None, base_url=server)
    assert served.prefix == local.prefix and served.subgoal_prefix.startswith("<|im_start|>")
    np.testing.assert_allclose(np.array(served.raw_answer(texts[0]))[actions],
                               np.array(local.raw_answer(texts[0]))[actions], atol=TOLERANCE[kind(request)])
    for adviser in (local, fresh, served):
        adviser.close()


def test_bench_server_prints_how_far_served_scores_are_from_in_process():
    """tools/bench_server.py compares each server's raw scores with the in-process ones: a fresh llama-server asked one
    request at a time agrees within float rounding."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench_server.py"), "--paths", "in-process",
                             "llama-server:2", "--rounds", "1", "--num-states", "4"], capture_output=True, text=True,
                            timeout=600, cwd=outside_repo())
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = [i for i, line in enumerate(lines) if "largest difference from the in-process raw scores" in line]
    assert len(header) == 1, result.stdout
    rows = {cells[0]: cells[1:] for cells in (line.strip("| ").split(" | ") for line in lines[header[0] + 2:] if line.startswith("| "))}
    assert set(rows) == {"llama-server:2, concurrency 1", "llama-server:2, concurrency 16"}, result.stdout
    largest, off = rows["llama-server:2, concurrency 1"]
    assert float(largest) < 1e-3 and off == "0 of 4", result.stdout
