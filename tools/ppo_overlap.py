"""An experiment (issue 34, item 2): ppo_baseline.py with the rollout collected in a worker process while this process
runs the update, so that env steps and inference hide behind the update on a second core. The price: each rollout
is collected with the weights of one update before (the update that is running while it is collected), so PPO's
ratio starts one update away from 1. Same Agent, flags, update and logs as ppo_baseline.py (whose pieces it
imports); no --resume, no --checkpoint, the envs of the worker in one process.

    python tools/ppo_overlap.py --seed 1 --total-timesteps 80000
    python tools/ppo_overlap.py --env-id BabyAI-GoToLocal-v0 --total-timesteps 1000000 --eval-episodes 500
"""

import functools
import multiprocessing
import os
import random
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ppo_baseline as pb  # noqa: E402
from llmppo import runs  # noqa: E402
from llmppo.evaluation import evaluate  # noqa: E402


@dataclass
class Args(pb.Args):
    decoupled: bool = False
    """clip the ratio to the weights before this update, not to the rollout's (one update older), and weight the
    advantages by the rollout's importance ratio (Hilton et al. 2021's decoupled PPO objective)"""
    sequential: bool = False
    """a control: collect each rollout with the weights after the update, as ppo_baseline.py does (no overlap, no lag)"""
    torch_threads: int = 1
    """torch CPU threads of the update (one: the rollout's worker process runs beside it on the other core)"""


def collect_rollouts(args, connection):
    """The worker: receives weights, collects one rollout of num_steps x num_envs with them, sends it back; again."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C and ends this one
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the main process's handler (forked): a terminate() ends it quietly
    torch.set_num_threads(1)
    torch.manual_seed(args.seed + 1)  # its own action-sampling stream
    envs = pb.make_vector_env(args.env_id, args.num_envs, 1)
    agent = pb.Agent(envs.single_action_space.n, args.memory, args.patch_stride)
    next_obs = torch.as_tensor(envs.reset(seed=args.seed)[0])
    next_done = torch.zeros(args.num_envs)
    next_memory = agent.initial_memory(args.num_envs, "cpu")
    while (weights := connection.recv()) is not None:
        agent.load_state_dict(weights)
        rollout = {name: torch.zeros((args.num_steps, args.num_envs)) for name in ["logprobs", "rewards", "dones", "values"]}
        rollout["obs"] = torch.zeros((args.num_steps, args.num_envs, pb.OBS_SIZE), dtype=torch.uint8)
        rollout["actions"] = torch.zeros((args.num_steps, args.num_envs), dtype=torch.long)
        rollout["memories"] = torch.zeros((args.num_steps, args.num_envs, agent.memory_size))
        episodes = []
        for step in range(args.num_steps):
            rollout["obs"][step], rollout["dones"][step], rollout["memories"][step] = next_obs, next_done, next_memory
            with torch.inference_mode():
                action, logprob, _, value, next_memory = agent.get_action_and_value(next_obs, next_memory, next_done)
            rollout["values"][step], rollout["actions"][step], rollout["logprobs"][step] = value.flatten(), action, logprob
            next_obs, reward, terminations, truncations, infos = envs.step(action.numpy())
            rollout["rewards"][step] = torch.as_tensor(reward, dtype=torch.float32)
            next_obs = torch.as_tensor(next_obs)
            next_done = torch.as_tensor(np.logical_or(terminations, truncations), dtype=torch.float32)
            for i in np.flatnonzero(infos.get("_episode", [])):
                episodes.append((step, float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])))
        with torch.inference_mode():
            next_value = agent.get_value(next_obs, next_memory, next_done).reshape(1, -1)
        connection.send(rollout | {"next_value": next_value, "next_done": next_done, "episodes": episodes})
    envs.close()


if __name__ == "__main__":
    args, checkpoint, train = runs.parse_args(Args, pb.Agent, pb.make_env)
    if checkpoint is not None or not train:
        runs.fail("tools/ppo_overlap.py trains from scratch only: no --checkpoint or --resume")
    args.exp_name = "ppo_overlap"
    stop = runs.StopFlag()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cpu")

    envs = pb.make_vector_env(args.env_id, 1)  # the action space, and the Ctrl-C path's envs.close()
    make_eval_envs = functools.partial(pb.make_vector_env, args.env_id)
    agent = pb.Agent(envs.single_action_space.n, args.memory, args.patch_stride)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    run_path, writer, _ = runs.open_run(args, None, stop)

    parent_end, child_end = multiprocessing.Pipe()
    worker = multiprocessing.Process(target=collect_rollouts, args=(args, child_end), daemon=True)
    worker.start()
    parent_end.send(agent.state_dict())  # the first rollout

    global_step, iterations_done = 0, 0
    start_time = time.time()
    recent_returns, recent_lengths = deque(maxlen=100), deque(maxlen=100)
    for iteration in range(1, args.num_iterations + 1):
        if stop():
            break
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            optimizer.param_groups[0]["lr"] = frac * args.learning_rate

        rollout = parent_end.recv()  # collected with the weights sent one update ago
        if iteration < args.num_iterations and not args.sequential:  # the next rollout starts now, with these weights
            parent_end.send(agent.state_dict())
        for step, episode_return, episode_length in rollout["episodes"]:
            recent_returns.append(episode_return)
            recent_lengths.append(episode_length)
            writer.add_scalar("charts/episodic_return", episode_return, global_step + (step + 1) * args.num_envs)
            writer.add_scalar("charts/episodic_length", episode_length, global_step + (step + 1) * args.num_envs)
        global_step += args.batch_size
        obs, actions, logprobs, rewards = rollout["obs"], rollout["actions"], rollout["logprobs"], rollout["rewards"]
        dones, values, memories = rollout["dones"], rollout["values"], rollout["memories"]

        # GAE with the behaviour weights' values, as the rollout stored them
        with torch.no_grad():
            advantages = torch.zeros_like(rewards)
            lastgaelam = 0
            for t in reversed(range(args.num_steps)):
                if t == args.num_steps - 1:
                    nextnonterminal, nextvalues = 1.0 - rollout["next_done"], rollout["next_value"]
                else:
                    nextnonterminal, nextvalues = 1.0 - dones[t + 1], values[t + 1]
                delta = rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
            returns = advantages + values
        rollout_had_reward = bool(rewards.any())

        b_obs = obs.reshape((-1, pb.OBS_SIZE))
        b_logprobs, b_actions, b_advantages = logprobs.reshape(-1), actions.reshape(-1), advantages.reshape(-1)
        b_returns, b_values, b_dones = returns.reshape(-1), values.reshape(-1), dones.reshape(-1)
        b_memories = memories.reshape((args.batch_size, agent.memory_size))

        # the update: ppo_baseline.py's, line for line
        chunk_inds = pb.rollout_chunks(args.num_steps, args.num_envs, args.recurrence)
        chunk_order = np.arange(chunk_inds.shape[1])
        clipfracs = []
        b_proximal_logprobs = b_logprobs  # the ratio's reference: the rollout's weights, as in ppo_baseline.py
        if args.decoupled:  # or the weights before this update, with the rollout's importance ratio on the advantages
            with torch.no_grad():
                all_inds = chunk_inds.ravel()
                _, proximal, _, _, _ = agent.get_action_and_value(b_obs[all_inds], b_memories[chunk_inds[0]],
                                                                  b_dones[all_inds], b_actions[all_inds])
                b_proximal_logprobs = torch.empty_like(b_logprobs)
                b_proximal_logprobs[all_inds] = proximal
        for epoch in range(args.update_epochs):
            np.random.shuffle(chunk_order)
            for minibatch, mb_chunk_ids in enumerate(np.split(chunk_order, args.num_minibatches)):
                mb_chunks = chunk_inds[:, mb_chunk_ids]
                mb_inds = mb_chunks.ravel()
                _, newlogprob, entropy, newvalue, _ = agent.get_action_and_value(
                    b_obs[mb_inds], b_memories[mb_chunks[0]], b_dones[mb_inds], b_actions[mb_inds]
                )
                logratio = newlogprob - b_proximal_logprobs[mb_inds]
                ratio = logratio.exp()
                importance = (b_proximal_logprobs[mb_inds] - b_logprobs[mb_inds]).exp()  # 1 unless --decoupled
                with torch.no_grad():
                    old_approx_kl = (-logratio).mean()
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs += [((ratio - 1.0).abs() > args.clip_coef).float().mean().item()]
                mb_advantages = b_advantages[mb_inds]
                if args.norm_adv and rollout_had_reward:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
                pg_loss1 = -mb_advantages * importance * ratio
                pg_loss2 = -mb_advantages * importance * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()
                newvalue = newvalue.view(-1)
                if args.clip_vloss:
                    v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                    v_clipped = b_values[mb_inds] + torch.clamp(newvalue - b_values[mb_inds], -args.clip_coef, args.clip_coef)
                    v_loss = 0.5 * torch.max(v_loss_unclipped, (v_clipped - b_returns[mb_inds]) ** 2).mean()
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
        if iteration < args.num_iterations and args.sequential:  # the next rollout, with the updated weights
            parent_end.send(agent.state_dict())

        y_pred, y_true = b_values.numpy(), b_returns.numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y
        sps = int(global_step / (time.time() - start_time))
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
            evaluation = evaluate(agent, make_eval_envs, args.eval_episodes, args.num_envs, args.seed + 10_000 + iteration,
                                  device, stop=stop)
            if evaluation is None:
                break
            writer.add_scalar("eval/episodic_return", evaluation[0], global_step)
            writer.add_scalar("eval/success_rate", evaluation[1], global_step)
        if iteration % args.log_every == 0 or iteration == args.num_iterations:
            rolling = f"{np.mean(recent_returns):.3f}" if recent_returns else "n/a"
            print(f"update {iteration}/{args.num_iterations} | frames {global_step} | FPS {sps} | return {rolling} "
                  f"(last {len(recent_returns)} episodes)", flush=True)

    worker.terminate() if stop() else parent_end.send(None)
    worker.join(timeout=10)
    save = lambda: runs.save_checkpoint(run_path, agent, optimizer, args, global_step, iterations_done)
    final_evaluation = lambda video_dir: evaluate(agent, make_eval_envs, args.eval_episodes, args.num_envs, args.seed + 10_000,
                                                  device, args.eval_argmax, video_dir, stop=stop)
    runs.finish(args, train, stop, save, final_evaluation, writer, envs, global_step, what="eval")
