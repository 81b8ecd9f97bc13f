"""Where does a trained actor lose steps? It and the BabyAI bot play the same BabyAI episodes.

    python tools/actor_vs_bot.py runs/<run>/agent.pt --env-id BabyAI-GoToLocal-v0 --episodes 300

For each episode (seeds --first-seed, --first-seed + 1, ...) the actor alone plays it (sampled, or --argmax), then the
bot plays the same level. The episodes are split by whether an object the mission names is in the actor's first view;
per group: the actor's success rate, the mean length of its successes and of the bot's on the same episodes, and the
share of each action the actor took. GoTo levels only (the "target in view" split needs one named object).
"""

import os
import sys
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ppo_baseline  # noqa: E402  (the three scripts share this agent and observation)
from llmppo import runs  # noqa: E402
from llmppo.bot import BabyAIBotWrapper  # noqa: E402  (runs the bot, as for the expert adviser)


@dataclass
class Args:
    checkpoint: tyro.conf.Positional[str]
    """an agent.pt written by any of the three scripts (or its run folder)"""
    env_id: str = "BabyAI-GoToLocal-v0"
    """a BabyAI GoTo level (the bot plans BabyAI levels; the split needs a mission naming one object)"""
    episodes: int = 300
    """episodes to play, each by the actor and by the bot"""
    first_seed: int = 10_000
    """level seed of the first episode (away from the training seeds' first levels)"""
    argmax: bool = False
    """the actor takes its most probable action instead of sampling"""


ACTIONS = ["left", "right", "forward", "pickup", "drop", "toggle", "done"]


def fail(message):
    """Bad input: one line on stderr naming what to do, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def target_in_view(level):
    _, visible = level.gen_obs_grid()
    for x, y in level.instrs.desc.obj_poss:
        view = level.relative_coords(x, y)
        if view is not None and visible[view[0], view[1]]:
            return True
    return False


def play_actor(agent, env, seed, argmax):
    obs, _ = env.reset(seed=seed)
    memory, done = agent.initial_memory(1, "cpu"), torch.zeros(1)
    in_view = target_in_view(env.unwrapped)
    actions, episode_return, finished = [], 0.0, False
    while not finished:
        with torch.no_grad():
            hidden, memory = agent.get_states(torch.as_tensor(obs[None]), memory, done)
            logits = agent.actor(hidden)[0]
        action = int(logits.argmax()) if argmax else int(torch.distributions.Categorical(logits=logits).sample())
        obs, reward, terminated, truncated, _ = env.step(action)
        actions.append(action)
        episode_return, finished = episode_return + reward, terminated or truncated
    return in_view, episode_return > 0, len(actions), np.bincount(actions, minlength=len(ACTIONS))


def play_bot(env, seed):
    """The bot's episode length on the level of `seed` (env: a BabyAIBotWrapper; it stops where the bot gives up)."""
    _, info = env.reset(seed=seed)
    length, finished = 0, False
    while not finished and info["expert_action"] >= 0:
        _, _, terminated, truncated, info = env.step(info["expert_action"])
        length, finished = length + 1, terminated or truncated
    return length


def main():
    args = tyro.cli(Args)
    if not args.env_id.startswith("BabyAI-GoTo"):
        fail(f"--env-id {args.env_id}: use a BabyAI GoTo level such as BabyAI-GoToLocal-v0")
    if args.episodes < 1:
        fail(f"--episodes must be at least 1, got {args.episodes}")
    try:
        env = ppo_baseline.make_env(args.env_id)()
    except Exception as error:
        fail(f"cannot create {args.env_id}: {str(error).splitlines()[0]}")
    checkpoint = runs.read_checkpoint(args.checkpoint, "checkpoint")
    trained = checkpoint["args"]
    agent = ppo_baseline.Agent(env.action_space.n, trained.get("memory", True), trained.get("patch_stride", 2))
    try:
        agent.load_state_dict(checkpoint["model"])
    except RuntimeError:
        fail(f"{args.checkpoint} holds another network than this version's agent: train a new agent")
    agent.eval()
    torch.manual_seed(args.first_seed)
    bot_env = BabyAIBotWrapper(gym.make(args.env_id))
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.episodes):
        rows.append((*play_actor(agent, env, seed, args.argmax), play_bot(bot_env, seed)))
    in_view = np.array([row[0] for row in rows])
    success = np.array([row[1] for row in rows])
    length = np.array([row[2] for row in rows])
    counts = np.stack([row[3] for row in rows])
    bot_length = np.array([row[4] for row in rows])
    print(f"{args.checkpoint} on {args.env_id}, {args.episodes} episodes from seed {args.first_seed}, actor "
          f"{'argmax' if args.argmax else 'sampled'}: success {success.mean():.3f}\n")
    print("| episodes | count | actor success | actor steps per success | bot steps, same episodes | "
          + " | ".join(ACTIONS) + " |")
    print("|---" * (5 + len(ACTIONS)) + "|")
    for name, group in [("target in the first view", in_view), ("target not in view", ~in_view), ("all", np.ones_like(in_view))]:
        if not group.any():
            continue
        won = group & success
        steps = f"{length[won].mean():.1f}" if won.any() else "-"
        bot_steps = f"{bot_length[won].mean():.1f}" if won.any() else "-"
        shares = counts[group].sum(0) / counts[group].sum()
        print(f"| {name} | {group.sum()} | {success[group].mean():.3f} | {steps} | {bot_steps} | "
              + " | ".join(f"{share:.3f}" for share in shares) + " |")


if __name__ == "__main__":
    main()
