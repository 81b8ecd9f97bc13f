"""Evaluation episodes, shared by the three scripts: the trained actor alone (or, in ppo_llm_policy.py's --llm-only, the
adviser alone) plays a fixed number of episodes; GIFs of the first few."""

import os

import numpy as np
import torch
from torch.distributions.categorical import Categorical


def evaluate(agent, make_envs, episodes, num_envs, seed, device, argmax=False, video_dir=None, stop=lambda: False,
             policy=None):
    """Run the agent alone for exactly `episodes` episodes on `make_envs(num_envs, render=...)`; returns (mean return,
    success rate, mean length), or None when `stop()` turns true first (Ctrl-C). `policy(obs, infos)`, if given,
    returns the logits to act on instead of the agent's actor."""
    num_envs = min(num_envs, episodes)
    envs = make_envs(num_envs, render=video_dir is not None)
    # Each env plays a fixed quota, so slow (failing) episodes are not cut off in favour of quick successes.
    quota = np.array([episodes // num_envs + (i < episodes % num_envs) for i in range(num_envs)])
    returns, lengths, gif_frames, gifs_saved = [], [], [], 0
    obs, infos = envs.reset(seed=seed)
    memory_state, done = agent.initial_memory(num_envs, device) if agent is not None else None, torch.zeros(num_envs, device=device)
    while quota.sum() > 0:
        if stop():
            envs.close()
            return None
        if video_dir is not None and gifs_saved < 3:
            gif_frames.append(envs.unwrapped.envs[0].render())
        if policy is not None:
            logits = policy(obs, infos)
        else:
            with torch.no_grad():  # the actor carries its memory from step to step, like in training
                hidden, memory_state = agent.get_states(torch.as_tensor(obs, device=device), memory_state, done)
                logits = agent.actor(hidden)
        action = logits.argmax(1) if argmax else Categorical(logits=logits, validate_args=False).sample()
        obs, _, terminations, truncations, infos = envs.step(action.cpu().numpy())
        done = torch.as_tensor(np.logical_or(terminations, truncations), dtype=torch.float32, device=device)
        for i in np.flatnonzero(infos.get("_episode", [])):
            if i == 0 and video_dir is not None and gifs_saved < 3:
                save_gif(gif_frames, os.path.join(video_dir, f"episode_{gifs_saved}.gif"))
                gif_frames, gifs_saved = [], gifs_saved + 1
            if quota[i] > 0:
                quota[i] -= 1
                returns.append(float(infos["episode"]["r"][i]))
                lengths.append(int(infos["episode"]["l"][i]))
    envs.close()
    returns = np.array(returns)
    return returns.mean(), (returns > 0).mean(), np.mean(lengths)


def save_gif(frames, path):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=150, loop=0)
