# PPO for MiniGrid and BabyAI in one file, CleanRL style: read it top to bottom.
# Docs: README.md. Run `python ppo_baseline.py --help` for every flag.
import llmppo.ctrl_c  # noqa: F401, I001  (first: a Ctrl-C while loading exits with code 130, no traceback)
import contextlib
import functools
import io
import os
import random
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Optional

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid-* and BabyAI-* env ids)
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from torch.distributions.categorical import Categorical

from llmppo import runs
from llmppo.env_groups import EnvGroups
from llmppo.evaluation import evaluate


@dataclass
class Args(runs.RunFlags):  # + the flags of every script: run folder, checkpoints, evaluation
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (the first part of the run name)"""
    seed: int = 1
    """seed of the experiment: the same seed on CPU gives the same learning curve"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """train on CUDA if available (the networks are tiny: the CPU is usually as fast)"""
    torch_threads: int = 2
    """torch CPU threads of the update (the rollout's forward passes take one: the env workers need the other cores)"""
    memory: bool = True
    """give the agent a GRU memory of past steps (recurrent PPO); a --checkpoint or --resume brings its own"""
    patch_stride: int = 2
    """stride of the 2x2 patch CNN over the view: 2 (4x4 patches) or 1 (7x7 overlapping windows: finer positions, slower)"""

    # Algorithm specific arguments
    env_id: str = "MiniGrid-DoorKey-5x5-v0"
    """the id of the environment: any MiniGrid-* or BabyAI-* id"""
    total_timesteps: int = 80_000
    """total frames (environment steps over all envs) to train for"""
    learning_rate: float = 2e-3
    """the learning rate of the optimizer"""
    num_envs: int = 16
    """the number of parallel environments"""
    env_processes: int = 2
    """processes that step the envs at once, a share each (this one and workers); any count gives the same run"""
    num_steps: int = 64
    """the number of steps to run in each environment per policy rollout"""
    recurrence: int = 8
    """the update replays the memory in chunks of this many steps (truncated BPTT); at most --num-steps: whole rollouts"""
    anneal_lr: bool = True
    """toggle learning rate annealing (linear to 0)"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 2
    """the number of mini-batches (each holds whole env sequences: --num-envs must divide by it)"""
    update_epochs: int = 8
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """toggles advantages normalization (skipped for a rollout without any reward: see the update)"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """toggles whether or not to use a clipped loss for the value function, as per the paper"""
    ent_coef: float = 0.005
    """coefficient of the entropy bonus"""
    vf_coef: float = 0.5
    """coefficient of the value function loss"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    target_kl: Optional[float] = None
    """stop the update epochs early when the approximate KL exceeds this (None: never)"""

    # to be filled in runtime
    batch_size: int = 0
    """the batch size (computed in runtime)"""
    num_iterations: int = 0
    """the number of iterations (computed in runtime)"""


# The agent sees a flat uint8 vector: the 7x7x3 symbolic view (object, color, state per cell), its direction,
# and the mission as word ids. One flat Box keeps vector envs, shared memory and the rollout buffer simple.
VIEW_CELLS = 7 * 7 * 3
MAX_MISSION_WORDS = 40  # the longest mission of any registered MiniGrid/BabyAI env has 37 words
OBS_SIZE = VIEW_CELLS + 1 + MAX_MISSION_WORDS
# Every word of every MiniGrid/BabyAI mission grammar (collected from all registered envs). A fixed vocabulary
# keeps word ids the same across envs, so a checkpoint can be evaluated on another env id (transfer).
MISSION_WORDS = (
    "a after and at avoid ball behind blue box door end fetch find from front get go goal green grey hallway in "
    "key lava left matching must near next object of on open opening pick purple put reach red right room rooms "
    "square the then to traverse unlock up use yellow you your"
).split()
PAD_ID, UNKNOWN_ID = 0, 1
WORD_TO_ID = {word: i + 2 for i, word in enumerate(MISSION_WORDS)}
MEMORY_SIZE = 64  # hidden units of the agent's GRU memory


def encode_mission(mission: str) -> np.ndarray:
    ids = [WORD_TO_ID.get(word, UNKNOWN_ID) for word in re.findall(r"[a-z]+", mission.lower())]
    encoded = np.full(MAX_MISSION_WORDS, PAD_ID, dtype=np.uint8)
    encoded[: len(ids)] = ids[:MAX_MISSION_WORDS]
    return encoded


def flatten_observation(obs: dict, mission_cache: dict) -> np.ndarray:
    mission = obs["mission"]
    if mission not in mission_cache:  # missions repeat a lot; tokenize each one once
        mission_cache[mission] = encode_mission(mission)
    return np.concatenate([obs["image"].reshape(-1), [obs["direction"]], mission_cache[mission]]).astype(np.uint8)


class FlatObservation(gym.ObservationWrapper):
    """Dict observation (image, direction, mission) -> one uint8 vector; silences BabyAI's level-generation prints."""

    def __init__(self, env):
        super().__init__(env)
        self.observation_space = gym.spaces.Box(0, 255, (OBS_SIZE,), np.uint8)
        self.mission_cache = {}

    def reset(self, **kwargs):
        with contextlib.redirect_stdout(io.StringIO()):  # BabyAI prints "Sampling rejected: ..." while generating
            return super().reset(**kwargs)

    def observation(self, obs):
        return flatten_observation(obs, self.mission_cache)


def make_env(env_id, render=False):
    def thunk():
        env = gym.make(env_id, render_mode="rgb_array" if render else None)
        return FlatObservation(env)

    return thunk


def make_vector_env(env_id, num_envs, processes=1, render=False):
    # SAME_STEP autoreset: a finished env is reset inside the step that ended it, so the next observation is
    # already the new episode's and CleanRL's done-masking in GAE stays exact.
    env_fns, autoreset = [make_env(env_id, render) for _ in range(num_envs)], gym.vector.AutoresetMode.SAME_STEP
    # processes > 1: the envs in that many shares stepped at once, one share here and the others in worker processes
    vector_env_class = functools.partial(EnvGroups, num_groups=processes) if processes > 1 else gym.vector.SyncVectorEnv
    envs = vector_env_class(env_fns, autoreset_mode=autoreset)
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


def rollout_chunks(num_steps, num_envs, recurrence):
    """Flat indices (step * num_envs + env) in chunks of `recurrence` steps of one env: column c is env c % num_envs."""
    return np.arange(num_steps * num_envs).reshape(-1, recurrence, num_envs).transpose(1, 0, 2).reshape(recurrence, -1)


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, n_actions, memory=True, patch_stride=2):
        super().__init__()
        # Cell values are categories (object 5 is not "more" than 4): a multi-hot vector per cell (a slot per object, color,
        # state) times a linear layer is the sum of three embeddings, with a cheaper backward on CPU than nn.Embedding's.
        self.cell_encoder = nn.Linear(3 * 16, 8, bias=False)
        self.register_buffer("channel_offsets", torch.tensor([0, 16, 32]))
        # The CNN: a 2x2 convolution with stride 2 over the view padded to 8x8 (16 filters on each of the 4x4 patches) as
        # one linear layer on the reshaped grid: nn.Conv2d's per-call overhead dominates layers this small on CPU. Stride
        # 1 puts a window at every cell, so the agent knows where an object is to the cell, not to the patch.
        self.patch_stride = patch_stride
        self.patch_conv = layer_init(nn.Linear(2 * 2 * 8, 16))
        # The mission as a bag of words (which words appear: "go to the red ball"); "put A next to B" would need a GRU.
        self.mission_encoder = nn.Sequential(layer_init(nn.Linear(len(MISSION_WORDS) + 2, 32)), nn.ReLU())
        # FiLM (BabyAI's agent): the mission scales and shifts each patch channel; small initial weights: the plain CNN at first.
        self.film = layer_init(nn.Linear(32, 2 * 16), std=0.01)
        features = (4 * 4 if patch_stride == 2 else 7 * 7) * 16 + 4 + 32
        # The memory: a GRU over the steps of an episode (what was seen before it turned away), reset at episode ends.
        self.memory_size = MEMORY_SIZE if memory else 0
        if memory:
            self.memory = nn.GRUCell(features, MEMORY_SIZE)
        heads = features + self.memory_size
        self.critic = nn.Sequential(layer_init(nn.Linear(heads, 64)), nn.Tanh(), layer_init(nn.Linear(64, 1), std=1.0))
        self.actor = nn.Sequential(layer_init(nn.Linear(heads, 64)), nn.Tanh(), layer_init(nn.Linear(64, n_actions), std=0.01))

    def features(self, obs):
        batch = len(obs)
        cells = obs[:, :VIEW_CELLS].view(batch, 49, 3).long() + self.channel_offsets
        multi_hot = torch.zeros(batch, 49, 3 * 16, device=obs.device).scatter_(2, cells, 1.0)
        image = nn.functional.pad(self.cell_encoder(multi_hot).view(batch, 7, 7, -1), (0, 0, 0, 1, 0, 1))  # 8x8 cells
        if self.patch_stride == 2:
            patches = image.view(batch, 4, 2, 4, 2, -1).transpose(2, 3).reshape(batch, 16, -1)  # 4x4 patches of 2x2 cells
        else:  # the 2x2 window at each of the 7x7 cells: the four shifted grids side by side
            windows = [image[:, :7, :7], image[:, 1:, :7], image[:, :7, 1:], image[:, 1:, 1:]]
            patches = torch.cat(windows, dim=3).reshape(batch, 49, -1)
        direction = torch.zeros(batch, 4, device=obs.device).scatter_(1, obs[:, VIEW_CELLS : VIEW_CELLS + 1].long(), 1.0)
        words = torch.zeros(batch, len(MISSION_WORDS) + 2, device=obs.device).scatter_(1, obs[:, VIEW_CELLS + 1 :].long(), 1.0)
        words[:, PAD_ID] = 0.0
        mission = self.mission_encoder(words)
        scale, shift = self.film(mission).unsqueeze(1).chunk(2, dim=2)
        patch_features = torch.relu(self.patch_conv(patches) * (1 + scale) + shift)
        return torch.cat([patch_features.flatten(1), direction, mission], dim=1)

    def initial_memory(self, num_envs, device):
        return torch.zeros(num_envs, self.memory_size, device=device)  # width 0 without a memory

    def get_states(self, x, memory_state, done):
        """Features of x (steps x envs, step-major) with the memory after each step (reset where `done`), and the last one."""
        hidden = self.features(x)
        if self.memory_size == 0:
            return hidden, memory_state
        num_envs = memory_state.shape[0]
        # nn.GRUCell's equations, written out so that the input side is one matrix product for all steps
        input_gates = nn.functional.linear(hidden, self.memory.weight_ih, self.memory.bias_ih).view(-1, num_envs, 3, self.memory_size)
        keep = (1.0 - done).view(-1, num_envs, 1)
        memories = []
        for step_gates, step_keep in zip(input_gates, keep):
            memory_state = memory_state * step_keep
            memory_gates = nn.functional.linear(memory_state, self.memory.weight_hh, self.memory.bias_hh).view(num_envs, 3, -1)
            reset, update = torch.sigmoid(step_gates[:, :2] + memory_gates[:, :2]).unbind(1)
            candidate = torch.tanh(torch.addcmul(step_gates[:, 2], reset, memory_gates[:, 2]))
            memory_state = torch.lerp(candidate, memory_state, update)
            memories.append(memory_state)
        return torch.cat([hidden, torch.cat(memories)], dim=1), memory_state

    def get_value(self, x, memory_state, done):
        return self.critic(self.get_states(x, memory_state, done)[0])

    def get_action_and_value(self, x, memory_state, done, action=None):
        hidden, memory_state = self.get_states(x, memory_state, done)
        logits = self.actor(hidden)
        probs = Categorical(logits=logits, validate_args=False)  # the checks cost more than this tiny net
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(hidden), memory_state


if __name__ == "__main__":
    args, checkpoint, train = runs.parse_args(Args, Agent, make_env)  # bad flags: one line and exit 2, before any work
    stop = runs.StopFlag()  # Ctrl-C or SIGTERM: the loop ends, a checkpoint is saved, exit code 130

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(1)  # the rollout's tiny forward passes; --torch-threads for the update
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # env setup
    envs = make_vector_env(args.env_id, args.num_envs, args.env_processes)
    assert isinstance(envs.single_action_space, gym.spaces.Discrete), "only discrete action space is supported"
    make_eval_envs = functools.partial(make_vector_env, args.env_id)  # evaluation: the actor alone

    agent = Agent(envs.single_action_space.n, args.memory, args.patch_stride).to(device)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)  # one kernel, not one per tensor
    if checkpoint is not None:
        runs.load_checkpoint(checkpoint, agent, optimizer, args)
    run_path, writer, start_iteration = runs.open_run(args, checkpoint, stop)  # the run folder, made only now

    # ALGO Logic: Storage setup
    obs = torch.zeros((args.num_steps, args.num_envs, OBS_SIZE), dtype=torch.uint8).to(device)
    actions = torch.zeros((args.num_steps, args.num_envs), dtype=torch.long).to(device)
    logprobs = torch.zeros((args.num_steps, args.num_envs)).to(device)
    rewards = torch.zeros((args.num_steps, args.num_envs)).to(device)
    dones = torch.zeros((args.num_steps, args.num_envs)).to(device)
    values = torch.zeros((args.num_steps, args.num_envs)).to(device)
    memories = torch.zeros((args.num_steps, args.num_envs, agent.memory_size)).to(device)

    # TRY NOT TO MODIFY: start the game
    global_step, iterations_done = start_iteration * args.batch_size, start_iteration
    if args.resume is not None:  # the random streams where the run saved them; the envs start new episodes
        runs.restore_rng_state(checkpoint["rng"])
    start_time, start_step = time.time(), global_step  # FPS counts this process's frames only (--resume)
    recent_returns, recent_lengths = deque(maxlen=100), deque(maxlen=100)
    next_obs = torch.as_tensor(envs.reset(seed=args.seed + start_iteration * args.num_envs)[0]).to(device)
    next_done = torch.zeros(args.num_envs).to(device)
    next_memory = agent.initial_memory(args.num_envs, device)

    for iteration in range(start_iteration + 1, args.num_iterations + 1):
        # Annealing the rate if instructed to do so.
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            optimizer.param_groups[0]["lr"] = frac * args.learning_rate

        for step in range(0, args.num_steps):
            if stop():
                break
            global_step += args.num_envs
            obs[step] = next_obs
            dones[step] = next_done
            memories[step] = next_memory  # the update replays each chunk from the memory stored at its start

            # ALGO LOGIC: action logic (inference mode: no_grad without the autograd bookkeeping)
            with torch.inference_mode():
                action, logprob, _, value, next_memory = agent.get_action_and_value(next_obs, next_memory, next_done)
                values[step] = value.flatten()
            actions[step] = action
            logprobs[step] = logprob

            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
            next_done = np.logical_or(terminations, truncations)
            rewards[step] = torch.as_tensor(reward, dtype=torch.float32).to(device)
            next_obs, next_done = torch.as_tensor(next_obs).to(device), torch.as_tensor(next_done, dtype=torch.float32).to(device)

            for i in np.flatnonzero(infos.get("_episode", [])):
                recent_returns.append(float(infos["episode"]["r"][i]))
                recent_lengths.append(int(infos["episode"]["l"][i]))
                writer.add_scalar("charts/episodic_return", infos["episode"]["r"][i], global_step)
                writer.add_scalar("charts/episodic_length", infos["episode"]["l"][i], global_step)

        if stop():  # Ctrl-C: stop without an update on a partial rollout
            break

        # bootstrap value if not done
        with torch.no_grad():
            next_value = agent.get_value(next_obs, next_memory, next_done).reshape(1, -1)
            advantages = torch.zeros_like(rewards).to(device)
            lastgaelam = 0
            for t in reversed(range(args.num_steps)):
                if t == args.num_steps - 1:
                    nextnonterminal = 1.0 - next_done
                    nextvalues = next_value
                else:
                    nextnonterminal = 1.0 - dones[t + 1]
                    nextvalues = values[t + 1]
                delta = rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
            returns = advantages + values
        rollout_had_reward = bool(rewards.any())

        # flatten the batch
        b_obs = obs.reshape((-1, OBS_SIZE))
        b_logprobs = logprobs.reshape(-1)
        b_actions = actions.reshape(-1)
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        b_values = values.reshape(-1)
        b_dones = dones.reshape(-1)
        b_memories = memories.reshape((args.batch_size, agent.memory_size))

        torch.set_num_threads(args.torch_threads)  # the env workers' cores are idle during the update
        # Optimizing the policy and value network: minibatches of chunks of one env's steps, each from its stored memory
        chunk_inds = rollout_chunks(args.num_steps, args.num_envs, args.recurrence)
        chunk_order = np.arange(chunk_inds.shape[1])
        clipfracs = []
        for epoch in range(args.update_epochs):
            np.random.shuffle(chunk_order)
            for minibatch, mb_chunk_ids in enumerate(np.split(chunk_order, args.num_minibatches)):
                mb_chunks = chunk_inds[:, mb_chunk_ids]
                mb_inds = mb_chunks.ravel()  # step-major, as get_states reads them

                _, newlogprob, entropy, newvalue, _ = agent.get_action_and_value(
                    b_obs[mb_inds], b_memories[mb_chunks[0]], b_dones[mb_inds], b_actions[mb_inds]
                )
                logratio = newlogprob - b_logprobs[mb_inds]
                ratio = logratio.exp()

                with torch.no_grad():
                    # calculate approx_kl http://joschu.net/blog/kl-approx.html
                    old_approx_kl = (-logratio).mean()
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs += [((ratio - 1.0).abs() > args.clip_coef).float().mean().item()]

                mb_advantages = b_advantages[mb_inds]
                # A rollout without a single reward has advantages made of value-function noise only. Scaled to
                # unit size, that noise drifts the policy until it may never find the reward (README:
                # benchmarks/agent); left unscaled, it barely moves the policy.
                if args.norm_adv and rollout_had_reward:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                # Policy loss
                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()

                # Value loss
                newvalue = newvalue.view(-1)
                if args.clip_vloss:
                    v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                    v_clipped = b_values[mb_inds] + torch.clamp(
                        newvalue - b_values[mb_inds],
                        -args.clip_coef,
                        args.clip_coef,
                    )
                    v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                    v_loss_max = torch.max(v_loss_unclipped, v_loss_clipped)
                    v_loss = 0.5 * v_loss_max.mean()
                else:
                    v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()

                entropy_loss = entropy.mean()
                loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm, foreach=True)
                optimizer.step()

            if args.target_kl is not None and approx_kl > args.target_kl:
                break
        iterations_done = iteration
        torch.set_num_threads(1)

        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

        # TRY NOT TO MODIFY: record rewards for plotting purposes
        sps = int((global_step - start_step) / (time.time() - start_time))
        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy_loss.item(), global_step)
        writer.add_scalar("losses/old_approx_kl", old_approx_kl.item(), global_step)
        writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
        writer.add_scalar("losses/clipfrac", np.mean(clipfracs), global_step)
        writer.add_scalar("losses/explained_variance", explained_var, global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        if recent_returns:
            writer.add_scalar("charts/rolling_return", np.mean(recent_returns), global_step)
        if args.eval_every > 0 and iteration % args.eval_every == 0 and iteration < args.num_iterations:
            eval_seed = args.seed + 10_000 + iteration  # fresh levels each time, still reproducible
            evaluation = evaluate(agent, make_eval_envs, args.eval_episodes, args.num_envs, eval_seed, device, stop=stop)
            if evaluation is None:  # Ctrl-C
                break
            mean_return, success_rate, _ = evaluation
            writer.add_scalar("eval/episodic_return", mean_return, global_step)
            writer.add_scalar("eval/success_rate", success_rate, global_step)
        if iteration % args.log_every == 0 or iteration == args.num_iterations:
            rolling = f"{np.mean(recent_returns):.3f}" if recent_returns else "n/a"
            length = f"{np.mean(recent_lengths):.1f}" if recent_lengths else "n/a"
            print(
                f"update {iteration}/{args.num_iterations} | frames {global_step} | FPS {sps} | "
                f"return {rolling} (last {len(recent_returns)} episodes) | length {length}",
                flush=True,
            )
    # the end: a checkpoint (--save-model, or after Ctrl-C), the final evaluation of the actor alone, exit code 130 after Ctrl-C
    save = lambda: runs.save_checkpoint(run_path, agent, optimizer, args, global_step, iterations_done)
    final_evaluation = lambda video_dir: evaluate(agent, make_eval_envs, args.eval_episodes, args.num_envs, args.seed + 10_000,
                                                  device, args.eval_argmax, video_dir, stop=stop)
    runs.finish(args, train, stop, save, final_evaluation, writer, envs, global_step, what="eval")
