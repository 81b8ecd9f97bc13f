"""The env side of the advisers (no language): the BabyAI bot's next action (info["expert_action"]), the subgoals
achieved, read from the env's state (info["subgoals_achieved"], each at most once per episode), and the bot's plan as
subgoals (info["expert_plan"]), with the readers of these infos from a vector env; and the bonus weights that
ppo_llm_explore.py pays for the subgoals achieved."""

from __future__ import annotations

import contextlib
import os
import warnings

import gymnasium as gym
import numpy as np

from prompts import PORTABLE, Subgoal


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
