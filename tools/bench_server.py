"""What does the HTTP path cost? Uncached LLM queries/s in process against through a local server, same threads.

    python tools/bench_server.py                      # SmolLM2 (embedded), 1 llama.cpp thread each, 3 rounds
    python tools/bench_server.py --threads 2 --rounds 5

Starts `python -m llama_cpp.server` with the same GGUF and the same number of threads, then takes turns (a round is
in process, HTTP at concurrency 1, HTTP at concurrency 16) over the same distinct observation texts with empty caches,
and prints milliseconds per uncached query per round and their medians. llama_cpp.server serves one request at a
time, so concurrency cannot help there; a batching server (llama-server with parallel slots, vLLM) is what it is for.
"""

import os
import signal
import socket
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
    """server port (0: a free one)"""


def start_server(model_path, threads=1, port=0, alias=None):
    """`python -m llama_cpp.server` on 127.0.0.1 (a free port when 0), serving the model as `alias` if given (else as
    its path); returns (process, base URL) once /v1/models answers. Also the tests' server."""
    import httpx

    if not port:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
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


def stop_server(process):
    """SIGTERM by PID, SIGKILL if it does not exit within 20 s."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def ms_per_query(adviser, texts, batch_size):
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        adviser.action_probs(texts[i:i + batch_size])
    assert adviser.stats["misses"] == len(texts), "every query must be uncached"
    return 1000 * (time.perf_counter() - start) / len(texts)


def main(args: Args):
    for name in ["num_states", "rounds", "threads", "batch_size"]:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be 0 (a free one) or a port number up to 65535, got {args.port}")
    if args.env_id not in gym.registry or not args.env_id.startswith("BabyAI-"):
        raise ValueError(f"--env-id {args.env_id}: pass a BabyAI level, e.g. BabyAI-UnlockLocal-v0")
    model_path = resolve_model_path(args.llm_model_path)
    texts = []
    seed = 1
    while len(texts) < args.num_states:  # distinct texts only, so every query is uncached
        more, _ = collect_states(args.env_id, args.num_states, 0.2, seed)
        texts = list(dict.fromkeys(texts + more))[:args.num_states]
        seed += 1
    actions = prompts.allowed_actions(args.env_id)
    process, base_url = start_server(model_path, args.threads, args.port)
    results = {"in process": [], "HTTP, concurrency 1": [], "HTTP, concurrency 16": []}
    requests_per_query = []
    try:
        for _ in range(args.rounds):
            local = make_adviser("llm", actions=actions, model_path=model_path, n_threads=args.threads,
                                 cache_dir=None)
            results["in process"].append(ms_per_query(local, texts, args.batch_size))
            local.close()
            for concurrency in (1, 16):
                served = make_adviser("llm", actions=actions, model_path=model_path, cache_dir=None,
                                      base_url=base_url, max_concurrency=concurrency)
                results[f"HTTP, concurrency {concurrency}"].append(ms_per_query(served, texts, args.batch_size))
                requests_per_query.append(served.stats["requests"] / len(texts))
                served.close()
        # The same prompt again and again: the server's prefix cache leaves one token to evaluate, the rest is the
        # cost of a request itself (HTTP, JSON, the server's log-prob bookkeeping).
        served = make_adviser("llm", actions=actions, model_path=model_path, cache_dir=None, base_url=base_url)
        served.backend.answer(texts[0])
        start = time.perf_counter()
        for _ in range(10):
            served.backend.answer(texts[0])
        repeat_ms = 100 * (time.perf_counter() - start)
        served.close()
    finally:
        stop_server(process)
    local_ms = np.median(results["in process"])
    print(f"## Uncached queries: in process vs llama_cpp.server, {os.path.basename(model_path)}, {args.threads} "
          f"llama.cpp thread(s) each, {len(texts)} distinct {args.env_id} states, batches of {args.batch_size}, "
          f"{args.rounds} rounds taking turns\n")
    print("| path | ms per query, each round | median | queries/s | cost vs in process |\n|---|---|---|---|---|")
    for name, values in results.items():
        median = np.median(values)
        print(f"| {name} | {' / '.join(f'{v:.0f}' for v in values)} | {median:.0f} | {1000 / median:.1f} "
              f"| {median / local_ms - 1:+.0%} |")
    print(f"\nHTTP requests per query: {np.mean(requests_per_query):.2f} (top-100 log-probs held every allowed word "
          f"when this is 1.00). A repeated prompt (one token left to evaluate) takes {repeat_ms:.0f} ms through the "
          f"server. llama_cpp.server evaluates one request at a time: concurrency 16 can only overlap HTTP with "
          f"evaluation there.")


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
