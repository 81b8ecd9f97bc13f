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
from llmppo import bot  # noqa: E402
from llmppo.advisers import make_adviser  # noqa: E402
from llmppo.llama import resolve_model_path  # noqa: E402
from llmppo.checks import float_flag_error  # noqa: E402
from llmppo.llm_flags import LLMFlags, llm_flag_error, make_adviser_from_flags  # noqa: E402


DEFAULT_ENV_IDS = ("BabyAI-GoToLocal-v0", "BabyAI-PickupLoc-v0", "BabyAI-UnlockLocal-v0", "BabyAI-OpenDoor-v0")
DEFAULT_SUBGOAL_ENV_IDS = ("BabyAI-KeyCorridorS3R1-v0", "BabyAI-UnlockLocal-v0", "BabyAI-UnlockPickup-v0",
                           "BabyAI-GoToLocal-v0", "BabyAI-PickupLoc-v0")


@dataclass
class Args(LLMFlags):
    env_ids: tuple[str, ...] = DEFAULT_ENV_IDS
    """BabyAI levels to sample states from (the expert bot must be able to solve them)"""
    num_states: int = 100
    """states per level"""
    random_action_prob: float = 0.2
    """probability of a random action instead of the bot's during the rollouts (state diversity)"""
    seed: int = 1
    """seed of the rollouts and of the random adviser"""
    batch_size: int = 8
    """observations per action_probs call (like a vector env with this many envs)"""
    llm_temperature: float = 1.0
    """softmax temperature over the action words' log-probs (higher = softer)"""
    llm_mode: str = "score"
    """'score' (next-token log-probs of the action words) or 'generate' (parse a short answer)"""
    llm_cache_dir: str | None = None
    """persistent cache; None: a fresh temporary directory, so uncached timings are honest"""
    llm_usd_per_mtok: tyro.conf.Suppress[float] = 0.0  # no cost estimate here: not a flag of this tool
    output: str | None = None
    """also write the Markdown report to this file"""
    subgoal_env_ids: tuple[str, ...] = ()
    """BabyAI levels for the subgoal-ranking table (ppo_llm_explore.py's question: which visible subgoal next?);
    default: the --env-ids levels when they are given, else KeyCorridorS3R1, UnlockLocal, UnlockPickup, GoToLocal and
    PickupLoc"""
    subgoal_states: int = 60
    """states per level for the subgoal-ranking table (0: no ranking table)"""


def collect_states(env_id: str, num_states: int, random_action_prob: float, seed: int):
    """(observation texts, expert actions) from bot-led rollouts with random detours."""
    env = bot.BabyAIBotWrapper(gym.make(env_id))
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


def run_batches(adviser, texts, batch_size):
    """All probabilities, and the wall time it took."""
    start = time.perf_counter()
    probs = np.concatenate([adviser.action_probs(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
    return probs, time.perf_counter() - start


def agreement(probs, expert_actions):
    """Top-1 agreement with the expert, ties split evenly (so 'uniform' gets 1/#allowed, not 'left')."""
    is_max = probs >= probs.max(axis=1, keepdims=True) - 1e-7
    return float(np.mean(is_max[np.arange(len(probs)), expert_actions] / is_max.sum(axis=1)))


def raw_eval_speed(adviser, texts):
    """Tokens/s and queries/s of bare llm.eval over each prompt's non-prefix tokens (no caches)."""
    n_tokens, seconds = 0, 0.0
    for text in dict.fromkeys(texts):  # unique texts, like the uncached pass
        prompt_tokens = adviser.backend.tokenize_prompt(text)
        adviser.backend.llm.n_tokens = adviser.backend.n_prefix_tokens
        start = time.perf_counter()
        adviser.backend.llm.eval(prompt_tokens[adviser.backend.n_prefix_tokens:])
        seconds += time.perf_counter() - start
        n_tokens += len(prompt_tokens) - adviser.backend.n_prefix_tokens
    return n_tokens / seconds, len(dict.fromkeys(texts)) / seconds


def evaluate_env(args: Args, env_id: str, cache_dir: str, timed: bool = True) -> tuple[str, dict]:
    """The level's table (agreement, speeds) and summary; timed=False skips timing bare llm.eval (accuracy only)."""
    texts, expert_actions = collect_states(env_id, args.num_states, args.random_action_prob, args.seed)
    actions = prompts.allowed_actions(env_id)
    rows, summary = [], {}

    llm = make_adviser_from_flags(args, actions=actions, cache_dir=cache_dir)
    probs, _ = run_batches(llm, texts, args.batch_size)  # pass 1: uncached (repeated states hit memory)
    stats = dict(llm.stats)
    _, cached_seconds = run_batches(llm, texts, args.batch_size)  # pass 2: same states, memory cache
    served = args.llm_base_url is not None  # no llama.cpp here to time bare evaluation with
    raw_tok_per_s, raw_q_per_s = (float("nan"), float("nan")) if served or not timed else raw_eval_speed(llm, texts)
    llm.close()
    disk_llm = make_adviser_from_flags(args, actions=actions, cache_dir=cache_dir)  # like a second run: disk cache
    _, disk_seconds = run_batches(disk_llm, texts, args.batch_size)
    disk_hit_rate = disk_llm.stats["hit_rate"]
    disk_llm.close()

    answers = np.bincount(probs.argmax(axis=1), minlength=prompts.NUM_ACTIONS) / len(probs)
    summary = dict(uncached_q_per_s=None, tok_fraction=None, agreement=agreement(probs, expert_actions))
    uncached, tok_s = "- (all cached)", "-"  # every answer came from --llm-cache-dir: no uncached timing
    if stats["misses"] and stats["ms_per_uncached_query"] > 0:
        uncached_q_per_s = 1000 / stats["ms_per_uncached_query"]
        llm_tok_per_s = stats["tokens_evaluated"] / (stats["misses"] * stats["ms_per_uncached_query"] / 1000)
        summary |= dict(uncached_q_per_s=uncached_q_per_s, tok_fraction=None if served else llm_tok_per_s / raw_tok_per_s)
        uncached = f"{uncached_q_per_s:.1f}" + ("" if served else f" ({raw_q_per_s:.1f})")
        tok_s = "-" if served else f"{llm_tok_per_s:.0f} / {raw_tok_per_s:.0f} = {llm_tok_per_s / raw_tok_per_s:.0%}"
    rows.append(("llm", agreement(probs, expert_actions), probs[np.arange(len(probs)), expert_actions].mean(),
                 uncached, f"{len(texts) / cached_seconds:,.0f} / {len(texts) / disk_seconds:,.0f}",
                 f"{stats['hit_rate']:.0%} / {disk_hit_rate:.0%}", stats["fallbacks"] / stats["queries"],
                 f"{stats['tokens_per_uncached_query']:.1f} / {stats['prompt_tokens_per_query']:.0f}", tok_s))

    always_forward = np.tile(prompts.finalize_probs(np.eye(prompts.NUM_ACTIONS)[prompts.FORWARD]), (len(texts), 1))
    baselines = [("uniform", make_adviser("uniform", actions=actions)),
                 ("random", make_adviser("random", seed=args.seed, actions=actions))]
    for name, adviser in baselines + [("always forward", None)]:
        if adviser is None:
            baseline_probs, seconds = always_forward, 0.0
        else:
            baseline_probs, seconds = run_batches(adviser, texts, args.batch_size)
        cached = f"{len(texts) / seconds:,.0f}" if seconds else "-"
        summary[name] = agreement(baseline_probs, expert_actions)
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


# --- subgoal ranking: does the adviser put the bot's next planned subgoal first? ---
def collect_subgoal_states(env_id: str, num_states: int, random_action_prob: float, seed: int):
    """(observation text, candidate texts, the one the bot plans next, view, mission, candidate Subgoals) from bot-led
    rollouts: states with at least two candidates, one of them on the bot's plan (the first one on it is the target)."""
    env = bot.SubgoalTracker(bot.BabyAIBotWrapper(gym.make(env_id)))
    rng, actions, states, episode = np.random.default_rng(seed), prompts.allowed_actions(env_id), [], 0
    while len(states) < num_states and episode < 50 * num_states:
        obs, info = env.reset(seed=seed * 10_000 + episode)
        episode, done = episode + 1, False
        while not done and len(states) < num_states:
            subgoals = prompts.candidate_subgoals(obs["image"], obs["direction"], obs["mission"], actions)
            candidates = [subgoal.text for subgoal in subgoals]
            planned = [text for text in info["expert_plan"].split("\n") if text in candidates]
            if len(candidates) >= 2 and planned:
                text = prompts.describe_observation(obs["image"], obs["direction"], obs["mission"])
                states.append((text, candidates, planned[0], obs["image"], obs["mission"], subgoals))
            expert_action = info["expert_action"]
            action = int(rng.choice(actions)) if expert_action < 0 or rng.random() < random_action_prob else expert_action
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
    env.close()
    return states


KIND_ORDER = ("pickup", "open", "through", "goto", "drop")  # the fixed order a user might try first


def one_of(best: np.ndarray) -> np.ndarray:
    """Ties split evenly: the heuristics' distribution over candidates from a mask of the best ones."""
    return best / best.sum()


def heuristic_probs(name: str, subgoals: list, image, mission: str) -> np.ndarray:
    """Two-line rankers: the nearest candidate, the mission's object, a fixed kind order, or the k-th listed."""
    n = len(subgoals)
    if name.startswith("always "):
        return np.eye(n)[n - 1 if name == "always last listed" else min(int(name.split()[1][0]) - 1, n - 1)]
    if name == "nearest first":
        distance = []
        for subgoal in subgoals:
            cells = [abs(prompts.AGENT_Y - y) + abs(x - prompts.AGENT_X) for x in range(7) for y in range(7)
                     if prompts.IDX_TO_OBJECT.get(int(image[x, y, 0])) == subgoal.object_type
                     and prompts.IDX_TO_COLOR.get(int(image[x, y, 1])) == subgoal.color]
            distance.append(min(cells) if cells else 0)  # drop: the carried object, at distance 0
        return one_of(np.array(distance) == min(distance))
    if name == "mission's object first":
        mentioned = np.array([prompts.mentioned_in(mission, s.object_type, s.color) for s in subgoals])
        return one_of(mentioned) if mentioned.any() else np.full(n, 1 / n)
    kinds = np.array([KIND_ORDER.index(s.kind) for s in subgoals])
    return one_of(kinds == kinds.min())  # "pickup > open > through > goto"


def evaluate_ranking(args: Args, env_id: str, cache_dir: str) -> tuple[str, dict]:
    states = collect_subgoal_states(env_id, args.subgoal_states, args.random_action_prob, args.seed)
    if not states:
        return f"### {env_id}: no state with two candidates and one on the bot's plan\n", {}
    targets = [candidates.index(target) for _, candidates, target, *_ in states]
    llm = make_adviser_from_flags(args, actions=prompts.allowed_actions(env_id), cache_dir=cache_dir)
    rankers = {}
    for orders in prompts.SUBGOAL_ORDERS:  # 'listed' first: its queries are the first shift of 'cyclic'
        llm.subgoal_orders = orders
        rankers[f"llm, {orders} order" + (" (position bias controlled)" if orders == "cyclic" else "")] = [
            llm.subgoal_probs(text, candidates) for text, candidates, *_ in states]
    llm.close()
    for name in ("uniform", "random"):
        adviser = make_adviser(name, seed=args.seed, actions=prompts.allowed_actions(env_id))
        rankers[name + (" (chance)" if name == "uniform" else "")] = [
            adviser.subgoal_probs(text, candidates) for text, candidates, *_ in states]
    for name in ("nearest first", "mission's object first", "pickup > open > through > goto", "always 1st listed",
                 "always 2nd listed", "always last listed"):
        rankers[name] = [heuristic_probs(name, subgoals, image, mission) for *_, image, mission, subgoals in states]
    lines = [f"### {env_id} ({len(states)} states, {np.mean([len(s[1]) for s in states]):.1f} candidates on average; "
             f"the bot's next subgoal is listed 1st/2nd/3rd/later in "
             f"{' / '.join(f'{np.mean(np.minimum(targets, 3) == k):.0%}' for k in range(4))})", "",
             "| ranker | top-1 = the bot's next subgoal | mean p(it) | its first choice is listed 1st / 2nd / 3rd / later |",
             "|---|---|---|---|"]
    summary = {}
    for name, probs in rankers.items():
        top1 = np.mean([p[t] >= p.max() - 1e-7 and 1 / np.sum(p >= p.max() - 1e-7) for p, t in zip(probs, targets)])
        p_target = np.mean([p[t] for p, t in zip(probs, targets)])
        top_positions = np.zeros(4)  # where its first choice is listed (ties split evenly)
        for p in probs:
            best = np.flatnonzero(p >= p.max() - 1e-7)
            np.add.at(top_positions, np.minimum(best, 3), 1 / len(best))
        top_positions /= len(probs)
        lines.append(f"| {name} | {top1:.0%} | {p_target:.2f} | {' / '.join(f'{share:.0%}' for share in top_positions)} |")
        summary[name] = top1
    best = max((name for name in summary if not name.startswith(("llm", "uniform", "random", "always"))),
               key=summary.get)
    llm_best = max(summary[name] for name in summary if name.startswith("llm"))
    verdict = (f"A two-line heuristic ({best}, {summary[best]:.0%}) beats the LLM ({llm_best:.0%}) here."
               if summary[best] > llm_best else f"The LLM ({llm_best:.0%}) beats every heuristic here.")
    control = max((name for name in summary if name.startswith("always")), key=summary.get)
    verdict += f" The best position control, {control}, gets {summary[control]:.0%}."
    debiased = summary[next(name for name in summary if "cyclic" in name)]
    chance = summary["uniform (chance)"]
    margin = 2 * np.sqrt(max(debiased * (1 - debiased), 1e-9) / len(states))  # two standard errors of a top-1 rate
    verdict += (f" With the position bias controlled the LLM ranks "
                f"{'no better than chance' if debiased - chance <= margin else 'above chance'}: {debiased:.0%} against "
                f"{chance:.0%} (two standard errors: ±{margin:.0%}).")
    return "\n".join(lines + ["", verdict, ""]), summary


def check_args(args: Args) -> str | None:
    """The first problem with the flags, as one line naming the flag, or None (checked before any work). Fills in the
    subgoal table's default levels."""
    if not args.subgoal_env_ids:
        args.subgoal_env_ids = args.env_ids if args.env_ids != DEFAULT_ENV_IDS else DEFAULT_SUBGOAL_ENV_IDS
    levels = [env_id for env_id in gym.registry if env_id.startswith("BabyAI-")]
    for env_id in args.env_ids + args.subgoal_env_ids:
        if not env_id.startswith("BabyAI-"):
            return f"--env-ids {env_id} is not a BabyAI level: the expert bot only solves BabyAI levels"
        if env_id not in levels:
            close = difflib.get_close_matches(env_id, levels, n=3, cutoff=0.5)
            return (f"--env-ids {env_id} is not a registered BabyAI level; "
                    + (f"did you mean {', '.join(close)}?" if close else "BabyAI-GoToLocal-v0 is an example."))
    if not args.env_ids:
        return "--env-ids needs at least one BabyAI level"
    if args.subgoal_states < 0:
        return f"--subgoal-states must be 0 (no ranking table) or more, got {args.subgoal_states}"
    if args.num_states < 1 or args.batch_size < 1:
        return f"--num-states and --batch-size must be at least 1, got {args.num_states} and {args.batch_size}"
    if args.output is not None:  # checked now, not after the whole evaluation
        folder = os.path.dirname(os.path.abspath(args.output))
        if os.path.isdir(args.output):
            return f"--output {args.output} is a folder: pass a file name"
        if not os.path.isdir(folder):
            return f"--output {args.output}: the folder {folder} does not exist; create it or pass another file"
        if not os.access(folder, os.W_OK) or (os.path.exists(args.output) and not os.access(args.output, os.W_OK)):
            return f"--output {args.output} cannot be written; pass a file in a folder you can write to"
    return float_flag_error(args) or llm_flag_error(args)


def main(args: Args) -> str:
    if (message := check_args(args)):
        raise ValueError(message)
    threads = args.llm_n_threads or os.cpu_count()
    model_name = (f"{args.llm_model or 'the served model'} at {args.llm_base_url} ({args.llm_api})" if args.llm_base_url
                  else os.path.basename(resolve_model_path(args.llm_model_path)))
    header = [f"## Advice accuracy and speed: {model_name}, "
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
        if args.subgoal_states > 0:
            sections.append("## Subgoal ranking: is the bot's next planned subgoal the adviser's first choice?\n")
            print(sections[-1], flush=True)
            for env_id in args.subgoal_env_ids:
                section, _ = evaluate_ranking(args, env_id, cache_dir)
                print(section, flush=True)
                sections.append(section)
    timed = [s for s in summaries if s["uncached_q_per_s"] is not None]
    if timed:
        q_per_s = np.mean([s["uncached_q_per_s"] for s in timed])
        verdict = f"Mean uncached LLM speed {q_per_s:.1f} queries/s (target >= 25: {'met' if q_per_s >= 25 else 'not met'})"
        if all(s["tok_fraction"] is not None for s in timed):  # in process only: a server's tokens are not timed here
            tok_fraction = np.mean([s["tok_fraction"] for s in timed])
            verdict += (f"; tok/s {tok_fraction:.0%} of raw llm.eval (fallback target >= 80%: "
                        f"{'met' if tok_fraction >= 0.8 else 'not met'})")
        verdict += ". Timings are wall-clock and noisy when other processes share the CPU."
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
