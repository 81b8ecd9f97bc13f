"""The scripts' flat observation rows (the 7x7x3 view, the direction, the mission's word ids) -> the arguments of
prompts.describe_observation and prompts.candidate_subgoals, and the texts the LLM reads, cached by the row's bytes
(states repeat)."""

from __future__ import annotations

import numpy as np

from prompts import candidate_subgoals, describe_observation


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
