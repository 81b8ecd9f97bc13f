"""Where an update's time goes: ppo_baseline.py's Agent and PPO loss over one fixed rollout, the update timed with the
memory and without it (--no-memory), alternating, in this process (issue 34, the memory's speed target).

    python tools/bench_update.py                                      # the defaults' update, with and without the memory
    python tools/bench_update.py --memory-input 32 --memory-size 32   # a narrower memory: the GRU reads a projection
    python tools/bench_update.py --profile                            # and torch.profiler's top operations of each

The rollout: --num-envs envs stepped --num-steps times with random actions (its observations and episode starts);
the advantages and returns are random numbers (the time does not depend on them). One update is what the script does
after each rollout: --update-epochs passes over --num-minibatches minibatches of chunks of --recurrence steps, each a
forward pass, the clipped losses, a backward pass, gradient clipping and an Adam step. The env steps, the rollout's
forward passes and GAE are not in it: tools/bench_fps.py measures the whole loop.
"""

import os
import sys
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ppo_baseline as pb  # noqa: E402


@dataclass
class Args:
    env_id: str = "MiniGrid-DoorKey-5x5-v0"
    """the environment whose observations make the rollout"""
    num_envs: int = pb.Args.num_envs
    """parallel envs of the rollout (as the script's --num-envs)"""
    num_steps: int = pb.Args.num_steps
    """steps per env of the rollout (as the script's --num-steps)"""
    recurrence: int = pb.Args.recurrence
    """chunk length of the memory's replay (as the script's --recurrence)"""
    update_epochs: int = pb.Args.update_epochs
    """passes over the rollout per update (as the script's --update-epochs)"""
    num_minibatches: int = pb.Args.num_minibatches
    """minibatches per pass (as the script's --num-minibatches)"""
    patch_stride: int = pb.Args.patch_stride
    """stride of the patch CNN (as the script's --patch-stride)"""
    memory_size: int = pb.MEMORY_SIZE
    """hidden units of the GRU memory (the script's agent: its MEMORY_SIZE)"""
    memory_input: int = 0
    """0: the GRU reads the features, as in the script; N: it reads a ReLU projection of them to N units"""
    torch_threads: int = pb.Args.torch_threads
    """torch CPU threads (as the script's --torch-threads, the threads of its update)"""
    repeats: int = 15
    """timed updates of each agent, alternating (after 3 untimed ones each)"""
    profile: bool = False
    """print torch.profiler's operations of one more update of each agent, by their own time"""


class NarrowInputAgent(pb.Agent):
    """The script's Agent whose GRU reads a ReLU projection of the features instead of the features themselves."""

    def __init__(self, n_actions, patch_stride, memory_input):
        super().__init__(n_actions, True, patch_stride)
        self.memory_input = nn.Linear(self.memory.input_size, memory_input)
        self.memory = nn.GRUCell(memory_input, self.memory_size)

    def get_states(self, x, memory_state, done):
        hidden = self.features(x)
        num_envs = memory_state.shape[0]
        gru_input = torch.relu(self.memory_input(hidden))
        input_gates = nn.functional.linear(gru_input, self.memory.weight_ih, self.memory.bias_ih).view(-1, num_envs, 3, self.memory_size)
        keep = (1.0 - done).view(-1, num_envs, 1)
        memories = []
        for step_gates, step_keep in zip(input_gates, keep):  # the script's GRU step, as in pb.Agent.get_states
            memory_state = memory_state * step_keep
            memory_gates = nn.functional.linear(memory_state, self.memory.weight_hh, self.memory.bias_hh).view(num_envs, 3, -1)
            reset, update = torch.sigmoid(step_gates[:, :2] + memory_gates[:, :2]).unbind(1)
            candidate = torch.tanh(torch.addcmul(step_gates[:, 2], reset, memory_gates[:, 2]))
            memory_state = torch.lerp(candidate, memory_state, update)
            memories.append(memory_state)
        return torch.cat([hidden, torch.cat(memories)], dim=1), memory_state


def flag_error(args):
    counts = ["num_envs", "num_steps", "recurrence", "update_epochs", "num_minibatches", "memory_size", "torch_threads", "repeats"]
    for name in counts:
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1"
    if args.env_id not in gym.registry:
        return f"--env-id {args.env_id!r} is not a registered env id: give a MiniGrid-* or BabyAI-* id"
    if args.memory_input < 0:
        return "--memory-input must be 0 (the features) or a number of units"
    if args.patch_stride not in (1, 2):
        return "--patch-stride must be 1 or 2"
    if args.num_steps % args.recurrence:
        return "--recurrence must divide --num-steps"
    if args.num_envs * args.num_steps // args.recurrence % args.num_minibatches:
        return "--num-minibatches must divide the number of chunks (--num-envs x --num-steps / --recurrence)"
    return None


def fixed_rollout(args):
    envs = pb.make_vector_env(args.env_id, args.num_envs)
    obs = torch.zeros((args.num_steps, args.num_envs, pb.OBS_SIZE), dtype=torch.uint8)
    dones = torch.zeros((args.num_steps, args.num_envs))
    next_obs, _ = envs.reset(seed=1)
    for step in range(args.num_steps):
        obs[step] = torch.as_tensor(next_obs)
        next_obs, _, terminations, truncations, _ = envs.step(envs.action_space.sample())
        if step + 1 < args.num_steps:
            dones[step + 1] = torch.as_tensor(np.logical_or(terminations, truncations), dtype=torch.float32)
    n_actions = envs.single_action_space.n
    envs.close()
    return obs.reshape(-1, pb.OBS_SIZE), dones.reshape(-1), n_actions


def make_update(agent, args, b_obs, b_dones, n_actions):
    """One update of the script's loop (its losses at its default coefficients) on this rollout."""
    batch_size = len(b_obs)
    generator = torch.Generator().manual_seed(1)
    b_actions = torch.randint(0, n_actions, (batch_size,), generator=generator)
    b_logprobs = torch.full((batch_size,), -np.log(n_actions))
    b_advantages, b_returns, b_values = torch.randn(3, batch_size, generator=generator)
    b_memories = torch.zeros(batch_size, agent.memory_size)
    chunk_inds = pb.rollout_chunks(args.num_steps, args.num_envs, args.recurrence)
    optimizer = torch.optim.Adam(agent.parameters(), lr=2e-3, eps=1e-5, fused=True)

    def update():
        chunk_order = np.arange(chunk_inds.shape[1])
        for epoch in range(args.update_epochs):
            np.random.shuffle(chunk_order)
            for mb_chunk_ids in np.split(chunk_order, args.num_minibatches):
                mb_chunks = chunk_inds[:, mb_chunk_ids]
                mb_inds = mb_chunks.ravel()
                _, newlogprob, entropy, newvalue, _ = agent.get_action_and_value(
                    b_obs[mb_inds], b_memories[mb_chunks[0]], b_dones[mb_inds], b_actions[mb_inds])
                ratio = (newlogprob - b_logprobs[mb_inds]).exp()
                mb_advantages = b_advantages[mb_inds]
                mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
                pg_loss = torch.max(-mb_advantages * ratio, -mb_advantages * torch.clamp(ratio, 0.8, 1.2)).mean()
                newvalue = newvalue.view(-1)
                v_clipped = b_values[mb_inds] + torch.clamp(newvalue - b_values[mb_inds], -0.2, 0.2)
                v_loss = 0.5 * torch.max((newvalue - b_returns[mb_inds]) ** 2, (v_clipped - b_returns[mb_inds]) ** 2).mean()
                loss = pg_loss - 0.005 * entropy.mean() + 0.5 * v_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), 0.5, foreach=True)
                optimizer.step()

    return update


def main():
    args = tyro.cli(Args, description=__doc__.split("\n\n")[0])
    error = flag_error(args)
    if error:  # bad input: one line, exit code 2
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    torch.manual_seed(1)
    np.random.seed(1)
    torch.set_num_threads(args.torch_threads)
    b_obs, b_dones, n_actions = fixed_rollout(args)
    pb.MEMORY_SIZE = args.memory_size  # read by Agent.__init__
    memory_agent = (NarrowInputAgent(n_actions, args.patch_stride, args.memory_input) if args.memory_input
                    else pb.Agent(n_actions, True, args.patch_stride))
    agents = {"memory": memory_agent, "no memory": pb.Agent(n_actions, False, args.patch_stride)}
    updates = {name: make_update(agent, args, b_obs, b_dones, n_actions) for name, agent in agents.items()}
    seconds = {name: [] for name in agents}
    for round_ in range(3 + args.repeats):
        for name, update in updates.items():
            start = time.perf_counter()
            update()
            if round_ >= 3:
                seconds[name].append(time.perf_counter() - start)
    memory_ms, plain_ms = (1000 * np.median(seconds[name]) for name in agents)
    shape = (f"{args.num_envs} envs x {args.num_steps} steps, chunks of {args.recurrence}, {args.update_epochs} epochs x "
             f"{args.num_minibatches} minibatches, stride {args.patch_stride}, {args.torch_threads} thread(s)")
    memory = f"GRU {args.memory_size} units on " + (f"a {args.memory_input}-unit projection" if args.memory_input else "the features")
    print(f"one update ({shape}), medians of {args.repeats}, alternating:")
    print(f"  memory ({memory}): {memory_ms:.1f} ms")
    print(f"  no memory: {plain_ms:.1f} ms")
    print(f"  the memory costs {memory_ms - plain_ms:.1f} ms per update; the update without it takes "
          f"{100 * plain_ms / memory_ms:.0f}% of the time")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, update in updates.items():
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
                update()
            print(f"\n{name}: torch.profiler, one update")
            print(profiler.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15,
                                                                         max_name_column_width=24, max_shapes_column_width=48))


if __name__ == "__main__":
    main()
