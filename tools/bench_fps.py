"""Training speed as a fraction of the raw environment speed, measured in one process.

    python tools/bench_fps.py                      # ppo_baseline.py on MiniGrid-DoorKey-5x5-v0, 16 envs
    python tools/bench_fps.py --scripts ppo_baseline.py ppo_llm_policy.py ppo_llm_policy.py --script-args="--llm-cache-dir /tmp/c"

(the second policy run finds the first one's answers in the shared cache: cold-cache FPS, then warm-cache FPS).
Flags for the scripts go in one --script-args=... (with "=", since they start with "--").

Raw speed: one bare env (gym.make, no wrappers) stepped with random actions on one core, measured before the first
training run and again after every run; each run is compared with the mean of the raw speeds measured just before and
just after it, because this machine's speed drifts by +-10% within minutes. Also printed: the same env as a 16-env
SyncVectorEnv with random actions, i.e. the environment cost the training loop cannot avoid; the rest of a training
frame is the agent. Training FPS: each script's own main loop, run in this process with runpy, read from the FPS it
prints at the end. With --repeats N the scripts run N times in turn and the last table gives each one's median ratio.

Where a training run's time goes, per update: stepping the vector envs (their step method, timed), the rollout's
forward passes (the scripts' `torch.inference_mode` blocks, timed), and the rest of the loop (the update, GAE,
bookkeeping, LLM queries), which is the loop's time (frames / its FPS) less the other two.
"""

import contextlib
import difflib
import io
import os
import re
import runpy
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass

import gymnasium as gym
import minigrid  # noqa: F401
import numpy as np
import torch
import tyro


@dataclass
class Args:
    env_id: str = "MiniGrid-DoorKey-5x5-v0"
    """environment to measure on"""
    raw_steps: int = 20_000
    """random-action steps for the raw env speed measurement"""
    total_timesteps: int = 40_960
    """frames each training script runs for"""
    num_envs: int = 16
    """parallel envs in the training scripts"""
    scripts: tuple[str, ...] = ("ppo_baseline.py",)
    """training scripts to measure (paths relative to the repository root)"""
    script_args: str = ""
    """extra flags passed to every script after the first (e.g. "--advisor uniform")"""
    repeats: int = 1
    """run the list of scripts this many times in turn; the summary gives each script's median FPS / raw ratio"""


def fail(message):
    """Bad input: one line on stderr naming what to do, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def raw_env_steps_per_second(env_id, steps, seed=0):
    env = gym.make(env_id)
    env.action_space.seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        env.reset(seed=seed)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            with contextlib.redirect_stdout(io.StringIO()):
                env.reset()
    return steps / (time.perf_counter() - start)


def raw_vector_env_steps_per_second(env_id, steps, num_envs, seed=0):
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make(env_id) for _ in range(num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    rng = np.random.default_rng(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        envs.reset(seed=seed)
        start = time.perf_counter()
        for _ in range(steps // num_envs):
            envs.step(rng.integers(envs.single_action_space.n, size=num_envs))
        elapsed = time.perf_counter() - start
    envs.close()
    return steps // num_envs * num_envs / elapsed


@contextlib.contextmanager
def timed_parts():
    """While a script runs in this process: seconds in the vector envs' step and in torch.inference_mode blocks."""
    seconds = {"env": 0.0, "inference": 0.0}
    vector_classes = {cls: cls.step for cls in (gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv)}

    def timed_step(original):
        def step(self, actions):
            start = time.perf_counter()
            try:
                return original(self, actions)
            finally:
                seconds["env"] += time.perf_counter() - start
        return step

    inference_mode = torch.inference_mode

    class timed_inference_mode(inference_mode):  # the scripts' `with torch.inference_mode():` finds this one
        def __enter__(self):
            self.start = time.perf_counter()
            return super().__enter__()

        def __exit__(self, *exception):
            super().__exit__(*exception)
            seconds["inference"] += time.perf_counter() - self.start

    for cls, original in vector_classes.items():
        cls.step = timed_step(original)
    torch.inference_mode = timed_inference_mode
    try:
        yield seconds
    finally:
        torch.inference_mode = inference_mode
        for cls, original in vector_classes.items():
            cls.step = original


def training_fps(script, flags):
    """Run a training script's __main__ in this process; return the FPS of its last progress line."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, script)
    captured = io.StringIO()
    saved_argv = sys.argv
    sys.argv = [path] + flags
    if root not in sys.path:  # the scripts import prompts.py and llmppo/ from the repository root
        sys.path.insert(0, root)
    try:
        with contextlib.redirect_stdout(captured), timed_parts() as seconds:
            runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv = saved_argv
    progress = re.findall(r"update (\d+)/\d+ \| frames (\d+) \| FPS (\d+)", captured.getvalue())
    if not progress:  # e.g. a --total-timesteps below one update
        fail(f"{script} printed no FPS line: {captured.getvalue().strip()[-300:] or 'no output'}")
    updates, frames, fps = (int(number) for number in progress[-1])
    loop_seconds = frames / fps
    per_update = {part: 1000 * spent / updates for part, spent in seconds.items()}
    per_update["update and the rest"] = 1000 * (loop_seconds - sum(seconds.values())) / updates
    return fps, captured.getvalue(), per_update


if __name__ == "__main__":
    args = tyro.cli(Args)
    if args.repeats < 1 or args.raw_steps < 1 or args.total_timesteps < 1 or args.num_envs < 1:
        fail("--repeats, --raw-steps, --total-timesteps and --num-envs must be at least 1")
    if args.env_id not in gym.registry:
        close = difflib.get_close_matches(args.env_id, list(gym.registry), n=3, cutoff=0.5)
        fail(f"unknown --env-id '{args.env_id}'" + (f": did you mean {', '.join(close)}?" if close else ""))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for script in args.scripts:
        if not os.path.isfile(os.path.join(root, script)):
            fail(f"--scripts {script}: no such file in {root} (e.g. ppo_baseline.py)")
    try:
        shlex.split(args.script_args)
    except ValueError as error:
        fail(f"--script-args: {error}")
    raw_speeds = [raw_env_steps_per_second(args.env_id, args.raw_steps)]
    print(f"raw env ({args.env_id}, 1 env, random actions): {raw_speeds[0]:.0f} steps/s", flush=True)
    vector_before = raw_vector_env_steps_per_second(args.env_id, args.raw_steps, args.num_envs)
    print(f"vector env ({args.num_envs} envs, random actions): {vector_before:.0f} steps/s", flush=True)
    # A script is named with its extra flags, so the same script with and without them stays two rows of the summary.
    labels = [script + (f" {args.script_args}" if i > 0 and args.script_args else "") for i, script in enumerate(args.scripts)]
    results = []  # (label, fps, raw reference)
    with tempfile.TemporaryDirectory() as run_dir:
        for repeat in range(args.repeats):
            for i, (script, label) in enumerate(zip(args.scripts, labels)):
                flags = ["--env-id", args.env_id, "--total-timesteps", str(args.total_timesteps)]
                flags += ["--num-envs", str(args.num_envs), "--run-dir", run_dir, "--log-every", "1000000"]
                flags += shlex.split(args.script_args) if i > 0 else []
                fps, output, per_update = training_fps(script, flags)
                raw_speeds.append(raw_env_steps_per_second(args.env_id, args.raw_steps))
                results.append((label, fps, np.mean(raw_speeds[-2:]), per_update))
                adviser_lines = [line for line in output.splitlines() if line.startswith("LLM adviser")]
                split = ", ".join(f"{part} {ms:.0f} ms" for part, ms in per_update.items())
                print(f"{label}: {fps} training FPS (raw env after it: {raw_speeds[-1]:.0f} steps/s)",
                      f"per update: {split}", *adviser_lines, sep="\n    ", flush=True)
    vector_after = raw_vector_env_steps_per_second(args.env_id, args.raw_steps, args.num_envs)
    raw, vector = np.mean(raw_speeds), np.mean([vector_before, vector_after])
    print(f"raw env over the whole run: mean {raw:.0f}, min {min(raw_speeds):.0f}, max {max(raw_speeds):.0f} steps/s")
    print(f"vector env again: {vector_after:.0f} steps/s (reference: mean {vector:.0f})\n")
    print(f"| run | script | training FPS | raw env steps/s around it | FPS / raw | FPS / vector env steps/s | FPS / {results[0][0]}'s "
          "| per update: env steps, inference, update and the rest (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for run, (script, fps, raw_around, per_update) in enumerate(results, 1):
        split = " / ".join(f"{ms:.0f}" for ms in per_update.values())
        print(f"| {run} | {script} | {fps} | {raw_around:.0f} | {fps / raw_around:.0%} | {fps / vector:.0%} | {fps / results[0][1]:.0%} | {split} |")
    if args.repeats > 1:
        print("\n| script | runs | median training FPS | median FPS / raw | lowest | highest |")
        print("|---|---|---|---|---|---|")
        for script in dict.fromkeys(labels):
            fps = [f for s, f, _, _ in results if s == script]
            ratios = [f / r for s, f, r, _ in results if s == script]
            print(f"| {script} | {len(fps)} | {np.median(fps):.0f} | {np.median(ratios):.0%} | {min(ratios):.0%} | {max(ratios):.0%} |")
