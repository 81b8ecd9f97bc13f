"""The seed's model family, Llama-2-chat, through every adviser path: a tiny Llama GGUF with Llama-2's real
SentencePiece tokenizer (tests/llama2_model.py), with and without a chat template in the file, in process and behind a
real llama_cpp.server process on 127.0.0.1."""

import numpy as np
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from conftest import TINY, only_run, run_script, scalars
from llama2_model import LLAMA2_CHAT_TEMPLATE, write_llama2_gguf

import prompts
from llmppo import advisers
from advice_eval import collect_states
from bench_server import start_server, stop_server

BOS = 1  # Llama-2's <s>
CANDIDATES = ["go to the grey key", "pick up the grey key", "go to the locked grey door"]


@pytest.fixture(scope="module", params=["template", "no-template"])
def model_path(request, tmp_path_factory):
    """The Llama-2-chat stand-in, once with Meta's chat template in the GGUF and once without (many published
    Llama-2-chat GGUFs carry none: the [INST] format is then chosen by the model's name)."""
    path = tmp_path_factory.mktemp("llama2") / f"tiny-{request.param}.gguf"  # the file name says nothing of Llama-2
    return write_llama2_gguf(path, chat_template=request.param == "template")


@pytest.fixture(scope="module")
def texts():
    texts, _ = collect_states("BabyAI-UnlockLocal-v0", 12, 0.2, seed=1)
    return list(dict.fromkeys(texts))[:5]


def inst_prompt(user: str) -> str:
    """Meta's Llama-2-chat format, without its <s>: llama.cpp adds BOS itself for this model."""
    return f"[INST] <<SYS>>\n{prompts.SYSTEM_PROMPT}\n<</SYS>>\n\n{user} [/INST]"


def meta_template(user: str) -> str:
    """Meta's published template rendered as Hugging Face renders it, <s> included."""
    return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(LLAMA2_CHAT_TEMPLATE).render(
        messages=[{"role": "system", "content": prompts.SYSTEM_PROMPT}, {"role": "user", "content": user}],
        bos_token="<s>", eos_token="</s>", add_generation_prompt=True)


def test_the_prompt_is_the_inst_format_and_every_answer_is_scored_on_the_tokens_the_model_would_emit(model_path, texts):
    actions = prompts.allowed_actions("BabyAI-UnlockLocal-v0")
    adviser = advisers.make_adviser("llm", model_path=model_path, actions=actions, cache_dir=None, n_threads=1)
    backend, llm = adviser.backend, adviser.backend.llm
    instructions = prompts.instruction_text(actions)
    for text in texts:
        prompt = adviser.prompt_text(text)
        assert prompt == inst_prompt(instructions + text) + " Action:"
        assert "<s>" + prompt == meta_template(instructions + text) + " Action:"
        adviser.raw_answer(text)  # evaluated after the instructions' KV cache
        prompt_tokens = backend.tokenize_prompt(text)
        assert list(llm.input_ids[: len(prompt_tokens)]) == prompt_tokens == llm.tokenize(prompt.encode(), add_bos=True)
        assert prompt_tokens[0] == BOS and prompt_tokens[1] != BOS  # one BOS: llama.cpp's, not the template's too
        assert prompt_tokens[: backend.n_prefix_tokens] == backend.prefix_tokens  # the cached instructions
        for action in actions:  # " left" is one SentencePiece token "▁left"; "pickup" is "▁pick" "up"
            word_tokens = backend.answer_tokens[action]
            assert llm.tokenize(f"{prompt} {prompts.ACTION_WORDS[action]}".encode()) == prompt_tokens + word_tokens
        assert [len(backend.answer_tokens[action]) for action in (0, 1, 2, 5)] == [1, 1, 1, 1]
    # The subgoal numbers: Llama-2 writes " 2" as "▁" then "2"; the shared "▁" is part of the scored prompt.
    subgoal_text = adviser.subgoal_text(prompts.subgoal_query(texts[0], CANDIDATES))
    assert subgoal_text.startswith("[INST] <<SYS>>\n") and subgoal_text.endswith(" [/INST] Subgoal:")
    subgoal_tokens = llm.tokenize(subgoal_text.encode())
    for number in range(1, 10):
        assert (llm.tokenize(f"{subgoal_text} {number}".encode())
                == subgoal_tokens + backend.shared_number_tokens + backend.number_tokens[number - 1][1:])
    assert [len(tokens) for tokens in backend.number_tokens] == [2] * 9
    # A KV-reused score equals a from-scratch evaluation of the whole prompt (float32 sums in other batch splits).
    reused = [np.array(adviser.raw_answer(text))[actions] for text in texts]
    subgoal_reused = adviser.subgoal_probs(texts[0], CANDIDATES)
    for text, scores in zip(texts, reused):
        llm.reset()
        np.testing.assert_allclose(np.array(backend.answer(text))[actions], scores, atol=1e-4)
    llm.reset()
    adviser.cache.memory.clear()
    np.testing.assert_allclose(adviser.subgoal_probs(texts[0], CANDIDATES), subgoal_reused, atol=1e-4)
    assert adviser.stats["fallbacks"] == 0
    adviser.close()


@pytest.fixture(scope="module")
def server(model_path):
    process, base_url = start_server(model_path)
    yield base_url
    stop_server(process)


def test_served_completions_equal_in_process_and_chat_answers_are_read(model_path, server, texts):
    actions = prompts.allowed_actions("BabyAI-UnlockLocal-v0")
    local = advisers.make_adviser("llm", model_path=model_path, actions=actions, cache_dir=None, n_threads=1)
    served = advisers.make_adviser("llm", actions=actions, cache_dir=None, base_url=server)
    assert served.backend.template_source.startswith("the chat template of")  # the served GGUF's own metadata
    assert served.prompt_text(texts[0]) == local.prompt_text(texts[0])
    np.testing.assert_allclose(served.action_probs(texts), local.action_probs(texts), atol=1e-4)
    np.testing.assert_allclose(served.subgoal_probs(texts[0], CANDIDATES), local.subgoal_probs(texts[0], CANDIDATES),
                               atol=1e-4)
    if "no-template" not in model_path:  # once: the same for both files, and slow (see below)
        # A top-2 list misses most words and numbers: they are scored by the server's echo, exactly (one request at a
        # time: llama_cpp.server answers them in turn, each echo sorting the vocabulary at every prompt token).
        top2 = advisers.make_adviser("llm", actions=actions, cache_dir=None, base_url=server, top_logprobs=2,
                                     max_concurrency=1)
        assert top2.backend.echo_scoring
        np.testing.assert_allclose(top2.action_probs(texts[:1]), local.action_probs(texts[:1]), atol=1e-4)
        np.testing.assert_allclose(top2.subgoal_probs(texts[0], CANDIDATES), local.subgoal_probs(texts[0], CANDIDATES),
                                   atol=1e-4)
        top2.close()
    # The chat API: the server renders the turn; the answer's first token is read as the action or the number.
    chat = advisers.make_adviser("llm", actions=actions, cache_dir=None, base_url=server, api="chat")
    probs = chat.action_probs(texts[:1])
    assert chat.stats["fallbacks"] == 0 and np.isclose(probs.sum(), 1) and probs.max() > 2 * probs[0, actions].min()
    user = prompts.instruction_text(actions) + texts[0]
    vocab = local.backend.llm
    if "no-template" in model_path:  # llama_cpp.server's own "llama-2" format: a space where Meta has a blank line
        rendered = f"[INST] <<SYS>>\n{prompts.SYSTEM_PROMPT}\n<</SYS>> {user} [/INST]"
        assert chat.stats["prompt_tokens"] == len(vocab.tokenize(rendered.encode(), add_bos=True))
    else:
        assert chat.stats["prompt_tokens"] == len(vocab.tokenize(meta_template(user).encode(), add_bos=False,
                                                                 special=True))
    ranked = chat.subgoal_probs(texts[0], CANDIDATES)
    assert chat.stats["fallbacks"] == 0 and np.isclose(ranked.sum(), 1) and ranked.max() - ranked.min() > 0.01
    for adviser in (local, served, chat):
        adviser.close()


def test_a_server_that_names_the_model_llama2_gets_the_inst_format(model_path, texts):
    """No GGUF to read (the served id is an alias, no /props): the built-in format is chosen by the served name."""
    process, base_url = start_server(model_path, alias="llama-2-7b-chat")
    try:
        served = advisers.make_adviser("llm", cache_dir=None, base_url=base_url)
        assert served.backend.template_source == "a built-in chat format chosen by the model's name"
        assert served.prompt_text(texts[0]) == inst_prompt(prompts.instruction_text(prompts.ALL_ACTIONS) + texts[0]) \
            + " Action:"
        served.action_probs(texts)
        assert served.stats["fallbacks"] == 0
        served.close()
    finally:
        stop_server(process)


@pytest.mark.parametrize("model_path", ["no-template"], indirect=True)  # the prompt paths are the same as above
@pytest.mark.parametrize("script, env_id", [("ppo_llm_policy.py", "MiniGrid-DoorKey-5x5-v0"),
                                            ("ppo_llm_explore.py", "BabyAI-UnlockLocal-v0")])
@pytest.mark.parametrize("where", ["in-process", "served"])
def test_tiny_runs_with_llama2_have_no_fallbacks(model_path, server, script, env_id, where, tmp_path):
    deployment = ["--llm-model-path", model_path] if where == "in-process" else ["--llm-base-url", server]
    result = run_script(*deployment, "--env-id", env_id, "--total-timesteps", "64", *TINY, "--num-steps", "8",
                        "--llm-cache-dir", "none",
                        "--run-dir", str(tmp_path / "runs"), script=script)
    assert result.returncode == 0, result.stderr[-3000:]
    logged = scalars(only_run(str(tmp_path / "runs")))
    assert sum(logged["llm/uncached_queries"]) > 0
    assert max(logged["llm/fallbacks"]) == 0 and " 0 fallbacks" in result.stdout
