"""The LLM deployment flags, defined once (LLMFlags: which model, where it runs, its cache), checked once
(llm_flag_error: cheap, before any model loads or run folder exists) and turned into an adviser in one call
(make_adviser_from_flags). The scripts' own Args inherit LLMFlags; flags that change the algorithm (the adviser, its
temperature, mode, coefficients...) stay in each script."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Optional

from llmppo.advisers import ADVISER_NAMES, make_adviser
from llmppo.answer_cache import DEFAULT_CACHE_DIR
from llmppo.llama import gguf_load_error, resolve_model_path
from llmppo.server import LLM_APIS, check_api_key_env, check_server_settings
from prompts import SUBGOAL_ORDERS

MIN_N_CTX, MAX_N_CTX = 256, 1 << 20  # below: no room for the instructions and an observation; above: no such model
SERVER_ONLY = ("llm_top_logprobs", "llm_max_concurrency", "llm_timeout", "llm_max_rps")  # in process: no such setting


@dataclass
class LLMFlags:
    llm_model_path: Optional[str] = None
    """GGUF model file (e.g. llama-2-7b-chat.Q4_K_M.gguf); default: the embedded SmolLM2-135M-Instruct"""
    llm_n_gpu_layers: int = 0
    """layers to offload to the GPU (-1: all; needs a CUDA/Metal build of llama-cpp-python)"""
    llm_n_threads: Optional[int] = None
    """llama.cpp threads (default: all cores; torch and the envs wait while the LLM runs)"""
    llm_n_ctx: int = 512
    """llama.cpp context size in tokens"""
    llm_cache_dir: str = DEFAULT_CACHE_DIR
    """persistent cache of LLM answers ("none" disables it): a second run on the same states is nearly free"""
    llm_base_url: Optional[str] = None
    """an OpenAI-compatible LLM server (llama-server, vLLM, Ollama, OpenAI), e.g. http://127.0.0.1:8080/v1; default: none,
    the GGUF model runs in this process"""
    llm_model: Optional[str] = None
    """the served model's name (default: the server's only model)"""
    llm_api: str = "completions"
    """completions: the in-process prompt text and next-token log-probs; chat: messages and the answer's top_logprobs"""
    llm_api_key_env: Optional[str] = None
    """name of the environment variable that holds the server's API key (never the key itself; it is not logged)"""
    llm_top_logprobs: int = 100
    """top log-probs asked of the server per answer token (a server that allows fewer gets its maximum, 20)"""
    llm_max_concurrency: int = 16
    """uncached server queries of one step sent at once, so that a batching server evaluates them together"""
    llm_max_rps: float = 0.0
    """at most this many server requests per second (0: no limit)"""
    llm_timeout: float = 30.0
    """seconds one server query may take, retries included; past it the state gets no advice (counted as a fallback)"""
    llm_usd_per_mtok: float = 0.0
    """price per million server tokens (prompt + completion), for a cost estimate in the logs (0: none)"""


def llm_flag_error(args) -> str | None:
    """The first problem with the LLM flags of `args` (ppo_llm_policy.py, ppo_llm_explore.py, tools/advice_eval.py) as
    one line naming the flag, or None. Cheap: checked before any work, without loading the model's weights or asking a
    server (building the adviser, before the run folder exists, is where a server is reached and probed, once). The
    float flags are checked before, by llmppo.checks.float_flag_error."""
    adviser = getattr(args, "advisor", None)
    if adviser is not None and adviser not in ADVISER_NAMES:
        return f"unknown --advisor '{adviser}': choose one of {', '.join(ADVISER_NAMES)}"
    if adviser in ("expert", "noisy-expert") and not args.env_id.startswith("BabyAI-"):
        return f"--advisor {adviser} needs a BabyAI-* level (the BabyAI bot cannot plan {args.env_id})"
    n_threads = getattr(args, "llm_n_threads", None)
    if n_threads is not None and n_threads < 1:
        return f"--llm-n-threads must be at least 1 (leave it out to use all cores), got {n_threads}"
    n_ctx = getattr(args, "llm_n_ctx", None)
    if n_ctx is not None and not MIN_N_CTX <= n_ctx <= MAX_N_CTX:
        return f"--llm-n-ctx must be between {MIN_N_CTX} and {MAX_N_CTX} tokens (default 512), got {n_ctx}"
    n_gpu_layers = getattr(args, "llm_n_gpu_layers", None)
    if n_gpu_layers is not None and n_gpu_layers < -1:
        return f"--llm-n-gpu-layers must be -1 (all), 0 (none) or more, got {n_gpu_layers}"
    mode = getattr(args, "llm_mode", None)
    if mode is not None and mode not in ("score", "generate"):
        return f"--llm-mode must be score or generate, got '{mode}'"
    cache_dir = getattr(args, "llm_cache_dir", None)
    if cache_dir and str(cache_dir).lower() != "none":
        existing = os.path.abspath(os.path.expanduser(str(cache_dir)))
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            return f"--llm-cache-dir {cache_dir}: {existing} is a file, not a folder; pass a folder, or none for no cache"
    subgoal_orders = getattr(args, "llm_subgoal_orders", None)
    if subgoal_orders is not None and subgoal_orders not in SUBGOAL_ORDERS:
        return f"--llm-subgoal-orders must be one of {', '.join(SUBGOAL_ORDERS)}, got '{subgoal_orders}'"
    if getattr(args, "advisor", "llm") == "llm" and getattr(args, "llm_base_url", None):
        return served_flag_error(args)
    ignored = [f"--{name.replace('_', '-')}" for name in SERVER_ONLY if getattr(args, name) != LLMFlags.__dataclass_fields__[name].default]
    if ignored:
        print(f"warning: {', '.join(ignored)}: settings of a served model, ignored without --llm-base-url", file=sys.stderr)
    if getattr(args, "advisor", "llm") == "llm":
        try:
            path = resolve_model_path(getattr(args, "llm_model_path", None))
        except (FileNotFoundError, ValueError) as error:
            return str(error)
        return gguf_load_error(path)
    return None


def served_flag_error(args) -> str | None:
    """The first problem with a script's --llm-base-url flags (API, numbers, key variable, local GGUF file, price) as
    one line naming what to fix, or None; the server itself is reached once, when the adviser is built."""
    if getattr(args, "llm_api", "completions") not in LLM_APIS:
        return f"--llm-api must be one of {', '.join(LLM_APIS)}, got '{args.llm_api}'"
    try:
        check_server_settings(args.llm_api, args.llm_top_logprobs, args.llm_max_concurrency, args.llm_max_rps,
                              args.llm_timeout)
        if args.llm_api_key_env:
            check_api_key_env(args.llm_api_key_env)
        if args.llm_model_path:  # its chat template is read when the adviser is built
            resolve_model_path(args.llm_model_path)
    except (ValueError, FileNotFoundError) as error:
        return str(error)
    return None


def make_adviser_from_flags(args, actions: list[int], stop=lambda: False, **overrides):
    """The adviser that a script's flags ask for (make_adviser with them): --advisor (default llm), --seed, the LLMFlags
    fields, and where the script has them --advice-accuracy, --advice-calibrated, --llm-temperature, --llm-mode,
    --llm-subgoal-orders; `overrides` replace make_adviser's arguments (e.g. a temporary cache_dir). In the scripts,
    inside try/except ValueError: a model that does not load or a server that does not answer is a one-line error."""
    kwargs = dict(seed=getattr(args, "seed", 0), accuracy=getattr(args, "advice_accuracy", 1.0),
                  calibrated=getattr(args, "advice_calibrated", False), model_path=args.llm_model_path,
                  n_gpu_layers=args.llm_n_gpu_layers, n_threads=args.llm_n_threads, n_ctx=args.llm_n_ctx,
                  temperature=getattr(args, "llm_temperature", 1.0), mode=getattr(args, "llm_mode", "score"),
                  cache_dir=args.llm_cache_dir, subgoal_orders=getattr(args, "llm_subgoal_orders", "listed"),
                  base_url=args.llm_base_url, model=args.llm_model, api=args.llm_api, api_key_env=args.llm_api_key_env,
                  top_logprobs=args.llm_top_logprobs, max_concurrency=args.llm_max_concurrency,
                  max_rps=args.llm_max_rps, timeout=args.llm_timeout)
    kwargs.update(overrides)
    try:
        return make_adviser(getattr(args, "advisor", "llm"), actions=actions, stop=stop, **kwargs)
    except ValueError:
        if stop():  # Ctrl-C during a server's start-up checks: not a problem with the flags
            print("interrupted before the run started: nothing was written", file=sys.stderr)
            sys.exit(130)
        raise
