"""How good and how fast is each adviser? Agreement with the BabyAI expert bot on sampled states.

    python tools/advice_eval.py                       # SmolLM2 (embedded), 100 states per level
    python tools/advice_eval.py --llm-model-path llama-2-7b-chat.Q4_K_M.gguf --num-states 50

States come from bot-led rollouts with some random actions (for diversity), seeded. Every adviser
(llm, uniform, random, always-forward) scores the same states; a Markdown table per level is printed.
The LLM uses a fresh temporary cache by default, so the uncached numbers are honest.
"""

import difflib
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import gymnasium as gym
import minigrid  # noqa: F401  (registers the BabyAI envs)
import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import prompts  # noqa: E402


@dataclass
class Args:
    env_ids: tuple[str, ...] = ("BabyAI-GoToLocal-v0", "BabyAI-PickupLoc-v0", "BabyAI-UnlockLocal-v0",
                                "BabyAI-OpenDoor-v0")
    """BabyAI levels to sample states from (the expert bot must be able to solve them)"""
    num_states: int = 100
    """states per level"""
    random_action_prob: float = 0.2
    """probability of a random action instead of the bot's during the rollouts (state diversity)"""
    seed: int = 1
    """seed of the rollouts and of the random adviser"""
    batch_size: int = 8
    """observations per action_probs call (like a vector env with this many envs)"""
    llm_model_path: str | None = None
    """GGUF model file; None: the embedded SmolLM2-135M-Instruct"""
    llm_n_gpu_layers: int = 0
    """layers to offload to a GPU (needs a GPU build of llama-cpp-python)"""
    llm_n_threads: int | None = None
    """llama.cpp threads; None: all cores"""
    llm_n_ctx: int = 512
    """LLM context length in tokens"""
    llm_temperature: float = 1.0
    """softmax temperature over the action words' log-probs (higher = softer)"""
    llm_mode: str = "score"
    """'score' (next-token log-probs of the action words) or 'generate' (parse a short answer)"""
    llm_cache_dir: str | None = None
    """persistent cache; None: a fresh temporary directory, so uncached timings are honest"""
    output: str | None = None
    """also write the Markdown report to this file"""


def collect_states(env_id: str, num_states: int, random_action_prob: float, seed: int):
    """(observation texts, expert actions) from bot-led rollouts with random detours."""
    env = prompts.BabyAIBotWrapper(gym.make(env_id))
    rng = np.random.default_rng(seed)
    texts, expert_actions = [], []
    episode = 0
    while len(texts) < num_states:
        obs, info = env.reset(seed=seed * 10_000 + episode)
        episode += 1
        done = False
        while not done and len(texts) < num_states:
            expert_action = info["expert_action"]
            if expert_action >= 0:  # only states where the expert has an opinion are scored
                texts.append(prompts.describe_observation(obs["image"], obs["direction"], obs["mission"]))
                expert_actions.append(expert_action)
            if expert_action < 0 or rng.random() < random_action_prob:
                action = int(rng.choice(prompts.allowed_actions(env_id)))
            else:
                action = expert_action
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
    env.close()
    return texts, np.array(expert_actions)


def run_batches(advisor, texts, batch_size):
    """All probabilities, and the wall time it took."""
    start = time.perf_counter()
    probs = np.concatenate([advisor.action_probs(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
    return probs, time.perf_counter() - start


def agreement(probs, expert_actions):
    """Top-1 agreement with the expert, ties split evenly (so 'uniform' gets 1/#allowed, not 'left')."""
    is_max = probs >= probs.max(axis=1, keepdims=True) - 1e-7
    return float(np.mean(is_max[np.arange(len(probs)), expert_actions] / is_max.sum(axis=1)))


def raw_eval_speed(advisor, texts):
    """Tokens/s and queries/s of bare llm.eval over each prompt's non-prefix tokens (no caches)."""
    n_tokens, seconds = 0, 0.0
    for text in dict.fromkeys(texts):  # unique texts, like the uncached pass
        prompt_tokens = advisor.tokenize_prompt(text)
        advisor.llm.n_tokens = advisor.n_prefix_tokens
        start = time.perf_counter()
        advisor.llm.eval(prompt_tokens[advisor.n_prefix_tokens:])
        seconds += time.perf_counter() - start
        n_tokens += len(prompt_tokens) - advisor.n_prefix_tokens
    return n_tokens / seconds, len(dict.fromkeys(texts)) / seconds


def evaluate_env(args: Args, env_id: str, cache_dir: str) -> tuple[str, dict]:
    texts, expert_actions = collect_states(env_id, args.num_states, args.random_action_prob, args.seed)
    actions = prompts.allowed_actions(env_id)
    llm_kwargs = dict(model_path=args.llm_model_path, n_gpu_layers=args.llm_n_gpu_layers,
                      n_threads=args.llm_n_threads, n_ctx=args.llm_n_ctx, temperature=args.llm_temperature,
                      mode=args.llm_mode, cache_dir=cache_dir)
    rows, summary = [], {}

    llm = prompts.make_advisor("llm", actions=actions, **llm_kwargs)
    probs, _ = run_batches(llm, texts, args.batch_size)  # pass 1: uncached (repeated states hit memory)
    stats = dict(llm.stats)
    _, cached_seconds = run_batches(llm, texts, args.batch_size)  # pass 2: same states, memory cache
    raw_tok_per_s, raw_q_per_s = raw_eval_speed(llm, texts)
    llm.close()
    disk_llm = prompts.make_advisor("llm", actions=actions, **llm_kwargs)  # like a second run: disk cache
    _, disk_seconds = run_batches(disk_llm, texts, args.batch_size)
    disk_hit_rate = disk_llm.stats["hit_rate"]
    disk_llm.close()

    answers = np.bincount(probs.argmax(axis=1), minlength=prompts.NUM_ACTIONS) / len(probs)
    summary = dict(uncached_q_per_s=None, tok_fraction=None, agreement=agreement(probs, expert_actions))
    uncached, tok_s = "- (all cached)", "-"  # every answer came from --llm-cache-dir: no uncached timing
    if stats["misses"] and stats["ms_per_uncached_query"] > 0:
        uncached_q_per_s = 1000 / stats["ms_per_uncached_query"]
        llm_tok_per_s = stats["tokens_evaluated"] / (stats["misses"] * stats["ms_per_uncached_query"] / 1000)
        summary |= dict(uncached_q_per_s=uncached_q_per_s, tok_fraction=llm_tok_per_s / raw_tok_per_s)
        uncached = f"{uncached_q_per_s:.1f} ({raw_q_per_s:.1f})"
        tok_s = f"{llm_tok_per_s:.0f} / {raw_tok_per_s:.0f} = {llm_tok_per_s / raw_tok_per_s:.0%}"
    rows.append(("llm", agreement(probs, expert_actions), probs[np.arange(len(probs)), expert_actions].mean(),
                 uncached, f"{len(texts) / cached_seconds:,.0f} / {len(texts) / disk_seconds:,.0f}",
                 f"{stats['hit_rate']:.0%} / {disk_hit_rate:.0%}", stats["fallbacks"] / stats["queries"],
                 f"{stats['tokens_per_uncached_query']:.1f} / {stats['prompt_tokens_per_query']:.0f}", tok_s))

    always_forward = np.tile(prompts.finalize_probs(np.eye(prompts.NUM_ACTIONS)[prompts.FORWARD]), (len(texts), 1))
    baselines = [("uniform", prompts.make_advisor("uniform", actions=actions)),
                 ("random", prompts.make_advisor("random", seed=args.seed, actions=actions))]
    for name, advisor in baselines + [("always forward", None)]:
        if advisor is None:
            baseline_probs, seconds = always_forward, 0.0
        else:
            baseline_probs, seconds = run_batches(advisor, texts, args.batch_size)
        cached = f"{len(texts) / seconds:,.0f}" if seconds else "-"
        rows.append((name, agreement(baseline_probs, expert_actions),
                     baseline_probs[np.arange(len(texts)), expert_actions].mean(), "-", cached, "-", 0.0, "-", "-"))

    expert_mix = np.bincount(expert_actions, minlength=prompts.NUM_ACTIONS) / len(expert_actions)
    mix = lambda shares: ", ".join(f"{prompts.ACTION_WORDS[a]} {shares[a]:.0%}" for a in range(7) if shares[a] > 0)
    lines = [f"### {env_id} ({len(texts)} states, {len(set(texts))} distinct, allowed: "
             f"{', '.join(prompts.ACTION_WORDS[a] for a in actions)})", "",
             "| adviser | agreement | mean p(expert) | uncached q/s (raw eval) | cached q/s (memory / disk) | hit rate "
             "(pass 1 / disk) | fallback rate | new tok/query / prompt tok | tok/s vs raw eval |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, agree, p_expert, uncached, cached, hits, fallback, tokens, tok_s in rows:
        lines.append(f"| {name} | {agree:.0%} | {p_expert:.2f} | {uncached} | {cached} | {hits} | {fallback:.0%} "
                     f"| {tokens} | {tok_s} |")
    lines += ["", f"Expert's actions: {mix(expert_mix)}. LLM's top-1 answers: {mix(answers)}. "
              f"Raw eval = bare llm.eval of each prompt after the cached instructions.", ""]
    return "\n".join(lines), summary


def check_args(args: Args) -> str | None:
    """The first problem with the flags, as one line naming the flag, or None (checked before any work)."""
    levels = [env_id for env_id in gym.registry if env_id.startswith("BabyAI-")]
    for env_id in args.env_ids:
        if not env_id.startswith("BabyAI-"):
            return f"--env-ids {env_id} is not a BabyAI level: the expert bot only solves BabyAI levels"
        if env_id not in levels:
            close = difflib.get_close_matches(env_id, levels, n=3, cutoff=0.5)
            return (f"--env-ids {env_id} is not a registered BabyAI level; "
                    + (f"did you mean {', '.join(close)}?" if close else "BabyAI-GoToLocal-v0 is an example."))
    if not args.env_ids:
        return "--env-ids needs at least one BabyAI level"
    if args.num_states < 1 or args.batch_size < 1:
        return f"--num-states and --batch-size must be at least 1, got {args.num_states} and {args.batch_size}"
    if not 0 <= args.random_action_prob <= 1:
        return f"--random-action-prob must be in [0, 1], got {args.random_action_prob}"
    if args.output is not None and os.path.isdir(args.output):
        return f"--output {args.output} is a folder: pass a file name"
    return prompts.llm_flag_error(args)


def main(args: Args) -> str:
    if (message := check_args(args)):
        raise ValueError(message)
    threads = args.llm_n_threads or os.cpu_count()
    header = [f"## Advice accuracy and speed: {os.path.basename(prompts.resolve_model_path(args.llm_model_path))}, "
              f"mode={args.llm_mode}, temperature={args.llm_temperature}, {threads} llama.cpp thread(s), "
              f"{args.num_states} states per level, {args.random_action_prob:.0%} random actions", ""]
    with tempfile.TemporaryDirectory() as temporary_cache_dir:
        cache_dir = args.llm_cache_dir or temporary_cache_dir
        sections, summaries = [], []
        for env_id in args.env_ids:
            section, summary = evaluate_env(args, env_id, cache_dir)
            print(section, flush=True)
            sections.append(section)
            summaries.append(summary)
    timed = [s for s in summaries if s["uncached_q_per_s"] is not None]
    if timed:
        q_per_s = np.mean([s["uncached_q_per_s"] for s in timed])
        tok_fraction = np.mean([s["tok_fraction"] for s in timed])
        verdict = (f"Mean uncached LLM speed {q_per_s:.1f} queries/s (target >= 25: "
                   f"{'met' if q_per_s >= 25 else 'not met'}); tok/s {tok_fraction:.0%} of raw llm.eval "
                   f"(fallback target >= 80%: {'met' if tok_fraction >= 0.8 else 'not met'}). "
                   f"Timings are wall-clock and noisy when other processes share the CPU.")
    else:
        verdict = ("Every answer came from the cache in --llm-cache-dir: no uncached speed to report (leave "
                   "--llm-cache-dir out for a fresh cache).")
    print(verdict)
    report = "\n".join(header + sections + [verdict, ""])
    if args.output:
        with open(args.output, "w") as report_file:
            report_file.write(report)
    return report


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: no report written", file=sys.stderr)
        sys.exit(130)
