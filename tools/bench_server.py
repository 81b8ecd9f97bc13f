"""What does the HTTP path cost? Uncached LLM queries in process against through servers, same GGUF, same threads.

    python tools/bench_server.py                      # SmolLM2 (embedded), 1 llama.cpp thread each, 3 rounds
    python tools/bench_server.py --paths in-process llama-server:16 --llm-base-url http://127.0.0.1:8080/v1

Starts the servers it is asked for with the same GGUF and threads: `python -m llama_cpp.server`, and llama.cpp's own
`llama-server` with 1 or 16 parallel slots (built once by tools/llama_server.py); an external server at
--llm-base-url is measured too. It then takes turns (a round measures every path, a server at concurrency 1 and 16)
over the same distinct observation texts with empty caches, and prints milliseconds per uncached query and per step
of --batch-size envs, per round and their medians. With in-process among the paths it also prints how far each
server's raw scores of the allowed words are from the in-process ones (the first round's), per round.
"""

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional

import gymnasium as gym
import minigrid  # noqa: F401  (registers the BabyAI levels)
import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import prompts  # noqa: E402
from advice_eval import collect_states  # noqa: E402
from llmppo.advisers import make_adviser  # noqa: E402
from llmppo.llama import resolve_model_path  # noqa: E402
from llama_server import BuildError, free_port, start_llama_server, stop_server  # noqa: E402,F401  (stop_server: the tests')

PATHS = ("in-process", "llama_cpp.server", "llama-server:1", "llama-server:16")


@dataclass
class Args:
    env_id: str = "BabyAI-UnlockLocal-v0"
    """BabyAI level the observation texts come from (bot-led rollouts with random detours)"""
    num_states: int = 64
    """distinct observations queried per measurement"""
    rounds: int = 3
    """measurements per path, taking turns"""
    threads: int = 1
    """llama.cpp threads, in process and in the server alike"""
    batch_size: int = 16
    """observations per action_probs call (a vector env's step)"""
    llm_model_path: Optional[str] = None
    """GGUF model file; None: the embedded SmolLM2-135M-Instruct"""
    port: int = 0
    """llama_cpp.server's port (0: a free one)"""
    paths: tuple[str, ...] = PATHS
    """what to measure: in-process, llama_cpp.server, llama-server:N (N parallel slots)"""
    llm_base_url: Optional[str] = None
    """also measure an external OpenAI-compatible server at this URL, serving the same model"""


def start_server(model_path, threads=1, port=0, alias=None):
    """`python -m llama_cpp.server` on 127.0.0.1 (a free port when 0), serving the model as `alias` if given (else as
    its path); returns (process, base URL) once /v1/models answers. Also the tests' server."""
    import httpx

    port = port or free_port()
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", model_path, "--host", "127.0.0.1",
                                "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
                                "--n_ctx", "512", *(["--model_alias", alias] if alias else [])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("llama_cpp.server exited at start-up (pip install 'llama-cpp-python[server]')")
        try:
            if httpx.get(base_url + "/models", timeout=2).status_code == 200:
                return process, base_url
        except httpx.TransportError:
            time.sleep(0.5)
    stop_server(process)
    raise RuntimeError("llama_cpp.server did not answer within 120 s")


def ms_per_query(adviser, texts, batch_size):
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        adviser.action_probs(texts[i:i + batch_size])
    assert adviser.stats["misses"] == len(texts), "every query must be uncached"
    return 1000 * (time.perf_counter() - start) / len(texts)


def raw_scores(adviser, texts, actions):
    """The allowed words' raw scores of each text, from the adviser's memory cache (-inf: a word outside the top-K)."""
    return np.array([np.asarray(adviser.raw_answer(text, cached_only=True), dtype=np.float64)[actions] for text in texts])


def score_differences(served, reference):
    """|served - in process| per text and word, where the server returned the word (0 where it fell outside its top-K)."""
    with np.errstate(invalid="ignore"):  # -inf minus -inf where neither has the word
        return np.where(np.isfinite(served) & np.isfinite(reference), np.abs(served - reference), 0.0)


def main(args: Args):
    for name in ["num_states", "rounds", "threads", "batch_size"]:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be 0 (a free one) or a port number up to 65535, got {args.port}")
    if args.env_id not in gym.registry or not args.env_id.startswith("BabyAI-"):
        raise ValueError(f"--env-id {args.env_id}: pass a BabyAI level, e.g. BabyAI-UnlockLocal-v0")
    for path in args.paths:
        if path not in PATHS[:2] and not (path.startswith("llama-server:") and path.split(":")[1].isdigit()
                                          and int(path.split(":")[1]) >= 1):
            raise ValueError(f"--paths: unknown path {path!r}; use in-process, llama_cpp.server or llama-server:N")
    model_path = resolve_model_path(args.llm_model_path)
    texts = []
    seed = 1
    while len(texts) < args.num_states:  # distinct texts only, so every query is uncached
        more, _ = collect_states(args.env_id, args.num_states, 0.2, seed)
        texts = list(dict.fromkeys(texts + more))[:args.num_states]
        seed += 1
    actions = prompts.allowed_actions(args.env_id)
    servers, processes = {}, []
    try:
        for path in args.paths:
            if path == "llama_cpp.server":
                process, servers[path] = start_server(model_path, args.threads, args.port)
                processes.append(process)
            elif path.startswith("llama-server:"):
                process, servers[path] = start_llama_server(model_path, parallel=int(path.split(":")[1]),
                                                            threads=args.threads)
                processes.append(process)
        if args.llm_base_url:
            servers["external"] = args.llm_base_url
        results, requests_per_query, differences, reference = {}, {}, {}, None
        for _ in range(args.rounds):
            if "in-process" in args.paths:
                local = make_adviser("llm", actions=actions, model_path=model_path, n_threads=args.threads,
                                     cache_dir=None)
                results.setdefault("in process", []).append(ms_per_query(local, texts, args.batch_size))
                if reference is None:
                    reference = raw_scores(local, texts, actions)
                local.close()
            for name, base_url in servers.items():
                for concurrency in (1, 16):
                    served = make_adviser("llm", actions=actions, model_path=model_path, cache_dir=None,
                                          base_url=base_url, max_concurrency=concurrency)
                    label = f"{name}, concurrency {concurrency}"
                    results.setdefault(label, []).append(ms_per_query(served, texts, args.batch_size))
                    requests_per_query.setdefault(name, []).append(served.stats["requests"] / len(texts))
                    if reference is not None:
                        differences.setdefault(label, []).append(score_differences(raw_scores(served, texts, actions), reference))
                    served.close()
    finally:
        for process in processes:
            stop_server(process)
    local_ms = np.median(results["in process"]) if "in process" in results else None
    print(f"## Uncached queries, {os.path.basename(model_path)}, {args.threads} llama.cpp thread(s) each, "
          f"{len(texts)} distinct {args.env_id} states, steps of {args.batch_size} envs, {args.rounds} rounds taking "
          f"turns\n")
    print("| path | ms per query, each round | median | ms per step | cost vs in process |\n|---|---|---|---|---|")
    for name, values in results.items():
        median = np.median(values)
        versus = f"{median / local_ms - 1:+.0%}" if local_ms else "-"
        print(f"| {name} | {' / '.join(f'{v:.0f}' for v in values)} | {median:.0f} | {median * args.batch_size:.0f} "
              f"| {versus} |")
    print("\nHTTP requests per query: " + ", ".join(f"{name} {np.mean(values):.2f}"
                                                     for name, values in requests_per_query.items())
          + " (1.00: the top-100 log-probs held every allowed word).")
    if differences:
        print("\n| path | largest difference from the in-process raw scores (nats; the words the server returned), each "
              "round | states off by more than 1e-3, each round |\n|---|---|---|")
        for label, rounds in differences.items():
            print(f"| {label} | {' / '.join(f'{d.max():.1e}' for d in rounds)} | "
                  f"{' / '.join(str(int((d > 1e-3).any(axis=1).sum())) for d in rounds)} of {len(texts)} |")


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except (FileNotFoundError, ValueError, RuntimeError, BuildError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
