"""The LLM behind an OpenAI-compatible server (llama-server, vLLM, Ollama, llama_cpp.server, OpenAI).

LLMServer does the HTTP: one shared client, a request-rate cap, retries with backoff, token accounting.
ServerBackend is the served backend of prompts.LLMAdviser (same prompts, caches and decoding as in process), with
each uncached query sent to the server:
  --llm-api completions: the in-process prompt text and the next token's top log-probs; allowed words missing from
                         the top-K are scored as continuations (prompt + word, echo + logprobs) where the server
                         offers that (llama_cpp.server, vLLM), else they get the floor probability;
  --llm-api chat:        system + user messages and the first answer token's top_logprobs (OpenAI, Ollama).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time

import numpy as np

import prompts
from llmppo.llama import chat_template_kwargs, load_llama, resolve_model_path

LLM_APIS = ("completions", "chat")
START_A_SERVER = ("start one, e.g. `python -m llama_cpp.server --model FILE.gguf --host 127.0.0.1 --port 8080` "
                  "(README: Serving a bigger LLM), or fix --llm-base-url")
MAX_BACKOFF_SECONDS = 2.0


def check_api_key_env(api_key_env: str):
    """ValueError unless the environment variable named `api_key_env` holds a key that an HTTP header can carry (the
    key is never a flag). The messages say what is wrong with the key without ever showing it."""
    key = os.environ.get(api_key_env)
    if not key:
        raise ValueError(f"--llm-api-key-env {api_key_env}: that environment variable is not set or empty; "
                         f"export {api_key_env}=<your key> (a key is never passed as a flag)")
    if key != key.strip():
        raise ValueError(f"the key in ${api_key_env} starts or ends with a space or a line break (a key file from "
                         f"Windows leaves \\r\\n): export {api_key_env}=\"$(tr -d '[:space:]' < KEYFILE)\"")
    if not key.isascii() or not key.isprintable() or any(character.isspace() for character in key):
        raise ValueError(f"the key in ${api_key_env} holds characters an HTTP header cannot carry (non-ASCII, spaces "
                         f"or control characters): check that the variable holds the key alone")


def token_count(value) -> int:
    """A usage count from a server's answer, or 0 where it is not a sensible number (null, text, 1e400)."""
    return int(value) if isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value < 2**53 else 0


def http_problem(response, path: str) -> str:
    """One line on a failed request: the status and the server's own error message when it sent one as JSON (a web
    page or other text is not pasted into the error)."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message.strip():
            return f"HTTP {response.status_code} from {path}: {' '.join(message.split())[:160]}"
    kind = response.headers.get("content-type", "no content type").split(";")[0]
    return f"HTTP {response.status_code} from {path} (a {kind} answer, not an OpenAI-compatible one)"


class ServerError(Exception):
    """A request that failed for good: past --llm-timeout, or an answer that retrying cannot fix."""


class LLMServer:
    """HTTP to one OpenAI-compatible server, safe to share between threads.

    Each request waits for its slot under `max_rps` (requests start at least 1/max_rps seconds apart); HTTP 429, 5xx,
    timeouts and connection errors are retried with exponential backoff and full jitter until `timeout` seconds have
    passed since the first try. After a request failed for good the server counts as down: each request is tried
    once, without retries, until one succeeds (a stopped server then costs one refused connection per query).
    The API key is read from the environment variable named `api_key_env` and lives only in the client's headers.
    """

    def __init__(self, base_url: str, api_key_env: str | None = None, timeout: float = 30.0, max_rps: float = 0.0,
                 max_concurrency: int = 16):
        import random
        import threading

        import httpx

        headers = {}
        if api_key_env:
            check_api_key_env(api_key_env)
            headers["Authorization"] = "Bearer " + os.environ[api_key_env]
        self.base_url, self.timeout, self.max_rps = base_url.rstrip("/"), float(timeout), float(max_rps)
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout,
                                   limits=httpx.Limits(max_connections=max_concurrency,
                                                       max_keepalive_connections=max_concurrency))
        self.lock, self.jitter = threading.Lock(), random.Random()  # own RNG: training's `random` stays untouched
        self.next_start, self.down = 0.0, False
        self.stop = lambda: False  # ServerBackend points it at the adviser's stop: no retries after a Ctrl-C
        self.counts = dict(requests=0, retries=0, failed_requests=0, prompt_tokens=0, completion_tokens=0)

    def _wait_for_slot(self):
        if self.max_rps <= 0:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start)
            self.next_start = start + 1.0 / self.max_rps
        time.sleep(max(0.0, start - now))

    def _count(self, **increments):
        with self.lock:
            for name, value in increments.items():
                self.counts[name] += value

    def request(self, method: str, path: str, payload: dict | None = None, retry: bool = True,
                budget: float | None = None, retry_refused: bool = True) -> dict:
        """The JSON answer of one request (retried as the class says, for `budget` seconds instead of the timeout
        if given, and not after a refused connection without `retry_refused`); raises ServerError when it gives up."""
        import httpx

        deadline, attempt = time.monotonic() + (self.timeout if budget is None else budget), 0
        retry = retry and not self.down
        while True:
            self._wait_for_slot()
            self._count(requests=1)
            retry_after = 0.0
            try:
                response = self.client.request(method, path, json=payload,
                                               timeout=max(deadline - time.monotonic(), 0.1))
                if response.status_code < 400:
                    answer = response.json()
                    if not isinstance(answer, dict):
                        raise ValueError("a JSON answer that is not an object")
                    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
                    self._count(prompt_tokens=token_count(usage.get("prompt_tokens")),
                                completion_tokens=token_count(usage.get("completion_tokens")))
                    self.down = False
                    return answer
                problem = http_problem(response, path)
                retryable = response.status_code == 429 or response.status_code >= 500
                with contextlib.suppress(ValueError, TypeError):
                    retry_after = float(response.headers.get("retry-after", 0))
            except httpx.TransportError as error:  # refused, reset, timed out
                problem = f"{type(error).__name__} ({error})"
                retryable = retry_refused or not isinstance(error, httpx.ConnectError)
            except (ValueError, AttributeError) as error:  # a 2xx answer that is not a JSON object
                problem, retryable = f"an answer that is not JSON ({error})", False
            delay = max(retry_after, self.jitter.uniform(0, min(MAX_BACKOFF_SECONDS, 0.1 * 2 ** attempt)))
            if not (retry and retryable) or time.monotonic() + delay >= deadline or self.stop():
                self._count(failed_requests=1)
                self.down = self.down or retryable
                raise ServerError(problem)
            self._count(retries=1)
            time.sleep(delay)
            attempt += 1

    def model_ids(self) -> list[str]:
        """The served models' names (GET /models), for the up-front checks and the cache identity."""
        try:
            # A refused connection fails at once (a wrong URL should not wait); a slow or busy server gets time.
            answer = self.request("GET", "/models", budget=max(self.timeout, 10.0), retry_refused=False)
        except ServerError as error:
            if "HTTP 401" in str(error) or "HTTP 403" in str(error):
                raise ValueError(f"the LLM server at {self.base_url} refused the request ({str(error)[:80]}): "
                                 f"check the key in --llm-api-key-env") from None
            if "HTTP 404" in str(error):
                raise ValueError(f"{self.base_url}/models was not found ({str(error)[:100]}): is --llm-base-url the "
                                 "API's root, e.g. http://127.0.0.1:8080/v1?") from None
            raise ValueError(f"cannot reach an LLM server at --llm-base-url {self.base_url} ({str(error)[:120]}); "
                             f"{START_A_SERVER}") from None
        models = answer.get("data")
        ids = [str(model.get("id")) for model in models if isinstance(model, dict) and model.get("id")] \
            if isinstance(models, list) else []
        if not ids:
            raise ValueError(f"the server at --llm-base-url {self.base_url} lists no model at /models; is it an "
                             f"OpenAI-compatible server? {START_A_SERVER}")
        return ids

    def close(self):
        self.client.close()


def top_logprobs(answer: dict, api: str) -> list[tuple[str, float]]:
    """(token text, log-prob) pairs of the first answer token's top-K, from a completions or chat answer."""
    try:
        logprobs = answer["choices"][0]["logprobs"]
        if api == "chat" or "content" in logprobs:  # the chat form (llama-server uses it for completions too)
            return [(str(entry["token"]), float(entry["logprob"])) for entry in logprobs["content"][0]["top_logprobs"]]
        return [(str(text), float(value)) for text, value in logprobs["top_logprobs"][0].items()]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise ServerError("an answer without log-probs") from None


def answer_text(answer: dict, api: str) -> str:
    try:
        choice = answer["choices"][0]
        return str(choice["message"]["content"] if api == "chat" else choice["text"])
    except (KeyError, IndexError, TypeError):
        raise ServerError("an answer without text") from None


def normalized(token_text: str) -> str:
    """'Forward', ' forward' and 'forward.' all name the answer 'forward' (chat answers have no fixed lead-in)."""
    return token_text.strip().lower().strip(".,:;!\"'*")


def check_server_settings(api: str, top_logprobs: int, max_concurrency: int, max_rps: float, timeout: float):
    """ValueError for an unknown API or numbers out of range (the flags' own check is llm_flags.llm_flag_error)."""
    if api not in LLM_APIS:
        raise ValueError(f"--llm-api must be one of {', '.join(LLM_APIS)}, got {api!r}")
    if top_logprobs < 1 or max_concurrency < 1 or max_rps < 0 or not timeout > 0:
        raise ValueError("--llm-top-logprobs and --llm-max-concurrency must be at least 1, --llm-max-rps 0 (no "
                         "limit) or more and --llm-timeout positive")


class ServerBackend:
    """The served backend of prompts.LLMAdviser (the module docstring says how it scores).

    Building it connects to the server and checks the model; prepare(adviser) then probes the endpoint once with the
    adviser's prompt. The prompt text is the in-process one: the chat template comes from a local GGUF when there is
    one (`model_path`, or the served model's name when that is a GGUF file on this machine, as llama_cpp.server
    reports it; only the vocabulary is loaded), else from the server's /props (llama-server), else a built-in format
    chosen by the model's name. The identity (cache keys) is the served model's name, the API and the top-K, so a hit
    never touches the network. A query that fails past `timeout` gives None (the adviser gives the state uniform
    advice, counted in stats["fallbacks"]), with one warning line. In-process settings (threads, context size, GPU
    layers) belong to the server.
    """

    def __init__(self, base_url: str, model: str | None = None, api: str = "completions", api_key_env: str | None = None,
                 model_path: str | None = None, top_logprobs: int = 100, max_concurrency: int = 16,
                 max_rps: float = 0.0, timeout: float = 30.0, stop=lambda: False):
        check_server_settings(api, top_logprobs, max_concurrency, max_rps, timeout)
        self.api, self.top_k, self.max_concurrency = api, int(top_logprobs), int(max_concurrency)
        self.adviser, self.n_prefix_tokens, self.warned, self.stopped = None, 0, False, stop
        self.server = LLMServer(base_url, api_key_env, timeout, max_rps, max_concurrency)
        self.server.stop = lambda: self.stop()  # read at each retry, so a stop set later applies
        served = self.server.model_ids()
        if model and model not in served:
            raise ValueError(f"the server at --llm-base-url {base_url} serves {', '.join(served)}; "
                             f"--llm-model {model} is not one of them")
        if not model and len(served) > 1:
            raise ValueError(f"the server at --llm-base-url {base_url} serves several models ({', '.join(served)}): "
                             f"pick one with --llm-model")
        self.model = model or served[0]
        self.template_kwargs, self.template_source = self._template_kwargs(model_path)

    def stop(self) -> bool:
        """Ctrl-C: no more retries, and the queries not yet sent are skipped (the start-up checks too)."""
        return self.stopped() or (self.adviser is not None and self.adviser.stop())

    @property
    def prompt_tokens(self) -> int:
        return self.server.counts["prompt_tokens"]

    def _template_kwargs(self, model_path: str | None) -> tuple[dict, str]:
        path = model_path or (self.model if self.model.endswith(".gguf") and os.path.isfile(self.model) else None)
        if path:
            from llama_cpp._utils import suppress_stdout_stderr

            path = resolve_model_path(path)
            with suppress_stdout_stderr(disable=False):  # llama.cpp's C-level log lines
                vocab = load_llama(model_path=path, vocab_only=True, verbose=False)
            kwargs = chat_template_kwargs(vocab, path)
            vocab.close()
            return kwargs, f"the chat template of {os.path.basename(path)}"
        root = self.server.base_url.rsplit("/v1", 1)[0]
        with contextlib.suppress(ServerError, AttributeError, TypeError):
            props = self.server.request("GET", root + "/props", retry=False)
            if props.get("chat_template"):
                return dict(chat_template=props["chat_template"], bos_token=str(props.get("bos_token", "")),
                            eos_token=str(props.get("eos_token", "")), model_name=self.model,
                            add_bos=self._adds_bos(root, props)), "the server's /props"
        return dict(model_name=self.model), "a built-in chat format chosen by the model's name"

    def _adds_bos(self, root: str, props: dict) -> bool:
        """Does the server put BOS before a prompt itself? /props may say; else llama-server's /tokenize shows it
        (one token more with the special tokens added); unknown: yes, as most models do."""
        if isinstance(props.get("add_bos_token"), bool):
            return props["add_bos_token"]
        with contextlib.suppress(ServerError, AttributeError, TypeError, KeyError):
            lengths = [len(self.server.request("POST", root + "/tokenize", dict(content="a", add_special=special),
                                               retry=False)["tokens"]) for special in (True, False)]
            return lengths[0] > lengths[1]
        return True

    def prepare(self, adviser):
        """The start-up probe with the adviser's prompt (ValueError if the server cannot serve its mode)."""
        self.adviser = adviser
        self.echo_scoring, run_timeout = False, self.server.timeout
        self.server.timeout = max(run_timeout, 10.0)  # the start-up checks wait for a busy server; queries do not
        try:
            self.echo_scoring = self._probe()
        finally:
            self.server.timeout = run_timeout
        self.identity = f"served:{self.api}:top{self.top_k}:echo{int(self.echo_scoring)}:{self.model}"
        self.server.counts = dict.fromkeys(self.server.counts, 0)  # the start-up checks are not queries

    def _probe(self) -> bool:
        """Queries up front: does the endpoint return log-probs (score mode), how many (a server that allows fewer
        top log-probs than asked gets its maximum, 20, with a note), and does it score continuations exactly (the
        echoed log-prob of the top answer token must equal its top-K log-prob: llama_cpp.server's echo is off by one
        token and fails this)?"""
        probe = "Goal: probe. You see nothing. You carry nothing."
        try:
            if self.adviser.mode == "generate":
                answer_text(self._request(probe, 1), self.api)
                return False
            try:
                top = top_logprobs(self._request(probe, 1), self.api)
            except ServerError as error:
                if self.top_k <= 20 or "HTTP 4" not in str(error):
                    raise
                print(f"note: the server at {self.server.base_url} refused {self.top_k} top log-probs; using 20",
                      flush=True)
                self.top_k = 20
                top = top_logprobs(self._request(probe, 1), self.api)
        except (ServerError, TypeError, ValueError, AttributeError) as error:  # no answer, or a malformed one
            where = "/chat/completions" if self.api == "chat" else "/completions"
            raise ValueError(f"the server at {self.server.base_url} answered {where} without usable log-probs "
                             f"({str(error)[:120]}): use --llm-mode generate, the other --llm-api, or a server that "
                             f"returns log-probs (llama-server, vLLM, llama_cpp.server)") from None
        words = [(text, value) for text, value in top if text.strip()]
        if self.api == "chat" or not words:
            return False
        text, value = max(words, key=lambda entry: entry[1])
        try:
            # Not retried: a server without echo refuses it at once, every time (llama-server: HTTP 500).
            echoed = self._continuation_logprob(self.adviser.prompt_text(probe), text, retry=False)
        except ServerError:
            return False
        return echoed is not None and abs(echoed - value) < 1e-3

    # --- requests ---
    def _request(self, obs_text: str, max_tokens: int, text: str | None = None, echo: bool = False,
                 subgoals: bool = False, retry: bool = True) -> dict:
        mode = self.adviser.mode
        payload = dict(model=self.model, max_tokens=max_tokens, temperature=0.0)
        if self.api == "chat":
            instructions = prompts.SUBGOAL_INSTRUCTIONS if subgoals else prompts.instruction_text(self.adviser.actions)
            payload["messages"] = [{"role": "system", "content": prompts.SYSTEM_PROMPT},
                                   {"role": "user", "content": instructions + obs_text}]
            if mode == "score" or subgoals:
                payload |= dict(logprobs=True, top_logprobs=min(self.top_k, 20))
            return self.server.request("POST", "/chat/completions", payload)
        payload["prompt"] = self.adviser.prompt_text(obs_text) if text is None else text
        if mode == "score" or subgoals or echo:
            payload["logprobs"] = self.top_k
        if echo:
            payload |= dict(echo=True, logprobs=1)
        if mode == "generate" and not subgoals:
            payload["stop"] = ["\n"]
        return self.server.request("POST", "/completions", payload, retry=retry)

    def _continuation_logprob(self, prompt: str, continuation: str, retry: bool = True) -> float | None:
        """log p(continuation | prompt) from an echo of prompt + continuation: the log-probs of its last tokens (after
        dropping the generated one), None where the tokens do not end exactly at the prompt's end."""
        answer = self._request("", 1, text=prompt + continuation, echo=True, retry=retry)
        try:
            logprobs = answer["choices"][0]["logprobs"]
            tokens, token_logprobs = logprobs["tokens"], logprobs["token_logprobs"]
            echoed = answer["choices"][0]["text"]
        except (KeyError, IndexError, TypeError):
            return None
        if not (isinstance(echoed, str) and isinstance(tokens, list) and isinstance(token_logprobs, list)
                and len(tokens) == len(token_logprobs) and all(isinstance(token, str) for token in tokens)):
            return None  # a malformed echo: this word is not scored
        generated = echoed[len(prompt + continuation):] if echoed.startswith(prompt + continuation) else None
        end = len(tokens)
        while generated and end > 0 and generated.endswith(tokens[end - 1]):  # the generated token(s), if listed
            generated, end = generated[: len(generated) - len(tokens[end - 1])], end - 1
        text, total = "", 0.0
        for position in range(end - 1, 0, -1):
            if token_logprobs[position] is None:
                return None
            if not isinstance(token_logprobs[position], (int, float)):
                return None
            text, total = tokens[position] + text, total + float(token_logprobs[position])
            if text == continuation:
                return total
            if len(text) >= len(continuation):
                return None
        return None

    def _followed_logprob(self, obs_text: str, top: list, continuation: str) -> float | None:
        """log p(continuation) for a word of several tokens, read token by token from top-K lists: the longest top-K
        token (two characters or more) that starts it, then one request per further token (Llama-2's " pickup" is
        " pick" then "up"); None where a token leaves the top-K. Cheaper than an echo, and servers without echo
        answer it."""
        text, total = self.adviser.prompt_text(obs_text), 0.0
        for _ in range(3):
            starts = [(token, value) for token, value in top if len(token.strip()) > 1 and continuation.startswith(token)]
            if not starts:
                return None
            token, value = max(starts, key=lambda entry: len(entry[0]))
            text, continuation, total = text + token, continuation[len(token):], total + value
            if not continuation:
                return total
            top = top_logprobs(self._request(obs_text, 1, text=text), self.api)
        return None

    def _failed(self, error: Exception):
        """The state gets no advice (None: a counted fallback), with one warning line for the whole run."""
        self._warn(error if isinstance(error, ServerError) else
                   ServerError(f"a malformed answer ({type(error).__name__}: {error})"))
        return None

    def _warn(self, error: ServerError):
        with self.server.lock:  # queries run in threads: one warning line in all
            first, self.warned = not self.warned, True
        if first:
            print(f"warning: the LLM server at {self.server.base_url} failed ({str(error)[:160]}); such states get "
                  f"uniform advice (counted in the fallbacks) and training goes on", file=sys.stderr, flush=True)

    # --- what the adviser asks ---
    def answer(self, obs_text: str):
        """Raw scores (score mode) or reply text (generate mode) for one state; None if the server failed or stop()."""
        if self.stop():
            return None
        try:
            if self.adviser.mode == "generate":
                return answer_text(self._request(obs_text, prompts.MAX_REPLY_TOKENS), self.api).strip()
            top = top_logprobs(self._request(obs_text, 1), self.api)
            raw_scores = [-np.inf] * prompts.NUM_ACTIONS
            for action in self.adviser.actions:
                word = prompts.ACTION_WORDS[action]
                if self.api == "chat":  # the answer's first token, any case or spacing
                    values = [value for text, value in top if normalized(text) == word]
                else:  # the tokens that follow the lead-in, as in process
                    values = [value for text, value in top if text == " " + word]
                    followed = None if values else self._followed_logprob(obs_text, top, " " + word)
                    values = values or ([] if followed is None else [followed])
                if values:
                    raw_scores[action] = float(np.logaddexp.reduce(values))
                elif self.echo_scoring:
                    score = self._continuation_logprob(self.adviser.prompt_text(obs_text), " " + word)
                    raw_scores[action] = -np.inf if score is None else score
            return raw_scores
        except Exception as error:  # no answer, or a malformed one of any shape: a counted fallback, never a crash
            return self._failed(error)

    def answer_all(self, obs_texts: list[str]) -> list:
        """One step's uncached queries at once (up to max_concurrency in flight: a batching server runs them together)."""
        from concurrent.futures import ThreadPoolExecutor

        if len(obs_texts) == 1 or self.max_concurrency == 1:
            answers = [self.answer(obs_text) for obs_text in obs_texts]
        else:
            with ThreadPoolExecutor(min(self.max_concurrency, len(obs_texts))) as pool:
                answers = list(pool.map(self.answer, obs_texts))
        self._copy_counts()
        return answers

    def subgoal_scores(self, query: str, n_candidates: int) -> list[float] | None:
        """Log-likelihoods of the candidates' numbers. Where the first answer token is a space (SmolLM2, Llama-2 put
        one before a digit), the numbers are read after it, as in process. A number missing from the top-K is scored
        as a continuation where the server echoes exactly (as the action words are), else it gets no score."""
        try:
            text = self.adviser.subgoal_text(query)
            top = top_logprobs(self._request(query, 1, text=text, subgoals=True), self.api)
            numbers = [str(number) for number in range(1, n_candidates + 1)]
            if self.api == "chat":
                return [float(np.logaddexp.reduce(values)) if values else -np.inf for values in
                        ([value for token_text, value in top if normalized(token_text) == number] for number in numbers)]
            lead = " "  # completions: the exact next text, " 2" after "Subgoal:", or "2" after the space
            best = max(top, key=lambda entry: entry[1])[0] if top else ""
            if best.isspace() and not any(token_text == lead + number for token_text, _ in top for number in numbers):
                text, lead = text + best, ""
                top = top_logprobs(self._request(query, 1, text=text, subgoals=True), self.api)
            scores = []
            for number in numbers:
                values = [value for token_text, value in top if token_text == lead + number]
                if not values and self.echo_scoring:
                    score = self._continuation_logprob(text, lead + number)
                    values = [] if score is None else [score]
                scores.append(float(np.logaddexp.reduce(values)) if values else -np.inf)
            return scores
        except Exception as error:  # no answer, or a malformed one of any shape: a counted fallback, never a crash
            return self._failed(error)
        finally:
            self._copy_counts()

    def _copy_counts(self):
        """The HTTP requests and token usage so far into the adviser's stats (after each batch, not per thread)."""
        self.adviser.stats.update(self.server.counts)

    def close(self):
        self.server.close()
