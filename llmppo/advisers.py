"""The baseline advisers, with the LLM adviser's interface (prompts.py): the BabyAI expert bot, uniform (no advice),
random (consistent but useless) and noisy-expert (the bot at a known accuracy); and make_adviser(), which builds any
adviser by name, the LLM one in process or served."""

from __future__ import annotations

import hashlib

import numpy as np

from prompts import (NO_ADVICE, NUM_ACTIONS, LLMAdviser, check_actions, check_candidates, check_llm_settings,
                     finalize_probs, new_stats, subgoal_query, uniform_probs)


class ExpertAdviser:
    """One-hot (optionally smoothed) on the BabyAI bot's action; uniform where there is none (-1)."""

    def __init__(self, smoothing: float = 0.0, actions: list[int] | None = None):
        if not 0.0 <= smoothing <= 1.0:
            raise ValueError(f"expert smoothing must be in [0, 1], got {smoothing}")
        self.smoothing, self.actions, self.stats = float(smoothing), check_actions(actions), new_stats()

    def action_probs(self, obs_texts: list[str], expert_actions=None, cached_only: bool = False) -> np.ndarray:
        if expert_actions is None:
            raise ValueError("the expert adviser needs info['expert_action']: wrap the env in BabyAIBotWrapper")
        expert_actions = np.asarray(expert_actions).reshape(-1)
        if len(expert_actions) != len(obs_texts):
            raise ValueError(f"got {len(expert_actions)} expert actions for {len(obs_texts)} observations")
        probs = np.empty((len(obs_texts), NUM_ACTIONS), dtype=np.float32)
        for row, expert_action in enumerate(expert_actions.astype(int)):
            uniform = uniform_probs(self.actions)
            if 0 <= expert_action < NUM_ACTIONS:
                one_hot = np.eye(NUM_ACTIONS)[expert_action]
                probs[row] = finalize_probs((1 - self.smoothing) * one_hot + self.smoothing * uniform)
            else:
                self.stats["fallbacks"] += 1
                probs[row] = finalize_probs(uniform)
        self.stats["queries"] += len(obs_texts)
        return probs

    # All mass on the candidate that comes first in the BabyAI bot's plan (info["expert_plan"]: "go to the
    # yellow key" while the bot walks there, then "pick up the yellow key", ...), with `smoothing` spread
    # uniformly. When no candidate is on the plan it returns zeros (counted in stats["fallbacks"]): the upper
    # bound pays nothing for off-plan subgoals, even a lone one.
    def subgoal_probs(self, obs_text: str, candidate_texts: list[str], expert_plan=None) -> np.ndarray:
        candidate_texts = check_candidates(candidate_texts)
        n = len(candidate_texts)
        planned = [candidate_texts.index(text) for text in (expert_plan or ()) if text in candidate_texts]
        self.stats["queries"] += int(n > 0)
        if not planned:
            self.stats["fallbacks"] += int(n > 0)
            return np.zeros(n, dtype=np.float32)
        return ((1 - self.smoothing) * np.eye(n)[planned[0]] + self.smoothing / n).astype(np.float32)


class UniformAdviser:
    """Uniform over all 7 actions: the 'no advice' control. It adds the same constant to every logit of a
    product-of-experts policy, so a guided run with it is the baseline run. (`actions` is accepted for the common
    interface and ignored on purpose: uniform over the allowed subset would already be advice.)"""

    def __init__(self, actions: list[int] | None = None):
        self.actions, self.stats = list(range(NUM_ACTIONS)), new_stats()

    def action_probs(self, obs_texts: list[str], expert_actions=None, cached_only: bool = False) -> np.ndarray:
        self.stats["queries"] += len(obs_texts)
        return np.tile(NO_ADVICE, (len(obs_texts), 1))

    # Uniform over the candidates: the null control. Every achievable subgoal pays the same, so a run with it
    # measures the bonus for 'doing something with an object' without any knowledge of which thing is useful.
    def subgoal_probs(self, obs_text: str, candidate_texts: list[str], expert_plan=None) -> np.ndarray:
        candidate_texts = check_candidates(candidate_texts)
        self.stats["queries"] += int(len(candidate_texts) > 1)  # like the LLM: one candidate needs no ranking
        return np.full(len(candidate_texts), 1.0 / max(len(candidate_texts), 1), dtype=np.float32)


def hashed_rng(*parts) -> np.random.Generator:
    """A generator seeded by the text of `parts`: the same situation always gets the same draw, like a cached LLM."""
    digest = hashlib.sha256("\n".join(str(part) for part in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


class RandomAdviser:
    """A consistent but useless adviser: a random distribution per observation text (seeded by its hash)."""

    def __init__(self, seed: int = 0, actions: list[int] | None = None):
        self.seed, self.actions, self.stats = int(seed), check_actions(actions), new_stats()

    def action_probs(self, obs_texts: list[str], expert_actions=None, cached_only: bool = False) -> np.ndarray:
        probs = np.empty((len(obs_texts), NUM_ACTIONS), dtype=np.float32)
        for row, obs_text in enumerate(obs_texts):
            rng = hashed_rng(self.seed, obs_text)
            row_probs = np.zeros(NUM_ACTIONS)
            row_probs[self.actions] = rng.dirichlet(np.ones(len(self.actions)))
            probs[row] = finalize_probs(row_probs)
        self.stats["queries"] += len(obs_texts)
        return probs

    # A consistent but useless ranking: a random distribution per (observation, candidates), seeded by hash.
    def subgoal_probs(self, obs_text: str, candidate_texts: list[str], expert_plan=None) -> np.ndarray:
        candidate_texts = check_candidates(candidate_texts)
        if len(candidate_texts) <= 1:
            return np.ones(len(candidate_texts), dtype=np.float32)
        self.stats["queries"] += 1
        rng = hashed_rng(self.seed, subgoal_query(obs_text, candidate_texts))
        return rng.dirichlet(np.ones(len(candidate_texts))).astype(np.float32)


class NoisyExpertAdviser:
    """The BabyAI bot's action with probability `accuracy`, otherwise a uniformly chosen wrong action: an adviser of
    known quality, to place real LLMs on an accuracy axis (issue: "how good must the LLM be?").

    The draw is seeded by (seed, observation text, expert action), so like a cached LLM it gives the same answer in
    the same situation. The returned distribution is as confident as a real LLM's: `confidence` (0.8) on the advised
    action and the rest spread over the other allowed actions; with `calibrated`, the confidence equals the accuracy
    (p on the advised action, 1 - p spread), i.e. an adviser that knows how often it is right.
    """

    def __init__(self, accuracy: float = 1.0, calibrated: bool = False, confidence: float = 0.8, seed: int = 0,
                 actions: list[int] | None = None):
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"advice accuracy must be in [0, 1], got {accuracy}")
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"advice confidence must be in (0, 1), got {confidence}")
        self.accuracy, self.calibrated, self.seed = float(accuracy), bool(calibrated), int(seed)
        self.confidence = float(accuracy) if calibrated else float(confidence)
        self.actions, self.stats = check_actions(actions), new_stats()
        self.stats["agreed"] = 0  # how often the advice was the expert's action (the empirical accuracy)

    def peaked(self, top: int, n: int) -> np.ndarray:
        """`confidence` on index `top`, the rest spread evenly over the other n - 1."""
        if n == 1:
            return np.ones(1)
        probs = np.full(n, (1.0 - self.confidence) / (n - 1))
        probs[top] = self.confidence
        return probs

    def action_probs(self, obs_texts: list[str], expert_actions=None, cached_only: bool = False) -> np.ndarray:
        if expert_actions is None:
            raise ValueError("the noisy-expert adviser needs info['expert_action']: wrap the env in BabyAIBotWrapper")
        expert_actions = np.asarray(expert_actions).reshape(-1).astype(int)
        probs = np.empty((len(obs_texts), NUM_ACTIONS), dtype=np.float32)
        for row, (obs_text, expert_action) in enumerate(zip(obs_texts, expert_actions)):
            if not 0 <= expert_action < NUM_ACTIONS:
                self.stats["fallbacks"] += 1
                probs[row] = finalize_probs(uniform_probs(self.actions))
                continue
            choices = sorted(set(self.actions) | {int(expert_action)})
            rng = hashed_rng(self.seed, obs_text, expert_action)
            wrong = [a for a in choices if a != expert_action]
            advised = expert_action if rng.random() < self.accuracy or not wrong else wrong[rng.integers(len(wrong))]
            self.stats["agreed"] += int(advised == expert_action)
            row_probs = np.zeros(NUM_ACTIONS)
            row_probs[choices] = self.peaked(choices.index(advised), len(choices))
            probs[row] = finalize_probs(row_probs)
        self.stats["queries"] += len(obs_texts)
        return probs

    # The expert's ranking (the bot plan's next subgoal on top) with probability `accuracy`, otherwise a wrong
    # candidate on top; where no candidate is on the plan, the right answer is "none" (zeros, as the expert).
    def subgoal_probs(self, obs_text: str, candidate_texts: list[str], expert_plan=None) -> np.ndarray:
        candidate_texts = check_candidates(candidate_texts)
        n = len(candidate_texts)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        self.stats["queries"] += 1
        planned = [candidate_texts.index(text) for text in (expert_plan or ()) if text in candidate_texts]
        rng = hashed_rng(self.seed, subgoal_query(obs_text, candidate_texts), planned[:1])
        right = rng.random() < self.accuracy
        self.stats["agreed"] += int(right)
        if planned and (right or n == 1):
            return self.peaked(planned[0], n).astype(np.float32)
        if right:  # nothing on the plan: the expert would pay nothing
            self.stats["fallbacks"] += 1
            return np.zeros(n, dtype=np.float32)
        wrong = [i for i in range(n) if not planned or i != planned[0]]
        return self.peaked(wrong[rng.integers(len(wrong))], n).astype(np.float32)


ADVISER_NAMES = ("llm", "expert", "uniform", "random", "noisy-expert")
SERVER_KWARGS = ("base_url", "model", "api", "api_key_env", "top_logprobs", "max_concurrency", "max_rps", "timeout")
LLAMA_KWARGS = ("n_gpu_layers", "n_threads", "n_ctx")  # in process only: a server has its own


def make_adviser(name: str, actions: list[int] | None = None, seed: int = 0, smoothing: float = 0.0,
                 accuracy: float = 1.0, calibrated: bool = False, stop=lambda: False, **llm_kwargs):
    """'llm' -> LLMAdviser(backend, ...) with `stop` (see LLMAdviser.stop): the backend is a ServerBackend when
    llm_kwargs has a base_url, else a LlamaBackend; the others answer at once and ignore the LLM arguments
    ('noisy-expert' takes `accuracy` and `calibrated`)."""
    if name == "llm":
        from llmppo.llama import LlamaBackend
        from llmppo.server import ServerBackend

        server_kwargs = {key: llm_kwargs.pop(key) for key in SERVER_KWARGS if key in llm_kwargs}
        llama_kwargs = {key: llm_kwargs.pop(key) for key in LLAMA_KWARGS if key in llm_kwargs}
        model_path = llm_kwargs.pop("model_path", None)
        check_llm_settings(actions=actions, **llm_kwargs)  # before connecting to a server or loading a model
        if server_kwargs.get("base_url"):
            backend = ServerBackend(model_path=model_path, stop=stop, **server_kwargs)
        else:
            backend = LlamaBackend(model_path=model_path, **llama_kwargs)
        adviser = LLMAdviser(backend, actions=actions, **llm_kwargs)
        adviser.stop = stop
        return adviser
    if name == "expert":
        return ExpertAdviser(smoothing=smoothing, actions=actions)
    if name == "uniform":
        return UniformAdviser(actions=actions)
    if name == "random":
        return RandomAdviser(seed=seed, actions=actions)
    if name == "noisy-expert":
        return NoisyExpertAdviser(accuracy=accuracy, calibrated=calibrated, seed=seed, actions=actions)
    raise ValueError(f"unknown adviser {name!r}: choose one of {', '.join(ADVISER_NAMES)}")


