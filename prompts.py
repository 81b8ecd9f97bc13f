"""The language side of the advisers for PPO in MiniGrid/BabyAI: what an LLM reads and how its answers become advice.

Every adviser has the same interface:

    probs = adviser.action_probs(obs_texts, expert_actions=None)  # (N, 7) float32, rows sum to 1, all > 0
    adviser.stats                                                  # dict of counters

`obs_texts` come from `describe_observation(image, direction, mission)` (one per env), `expert_actions` from
llmppo.bot.BabyAIBotWrapper (info["expert_action"], -1 = none). Read top to bottom: 1. observation -> text,
2. actions as words, 3. subgoals as text, 4. the prompt in the model's chat format, 5. next-token log-probs -> advice,
6. the LLM adviser (prompts, cache lookups, decoding; its model is a backend). The machinery (the model in process or
served, the caches, the baseline advisers, the env-side wrappers, the scripts' LLM flags) is in llmppo/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
import warnings

import numpy as np
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

from llmppo.answer_cache import DEFAULT_CACHE_DIR, AnswerCache
from llmppo.llm_logging import new_stats, update_rates

IDX_TO_OBJECT = {idx: name for name, idx in OBJECT_TO_IDX.items()}
IDX_TO_COLOR = {idx: name for name, idx in COLOR_TO_IDX.items()}
IDX_TO_STATE = {idx: name for name, idx in STATE_TO_IDX.items()}

NUM_ACTIONS = 7  # MiniGrid's action set: left, right, forward, pickup, drop, toggle, done
PROB_FLOOR = 1e-4  # every action keeps at least this much probability so log-probs stay finite

# -----------------------------------------------------------------------------------------------------
# 1. Observation -> text
# -----------------------------------------------------------------------------------------------------
# minigrid's obs["image"] is indexed image[x, y] = (object, color, state). The agent stands at
# (x=3, y=6) facing toward y=0, so "forward" distance is 6 - y and x - 3 is "right" (negative: left).
# The agent's own cell shows what it carries. Cells hidden behind walls are "unseen" (idx 0).
# The text is short on purpose: every token costs LLM time, and the wording is deterministic because
# it is the cache key.

AGENT_X, AGENT_Y = 3, 6
MAX_OBJECTS = 4  # a few objects only: more is rarely useful and costs tokens
SKIPPED_OBJECTS = {"unseen", "empty", "floor", "agent", "wall"}  # walls get their own short sentence
# Number words: " two" is one token for BPE tokenizers that split digits (" 2" is two: " ", "2").
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def object_name(object_idx: int, color_idx: int, state_idx: int) -> str:
    """'locked yellow door', 'red key', 'goal', 'lava'."""
    object_type = IDX_TO_OBJECT.get(int(object_idx), "thing")
    if object_type in ("goal", "lava", "wall"):  # color carries no information for these
        return object_type
    color = IDX_TO_COLOR.get(int(color_idx), "")
    if object_type == "door":
        return f"{IDX_TO_STATE.get(int(state_idx), 'closed')} {color} door"
    return f"{color} {object_type}"


def relative_position(steps_forward: int, steps_right: int) -> str:
    """Egocentric offset in words: 'two forward one left', 'one right', 'three forward'."""
    parts = []
    if steps_forward:
        parts.append(f"{number_word(steps_forward)} forward")
    if steps_right:
        parts.append(f"{number_word(abs(steps_right))} {'right' if steps_right > 0 else 'left'}")
    return " ".join(parts)


def mentioned_in(mission: str, object_type: str, color: str) -> bool:
    """Does the mission talk about this object ("go to the purple box" -> purple box; "a ball" -> any ball)?"""
    words = set(re.findall(r"[a-z]+", mission.lower()))
    mission_colors = words & set(COLOR_TO_IDX)
    return object_type in words and (not mission_colors or color in mission_colors)


def describe_observation(image: np.ndarray, direction: int, mission: str) -> str:
    """Egocentric, deterministic, short text for one minigrid observation.

    Example: "Goal: open the door. You see locked yellow door two forward one right, yellow key one left.
    Wall three forward. You carry nothing."
    Objects the mission mentions come first, then the nearest; at most MAX_OBJECTS. `direction`
    (compass) is not used: the view is already egocentric, and it would cost tokens.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a minigrid image of shape (W, H, 3), got {image.shape}")
    mission = str(mission).strip().rstrip(".")
    width, height = image.shape[:2]
    objects = []  # sort key first: (not mentioned, distance, steps forward, steps right), then text
    for x in range(width):
        for y in range(height):
            if (x, y) == (AGENT_X, AGENT_Y):
                continue  # the agent's cell holds the carried object, described below
            object_idx, color_idx, state_idx = (int(v) for v in image[x, y])
            object_type = IDX_TO_OBJECT.get(object_idx, "unseen")
            if object_type in SKIPPED_OBJECTS:
                continue
            steps_forward, steps_right = AGENT_Y - y, x - AGENT_X
            mentioned = mentioned_in(mission, object_type, IDX_TO_COLOR.get(color_idx, ""))
            text = f"{object_name(object_idx, color_idx, state_idx)} {relative_position(steps_forward, steps_right)}"
            objects.append((not mentioned, abs(steps_forward) + abs(steps_right), steps_forward, steps_right, text))
    objects.sort()
    seen = [entry[-1] for entry in objects[:MAX_OBJECTS]]

    # Nearest wall straight ahead: scan forward until a wall (or an unseen cell: nothing to say).
    wall_text = ""
    for y in range(AGENT_Y - 1, -1, -1):
        object_type = IDX_TO_OBJECT.get(int(image[AGENT_X, y, 0]), "unseen")
        if object_type == "unseen":
            break
        if object_type == "wall":
            wall_text = f" Wall {number_word(AGENT_Y - y)} forward."
            break

    carried_idx, carried_color, carried_state = (int(v) for v in image[AGENT_X, AGENT_Y])
    if IDX_TO_OBJECT.get(carried_idx, "empty") in ("unseen", "empty", "agent"):
        carry_text = "You carry nothing."
    else:
        carry_text = f"You carry {object_name(carried_idx, carried_color, carried_state)}."

    seen_text = f"You see {', '.join(seen)}." if seen else "You see nothing."
    return f"Goal: {mission}. {seen_text}{wall_text} {carry_text}"


# -----------------------------------------------------------------------------------------------------
# 2. Actions as words
# -----------------------------------------------------------------------------------------------------
ACTION_WORDS = ["left", "right", "forward", "pickup", "drop", "toggle", "done"]  # the LLM's answer words
ACTION_EXPLANATIONS = [
    "turn left", "turn right", "move one step forward", "pick up the object 1 forward",
    "drop what you carry", "open or unlock the door 1 forward", "finish",
]
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(NUM_ACTIONS)
ALL_ACTIONS = list(range(NUM_ACTIONS))

# Env-id prefixes -> the actions that can matter there (first match wins, so specific ones first).
# Fewer choices make the LLM's job easier and keep the prior's mass on useful actions.
MOVE = [LEFT, RIGHT, FORWARD]
ALLOWED_ACTIONS_BY_PREFIX = [
    # BabyAI single-room levels (doors, if any, only need to be faced; "done" is never needed)
    ("BabyAI-GoToObjMaze", [LEFT, RIGHT, FORWARD, TOGGLE]),
    ("BabyAI-GoToObj", MOVE), ("BabyAI-GoToLocal", MOVE), ("BabyAI-GoToRedBall", MOVE),
    ("BabyAI-GoToRedBlueBall", MOVE), ("BabyAI-GoToDoor", MOVE), ("BabyAI-GoToObjDoor", MOVE),
    ("BabyAI-PickupLoc", MOVE + [PICKUP]), ("BabyAI-PickupDist", MOVE + [PICKUP]),
    ("BabyAI-OpenDoor", MOVE + [TOGGLE]), ("BabyAI-OpenRedDoor", MOVE + [TOGGLE]),
    ("BabyAI-OpenTwoDoors", MOVE + [TOGGLE]), ("BabyAI-Open-", MOVE + [TOGGLE]),
    ("BabyAI-", [LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE]),  # Unlock*, KeyCorridor, PutNext, Boss...
    # MiniGrid
    ("MiniGrid-Empty", MOVE), ("MiniGrid-FourRooms", MOVE), ("MiniGrid-LavaGap", MOVE),
    ("MiniGrid-LavaCrossing", MOVE), ("MiniGrid-SimpleCrossing", MOVE), ("MiniGrid-Dynamic-Obstacles", MOVE),
    ("MiniGrid-DistShift", MOVE), ("MiniGrid-MemoryS", MOVE),
    ("MiniGrid-DoorKey", MOVE + [PICKUP, TOGGLE]), ("MiniGrid-Unlock-", MOVE + [PICKUP, TOGGLE]),
    ("MiniGrid-MultiRoom", MOVE + [TOGGLE]), ("MiniGrid-RedBlueDoors", MOVE + [TOGGLE]),
    ("MiniGrid-Fetch", MOVE + [PICKUP]), ("MiniGrid-GoTo", MOVE + [DONE]),  # GoToDoor/GoToObject end with done
    ("MiniGrid-PutNear", MOVE + [PICKUP, DROP]),
    ("MiniGrid-UnlockPickup", MOVE + [PICKUP, DROP, TOGGLE]),
    ("MiniGrid-BlockedUnlockPickup", MOVE + [PICKUP, DROP, TOGGLE]),
    ("MiniGrid-KeyCorridor", MOVE + [PICKUP, DROP, TOGGLE]), ("MiniGrid-LockedRoom", MOVE + [PICKUP, DROP, TOGGLE]),
    ("MiniGrid-ObstructedMaze", MOVE + [PICKUP, DROP, TOGGLE]),
]


def allowed_actions(env_id: str, n_actions: int = NUM_ACTIONS) -> list[int]:
    """Action ids that matter in `env_id` (all 7 for unknown envs), among the env's first `n_actions`: an env with
    fewer actions than MiniGrid's 7 (Dynamic-Obstacles: left, right, forward) has MiniGrid's first ones."""
    for prefix, actions in ALLOWED_ACTIONS_BY_PREFIX:
        if env_id.startswith(prefix):
            return [a for a in actions if a < n_actions] or list(range(min(n_actions, NUM_ACTIONS)))
    return list(range(min(n_actions, NUM_ACTIONS)))


def env_probs(probs: np.ndarray, n_actions: int) -> np.ndarray:
    """(N, 7) advice -> (N, n_actions) distributions over an env's own actions (MiniGrid's first n_actions)."""
    probs = np.asarray(probs)[:, :n_actions]
    return probs / probs.sum(axis=1, keepdims=True)


# Words that name an action in a free-form reply. Specific words only: "go" alone is ambiguous.
REPLY_PATTERNS = [
    (LEFT, r"\bleft\b"), (RIGHT, r"\bright\b"), (FORWARD, r"\b(forwards?|ahead|straight)\b"),
    (PICKUP, r"\b(pick|grab)"),  # "pick up", "pickup", "pick it up"
    (DROP, r"\b(drop|put\s+(it\s+)?down)\b"), (TOGGLE, r"\b(toggle|unlock|open\s+(it|the))\b"),
    (DONE, r"\b(done|finish(ed)?)\b"),
]


def parse_action_reply(text: str) -> int | None:
    """Action id named first in a free-form reply ("I would go forward." -> 2), or None for garbage."""
    text = re.sub(r"[_\-]", " ", str(text).lower())
    best_position, best_action = None, None
    for action, pattern in REPLY_PATTERNS:
        match = re.search(pattern, text)
        if match and (best_position is None or match.start() < best_position):
            best_position, best_action = match.start(), action
    return best_action


# -----------------------------------------------------------------------------------------------------
# 3. Subgoals as text (ppo_llm_explore.py): what the agent can achieve from what it sees
# -----------------------------------------------------------------------------------------------------
# candidate_subgoals(view) -> the few subgoals achievable from what the agent sees and carries; every adviser ranks
# them with subgoal_probs(obs_text, candidates, plan) (the LLM: the prompt, cache and scoring path of its actions).

@dataclasses.dataclass(frozen=True)
class Subgoal:
    """A machine-checkable target: kind (pickup, drop, open, through, goto), object type and color."""

    kind: str
    object_type: str
    color: str

    @property
    def text(self) -> str:
        thing = f"{self.color} {self.object_type}"
        return {"pickup": f"pick up the {thing}", "drop": f"drop the {thing}", "open": f"open the {thing}",
                "through": f"go through the {thing}", "goto": f"go to the {thing}"}[self.kind]


SUBGOAL_KINDS = ("pickup", "open", "drop", "through", "goto")  # also the tie-break order of candidates
MAX_SUBGOALS = 6  # candidates offered at once: enough for a room, few enough for single-digit answers
PORTABLE = ("key", "ball", "box")


def candidate_subgoals(image: np.ndarray, direction: int, mission: str,
                       actions: list[int] | None = None) -> list[Subgoal]:
    """Subgoals achievable from this egocentric view, deterministic, at most MAX_SUBGOALS.

    - goto: every visible key/ball/box/door/goal, except the object the agent already faces;
    - pickup: every visible key/ball/box when the agent carries nothing (needs the pickup action);
    - open: closed doors, and locked doors of the carried key's color (needs toggle);
    - through: open doors;  drop: the carried object (needs drop).
    `actions` (allowed_actions(env_id)) drops kinds the env cannot do. Selection: objects the mission
    mentions first, then the nearest; the kept candidates are listed nearest first, then by kind, then text,
    so the list order does not point at the mission's object. `direction` is unused (the view is egocentric).
    """
    image = np.asarray(image)
    actions = ALL_ACTIONS if actions is None else list(actions)
    can_pickup, can_drop, can_toggle = PICKUP in actions, DROP in actions, TOGGLE in actions
    carried_type = IDX_TO_OBJECT.get(int(image[AGENT_X, AGENT_Y, 0]), "empty")
    carried_color = IDX_TO_COLOR.get(int(image[AGENT_X, AGENT_Y, 1]), "")
    carrying = carried_type in PORTABLE
    found = {}  # subgoal -> (not mentioned by the mission, distance)
    for x in range(image.shape[0]):
        for y in range(image.shape[1]):
            if (x, y) == (AGENT_X, AGENT_Y):
                continue
            object_type = IDX_TO_OBJECT.get(int(image[x, y, 0]), "unseen")
            color = IDX_TO_COLOR.get(int(image[x, y, 1]), "")
            state = IDX_TO_STATE.get(int(image[x, y, 2]), "")
            if object_type not in PORTABLE + ("door", "goal"):
                continue
            subgoals = [] if (x, y) == (AGENT_X, AGENT_Y - 1) else [Subgoal("goto", object_type, color)]
            if object_type in PORTABLE and can_pickup and not carrying:
                subgoals.append(Subgoal("pickup", object_type, color))
            if object_type == "door" and state == "open":
                subgoals.append(Subgoal("through", "door", color))
            if object_type == "door" and can_toggle and (
                    state == "closed" or (state == "locked" and carried_type == "key" and carried_color == color)):
                subgoals.append(Subgoal("open", "door", color))
            key = (not mentioned_in(mission, object_type, color), abs(AGENT_Y - y) + abs(x - AGENT_X))
            for subgoal in subgoals:
                found[subgoal] = min(found.get(subgoal, key), key)
    if carrying and can_drop:
        found[Subgoal("drop", carried_type, carried_color)] = (not mentioned_in(mission, carried_type, carried_color), 0)
    kept = sorted(found, key=lambda s: (found[s], SUBGOAL_KINDS.index(s.kind), s.text))[:MAX_SUBGOALS]
    return sorted(kept, key=lambda s: (found[s][1], SUBGOAL_KINDS.index(s.kind), s.text))


# -----------------------------------------------------------------------------------------------------
# 4. Prompt formatting
# -----------------------------------------------------------------------------------------------------
# The prompt is  prefix (system + instructions, the same for every query, evaluated once at start-up)
#              + observation text + suffix (end of user turn, start of assistant turn) + answer lead-in.
# We render the model's own chat template with a sentinel as the observation and split at it, so the
# shared part comes first whatever the template looks like.

SYSTEM_PROMPT = ("You control an agent in a grid world. Positions are relative to the agent: "
                 "forward is the direction it faces.")
SENTINEL = "<<<OBSERVATION>>>"
SCORE_LEAD_IN = "Action:"  # the assistant's answer starts here, so the next token is the action word
# Generate mode uses the same lead-in: without one SmolLM2 answers "You are a robot, and you are".
GENERATE_LEAD_IN = "Action:"
LLAMA2_CHAT_FORMAT = "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]"
CHATML_FORMAT = ("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                 "<|im_start|>assistant\n")


def instruction_text(actions: list[int]) -> str:
    listing = ", ".join(f"{ACTION_WORDS[a]} = {ACTION_EXPLANATIONS[a]}" for a in actions)
    return f"Actions: {listing}. Answer with one action word.\n\n"


def render_chat(system: str, user: str, chat_template: str | None = None, bos_token: str = "",
                eos_token: str = "", model_name: str = "", add_bos: bool = True) -> str:
    """One system + user turn and the assistant's opening, in the model's chat format; the template's BOS text only
    where llama.cpp does not add BOS itself (`add_bos`: the model's setting; SmolLM2's BOS <|im_start|> opens a turn)."""
    rendered = render_template(system, user, chat_template, bos_token, eos_token, model_name)
    return rendered[len(bos_token):] if add_bos and bos_token and rendered.startswith(bos_token) else rendered


def render_template(system, user, chat_template, bos_token, eos_token, model_name) -> str:
    if chat_template:
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise ValueError(message)

            # Same Jinja settings as Hugging Face's apply_chat_template.
            jinja_env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            jinja_env.globals["raise_exception"] = raise_exception
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            return jinja_env.from_string(chat_template).render(
                messages=messages, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=True)
        except Exception as error:  # a template we cannot render: fall back to a known format
            warnings.warn(f"could not render the model's chat template ({error}); using a built-in format")
    squashed_name = re.sub(r"[\s_\-]", "", model_name.lower())
    if "llama2" in squashed_name or "llamav2" in squashed_name:
        return LLAMA2_CHAT_FORMAT.format(system=system, user=user)
    return CHATML_FORMAT.format(system=system, user=user)


def split_prompt(actions: list[int], **template_kwargs) -> tuple[str, str]:
    """(prefix, suffix): prompt = prefix + observation text + suffix (+ lead-in)."""
    rendered = render_chat(SYSTEM_PROMPT, instruction_text(actions) + SENTINEL, **template_kwargs)
    if rendered.count(SENTINEL) != 1:
        raise ValueError("the chat template did not keep the user message intact; pick another model")
    prefix, suffix = rendered.split(SENTINEL)
    return prefix, suffix


# --- the subgoal-ranking prompt (ppo_llm_explore.py): the same chat format, numbered candidates ---
SUBGOAL_INSTRUCTIONS = ("Pick the subgoal that helps most to reach the goal, or to explore usefully. "
                        "Answer with its number.\n\n")
SUBGOAL_LEAD_IN = "Subgoal:"


def subgoal_query(obs_text: str, candidate_texts: list[str]) -> str:
    """The user message's variable part: 'Goal: ... You carry nothing.\\nSubgoals: 1 = ..., 2 = ....'"""
    listing = ", ".join(f"{number} = {text}" for number, text in enumerate(candidate_texts, 1))
    return f"{obs_text}\nSubgoals: {listing}."


def check_candidates(candidate_texts) -> list[str]:
    candidate_texts = [str(text) for text in candidate_texts]
    if len(candidate_texts) > 9 or len(set(candidate_texts)) != len(candidate_texts):
        raise ValueError(f"expected at most 9 distinct candidate subgoals, got {candidate_texts}")
    return candidate_texts


def subgoal_prompt(**template_kwargs) -> tuple[str, str, str]:
    """(prefix, suffix, lead-in) of the subgoal-ranking prompt: prefix + query + suffix + lead-in."""
    rendered = render_chat(SYSTEM_PROMPT, SUBGOAL_INSTRUCTIONS + SENTINEL, **template_kwargs)
    prefix, suffix = rendered.split(SENTINEL)
    return prefix, suffix, SUBGOAL_LEAD_IN if suffix[-1:].isspace() else " " + SUBGOAL_LEAD_IN


# -----------------------------------------------------------------------------------------------------
# 5. Next-token log-probs -> an action distribution or a subgoal ranking
# -----------------------------------------------------------------------------------------------------
GENERATE_MARGIN = 2.0  # generate mode: the named action scores 0, other allowed actions -2 (before temperature)
MAX_REPLY_TOKENS = 8
SUBGOAL_ORDERS = ("listed", "cyclic")  # how the candidates are shown to an LLM: as listed, or in every cyclic shift
NO_ADVICE = np.full(NUM_ACTIONS, 1.0 / NUM_ACTIONS, dtype=np.float32)  # uniform over all actions


def finalize_probs(probs: np.ndarray) -> np.ndarray:
    """Floor every action at PROB_FLOOR and renormalise: a valid, strictly positive distribution."""
    probs = np.maximum(np.asarray(probs, dtype=np.float64), PROB_FLOOR)
    return (probs / probs.sum(axis=-1, keepdims=True)).astype(np.float32)


def uniform_probs(actions: list[int]) -> np.ndarray:
    probs = np.zeros(NUM_ACTIONS)
    probs[actions] = 1.0 / len(actions)
    return probs


def check_actions(actions) -> list[int]:
    actions = ALL_ACTIONS if actions is None else sorted({int(a) for a in actions})
    if not actions or not all(0 <= a < NUM_ACTIONS for a in actions):
        raise ValueError(f"actions must be a non-empty subset of 0..6, got {actions}")
    return list(actions)


def check_llm_settings(mode: str = "score", temperature: float = 1.0, subgoal_orders: str = "listed", actions=None,
                       **_) -> list[int]:
    """The LLM adviser's own settings (ValueError), checked before a model loads or a server is asked; the allowed
    actions, sorted. (The scripts check their flags earlier, in llmppo.llm_flags.llm_flag_error.)"""
    if mode not in ("score", "generate"):
        raise ValueError(f"--llm-mode must be 'score' or 'generate', got {mode!r}")
    if subgoal_orders not in SUBGOAL_ORDERS:
        raise ValueError(f"--llm-subgoal-orders must be one of {', '.join(SUBGOAL_ORDERS)}, got {subgoal_orders!r}")
    if not temperature > 0:
        raise ValueError(f"--llm-temperature must be > 0, got {temperature}")
    return check_actions(actions)


# -----------------------------------------------------------------------------------------------------
# 6. The LLM adviser: prompts, cache lookups and decoding here; the model behind a backend
# -----------------------------------------------------------------------------------------------------
class LLMAdviser:
    """Action prior (and subgoal ranking) from an LLM `backend`: llmppo.llama.LlamaBackend, a GGUF model in this process
    (built from `llama_kwargs` when `backend` is None), or llmppo.server.ServerBackend, an OpenAI-compatible server.

    mode="score": the next-token log-probs of the allowed action words, softmaxed with `temperature`.
    mode="generate": a short greedy answer parsed by parse_action_reply (garbage -> uniform, counted).
    Raw results (log-probs / reply text) are cached in memory and on disk, so temperature can change
    without invalidating the cache and a second run over the same states is nearly free.

    A backend has template_kwargs (for render_chat) and, once prepare(adviser) has read the prompt pieces: identity
    (in the cache keys), answer(obs_text) (raw scores or reply; None: failed), answer_all(obs_texts),
    subgoal_scores(query, n), n_prefix_tokens, prompt_tokens, close(); it adds its counters to adviser.stats.
    """

    # The scripts point this at their Ctrl-C flag: the queries not yet asked are then skipped (no advice), so a Ctrl-C
    # stops the run within one query.
    stop = staticmethod(lambda: False)

    def __init__(self, backend=None, temperature: float = 1.0, cache_dir: str | None = DEFAULT_CACHE_DIR,
                 mode: str = "score", actions: list[int] | None = None, memory_cache_size: int = 100_000,
                 subgoal_orders: str = "listed", **llama_kwargs):
        self.actions = check_llm_settings(mode, temperature, subgoal_orders, actions)
        self.mode, self.temperature, self.subgoal_orders = mode, float(temperature), subgoal_orders
        if backend is None:
            from llmppo.llama import LlamaBackend  # imported here: llmppo.llama itself imports this module

            backend = LlamaBackend(**llama_kwargs)
        self.backend = backend  # the prompt pieces below follow the model's own chat template when it has one
        self.prefix, self.suffix = split_prompt(self.actions, **backend.template_kwargs)
        self.lead_in = SCORE_LEAD_IN if self.mode == "score" else GENERATE_LEAD_IN
        if self.suffix and not self.suffix[-1].isspace() and self.lead_in:
            self.lead_in = " " + self.lead_in  # e.g. Llama-2's "[/INST] Action:"
        self.subgoal_prefix, self.subgoal_suffix, self.subgoal_lead_in = subgoal_prompt(**backend.template_kwargs)
        self.stats = new_stats()  # the backend adds its counters (tokens evaluated, a server's requests) to these
        self.stats.update(prefix_tokens=0, tokens_per_uncached_query=0.0, prompt_tokens_per_query=0.0)
        backend.prepare(self)
        self.stats["prefix_tokens"] = backend.n_prefix_tokens

        # Memory cache keys: the observation text (the rest is fixed per adviser); disk: a hash of all that decides it.
        self.static_key = "\n".join([backend.identity, self.mode, self.prefix, self.suffix, self.lead_in,
                                     str(self.actions), str(MAX_REPLY_TOKENS)])
        self.subgoal_key = "\n".join(["subgoals-v1", backend.identity, self.subgoal_prefix, self.subgoal_suffix,
                                      self.subgoal_lead_in])
        self.cache = AnswerCache(cache_dir, memory_cache_size, self.stats)
        self.uncached_seconds = 0.0

    def prompt_text(self, obs_text: str) -> str:
        return self.prefix + obs_text + self.suffix + self.lead_in

    def subgoal_text(self, query: str) -> str:
        return self.subgoal_prefix + query + self.subgoal_suffix + self.subgoal_lead_in

    # --- raw answers -> distributions ---
    def probs_from_scores(self, raw_scores) -> np.ndarray:
        """Temperature softmax over the allowed actions' raw log-probs. An action without a score (a server's top-K
        that missed it) gets the floor probability; no score at all -> uniform (counted as a fallback)."""
        allowed_scores = np.asarray(raw_scores, dtype=np.float64)[self.actions]
        if not np.any(np.isfinite(allowed_scores)):
            self.stats["fallbacks"] += 1
            return finalize_probs(uniform_probs(self.actions))
        allowed_scores = np.where(np.isfinite(allowed_scores), allowed_scores, -np.inf) / self.temperature
        allowed_probs = np.exp(allowed_scores - allowed_scores.max())
        probs = np.zeros(NUM_ACTIONS)
        probs[self.actions] = allowed_probs / allowed_probs.sum()
        return finalize_probs(probs)

    def probs_from_reply(self, reply_text: str) -> np.ndarray:
        """Generate mode's decoding: the named action gets the most mass; garbage -> uniform (fallback)."""
        action = parse_action_reply(reply_text)
        if action is None or action not in self.actions:
            self.stats["fallbacks"] += 1
            return finalize_probs(uniform_probs(self.actions))
        raw_scores = [-np.inf] * NUM_ACTIONS
        for allowed_action in self.actions:
            raw_scores[allowed_action] = 0.0 if allowed_action == action else -GENERATE_MARGIN
        return self.probs_from_scores(raw_scores)

    # --- caches ---
    def _disk_key(self, text: str, subgoals: bool = False) -> str:
        static_key = self.subgoal_key if subgoals else self.static_key
        return hashlib.sha256(f"{static_key}\n{text}".encode()).hexdigest()

    def _ask(self, method: str, *args):
        """One backend call (uncached queries), timed."""
        start = time.perf_counter()
        answers = getattr(self.backend, method)(*args)
        self.uncached_seconds += time.perf_counter() - start
        return answers

    def raw_answers(self, obs_texts: list[str], cached_only: bool = False) -> dict:
        """Raw answers by text: memory cache, then disk cache, then the LLM for what is left (stored in both caches).
        With cached_only, a text seen in neither cache gets None instead of an LLM call; so does a failed query, and
        after stop() (Ctrl-C) a text not asked yet (counted in stats["skipped"])."""
        answers, uncached = {}, []
        for obs_text in obs_texts:
            if obs_text in answers or obs_text in uncached:  # repeated in this batch: a memory hit, as before
                self.stats["memory_hits"] += 1
                continue
            answers[obs_text] = self.cache.get(obs_text, self._disk_key(obs_text))
            if answers[obs_text] is None:
                self.stats["skipped"] += int(cached_only)
                uncached += [] if cached_only else [obs_text]
        computed = self._ask("answer_all", uncached) if uncached else []
        for obs_text, raw in zip(uncached, computed):
            answers[obs_text] = raw
            if raw is None and self.stop():
                self.stats["skipped"] += 1
            else:  # only valid advice is cached: a garbage answer is asked again next time
                self.cache.put(obs_text, self._disk_key(obs_text), raw if self.valid_answer(raw) else None)
        return answers

    def valid_answer(self, raw) -> bool:
        """Advice worth caching: a finite score for an allowed action, or a reply that names one."""
        if self.mode == "generate":
            return isinstance(raw, str) and parse_action_reply(raw) in self.actions
        return raw is not None and bool(np.isfinite(np.asarray(raw, dtype=np.float64)[self.actions]).any())

    def raw_answer(self, obs_text: str, cached_only: bool = False):
        """Cached raw answer for one observation (see raw_answers)."""
        return self.raw_answers([obs_text], cached_only)[obs_text]

    def action_probs(self, obs_texts: list[str], expert_actions=None, cached_only: bool = False) -> np.ndarray:
        """(N, 7) float32 distributions over the 7 MiniGrid actions. `expert_actions` is ignored.
        cached_only: no LLM call; observations not in a cache get the uniform distribution over all 7 actions
        (no advice), counted in stats["skipped"] (this is how the scripts keep to a query budget)."""
        obs_texts = [str(obs_text) for obs_text in obs_texts]
        # Sorted order puts texts with the same mission next to each other: more KV-cache reuse.
        rows = sorted(range(len(obs_texts)), key=lambda r: obs_texts[r])
        answers = self.raw_answers([obs_texts[row] for row in rows], cached_only)
        probs = np.empty((len(obs_texts), NUM_ACTIONS), dtype=np.float32)
        for row in rows:
            raw = answers[obs_texts[row]]
            if raw is None and (cached_only or self.stop()):
                probs[row] = NO_ADVICE
            elif raw is None:  # the query failed (a server that did not answer in time)
                self.stats["fallbacks"] += 1
                probs[row] = finalize_probs(uniform_probs(self.actions))
            else:
                probs[row] = self.probs_from_scores(raw) if self.mode == "score" else self.probs_from_reply(raw)
        self.stats["queries"] += len(obs_texts)
        update_rates(self.stats, self.uncached_seconds, self.backend.prompt_tokens)
        return probs

    # --- subgoal ranking (ppo_llm_explore.py): the same prompt, cache and scoring path as the actions ---
    def raw_subgoal_scores(self, query: str, n_candidates: int) -> list[float]:
        """Cached raw log-likelihoods of the candidates' numbers (memory, then disk, then the LLM)."""
        memory_key, disk_key = "subgoals\n" + query, self._disk_key(query, subgoals=True)
        raw = self.cache.get(memory_key, disk_key)
        if raw is None and self.stop():  # Ctrl-C: not asked
            self.stats["skipped"] += 1
        elif raw is None:
            raw = self._ask("subgoal_scores", query, n_candidates)
            self.cache.put(memory_key, disk_key, raw if raw is not None and np.isfinite(raw).any() else None)
        return raw

    def subgoal_probs(self, obs_text: str, candidate_texts: list[str], expert_plan=None) -> np.ndarray:
        """(n,) float32 distribution over the candidates (temperature-softmaxed number log-likelihoods); a candidate
        without a score (a server's top-K that missed it) gets the floor probability. With subgoal_orders="cyclic" the
        candidates are also shown in their n cyclic shifts (each one once in every position) and the distributions
        are averaged back onto them: the usual control for a multiple-choice position bias (n queries, each cached).
        No candidates: empty; one candidate: [1.0] without a query. `expert_plan` is ignored."""
        candidate_texts = check_candidates(candidate_texts)
        n = len(candidate_texts)
        if n <= 1:
            return np.ones(n, dtype=np.float32)
        shifts = range(n) if self.subgoal_orders == "cyclic" else [0]
        total, answered = np.zeros(n), 0
        for shift in shifts:
            order = [(i + shift) % n for i in range(n)]
            raw = self.raw_subgoal_scores(subgoal_query(obs_text, [candidate_texts[i] for i in order]), n)
            raw = np.full(n, np.nan) if raw is None else np.asarray(raw, dtype=np.float64)
            if not np.any(np.isfinite(raw)):
                continue
            scores = np.where(np.isfinite(raw), raw, -np.inf) / self.temperature
            probs = np.exp(scores - scores.max())
            probs = probs / probs.sum()
            if not np.all(np.isfinite(raw)):
                probs = np.maximum(probs, PROB_FLOOR)
                probs = probs / probs.sum()
            total[order] += probs
            answered += 1
        self.stats["queries"] += len(shifts)  # one per prompt, so the hit rate stays the share of prompts cached
        update_rates(self.stats, self.uncached_seconds, self.backend.prompt_tokens)
        if not answered:
            self.stats["fallbacks"] += int(not self.stop())
            return np.full(n, 1.0 / n, dtype=np.float32)
        return (total / answered).astype(np.float32)

    def close(self):
        self.cache.close()
        self.backend.close()
