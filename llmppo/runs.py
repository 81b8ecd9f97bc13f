"""What each script does around the algorithm, written once (CleanRL keeps such code in cleanrl_utils/): reading and
checking the flags, --resume and --fine-tune bookkeeping, checkpoints (atomic save, one-line load errors), the run
folder and its TensorBoard writer, the Ctrl-C / SIGTERM flag, the final save and the exit code.

A script calls each in one line:

    args, checkpoint, train = runs.parse_args(Args, Agent, make_env)  # flags checked before any work
    stop = runs.StopFlag()                                            # Ctrl-C and SIGTERM set it; the loop checks it
    run_path, writer, start_iteration = runs.open_run(args, checkpoint, stop)  # the run folder, once the run starts
    ...
    runs.finish(...)                                                  # checkpoint, final evaluation, exit code
"""

import contextlib
import difflib
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from typing import Optional

import gymnasium as gym
import numpy as np
import torch
import tyro
from torch.utils.tensorboard import SummaryWriter

from llmppo.checks import MAX_SEED, float_flag_error


@dataclass
class RunFlags:
    """The flags every script shares that are not the algorithm; each script's Args adds its own."""

    run_dir: str = "runs"
    """TensorBoard logs and checkpoints go to <run-dir>/<run-name>/"""
    save_model: bool = False
    """save a checkpoint (weights, optimizer, args) to <run-dir>/<run-name>/agent.pt at the end (Ctrl-C always saves)"""
    resume: Optional[str] = None
    """continue an interrupted run from its agent.pt (or run folder): same folder, flags, frame count, schedules, optimizer"""
    checkpoint: Optional[str] = None
    """load the agent from this checkpoint; with --eval-episodes N and no --fine-tune it is only evaluated"""
    fine_tune: bool = False
    """start a new run from the agent in --checkpoint (weights, optimizer), e.g. on another env, for --total-timesteps frames"""
    eval_episodes: int = 0
    """episodes to evaluate the agent at the end (the actor alone: no LLM, no bonus; sampled); 0 skips evaluation"""
    eval_every: int = 0
    """also evaluate every this many updates during training (needs --eval-episodes; 0: only at the end)"""
    eval_argmax: bool = False
    """evaluate with the most probable action instead of sampling"""
    capture_video: bool = False
    """save GIFs of up to 3 evaluation episodes to <run-dir>/<run-name>/videos/ (needs --eval-episodes > 0)"""
    log_every: int = 5
    """print a progress line every this many updates"""


def fail(message):
    """Bad input gets one clear line on stderr and exit code 2, before any work starts."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def script_name(Args):
    """The file name of the script that defines `Args` (checkpoints record it, --resume checks it)."""
    module = sys.modules.get(Args.__module__)
    return os.path.basename(getattr(module, "__file__", None) or sys.argv[0])


# ---- flags -----------------------------------------------------------------------------------------------------------
def parse_args(Args, Agent, make_env):
    """The command line as `Args`, checked: a --resume takes the interrupted run's flags (any given again win); bad
    input exits with one line. Returns (args, the checkpoint to load or None, whether this run trains)."""
    args = tyro.cli(Args)
    if args.resume is not None:
        args = tyro.cli(Args, default=resumed_args(Args, args.resume))
    checkpoint = check_args(args, Agent, make_env)
    train = (args.checkpoint is None or args.fine_tune) and not getattr(args, "llm_only", False)
    args.batch_size = int(args.num_envs * args.num_steps)
    args.num_iterations = args.total_timesteps // args.batch_size if train else 0
    if train and args.num_iterations == 0:
        fail(f"--total-timesteps {args.total_timesteps} is less than one update (--num-envs x --num-steps = "
             f"{args.batch_size} frames): pass at least {args.batch_size}")
    args.recurrence = min(args.recurrence, args.num_steps)  # a chunk is at most a whole rollout
    if train and args.num_steps % args.recurrence:  # the update cuts each env's rollout into chunks
        fail(f"--num-steps {args.num_steps} must divide by --recurrence {args.recurrence}")
    num_chunks = args.num_envs * (args.num_steps // args.recurrence)
    if train and num_chunks % args.num_minibatches:  # a minibatch holds whole chunks
        fail(f"--num-minibatches {args.num_minibatches} must divide the rollout's {num_chunks} chunks (--num-envs x "
             f"--num-steps / --recurrence)")
    return args, checkpoint, train


def check_args(args, Agent, make_env):
    """Every flag of the three scripts checked once, before any work starts: one clear line on stderr and exit code 2.
    Returns the checkpoint to load (--checkpoint or --resume), if any."""
    known_ids = [env_id for env_id in gym.registry if env_id.startswith(("MiniGrid-", "BabyAI-"))]
    if args.env_id not in known_ids:
        close = difflib.get_close_matches(args.env_id, known_ids, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "MiniGrid-DoorKey-5x5-v0 or BabyAI-GoToLocal-v0 are examples."
        fail(f"unknown --env-id '{args.env_id}': use a MiniGrid-* or BabyAI-* id; {hint}")
    for name in ["num_envs", "num_steps", "recurrence", "num_minibatches", "update_epochs", "log_every", "torch_threads",
                 "env_processes"]:
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ["total_timesteps", "eval_episodes"]:
        if getattr(args, name) < 0:
            fail(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if args.patch_stride not in (1, 2):
        fail(f"--patch-stride must be 1 or 2, got {args.patch_stride}")
    if not 0 <= args.seed <= MAX_SEED:  # numpy's global seed takes 32 bits
        fail(f"--seed must be between 0 and {MAX_SEED}, got {args.seed}")
    if (message := float_flag_error(args)):
        fail(message)
    if args.resume is not None and (args.checkpoint is not None or args.fine_tune):
        fail("--resume continues a run; --checkpoint PATH --fine-tune starts a new one from a checkpoint: use one of them")
    if args.checkpoint is not None and not args.fine_tune and args.eval_episodes == 0:
        fail("--checkpoint given: add --eval-episodes N to evaluate it, or --fine-tune to train it further")
    if args.fine_tune and args.checkpoint is None:
        fail("--fine-tune needs --checkpoint PATH")
    if args.eval_every < 0 or (args.eval_every > 0 and args.eval_episodes == 0):
        fail("--eval-every N needs --eval-episodes M (and N must be 0 or more)")
    if args.capture_video and args.eval_episodes == 0:
        fail("--capture-video records evaluation episodes: add --eval-episodes N")
    if hasattr(args, "advisor"):
        check_llm_args(args)
    run_parent = os.path.dirname(os.path.abspath(checkpoint_file(args.resume))) if args.resume else args.run_dir
    if (message := writable_folder_error(run_parent, "--resume" if args.resume else "--run-dir")):
        fail(message)
    try:
        env = make_env(args.env_id)()
        env.reset(seed=args.seed)  # some envs need an optional dependency only here
        n_actions = env.action_space.n
        env.close()
    except Exception as error:
        fail(f"cannot create {args.env_id}: {str(error).splitlines()[0]}")
    checkpoint = None
    if args.checkpoint is not None or args.resume is not None:
        checkpoint = read_checkpoint(args.checkpoint or args.resume, "--checkpoint" if args.checkpoint else "--resume")
        args.memory = bool(checkpoint["args"].get("memory", True))  # the agent is built as it was trained
        args.patch_stride = int(checkpoint["args"].get("patch_stride", 2))
        expected = {name: tuple(value.shape) for name, value in Agent(n_actions, args.memory, args.patch_stride).state_dict().items()}
        shapes = {name: tuple(getattr(value, "shape", ())) for name, value in dict(checkpoint["model"]).items()}
        trained_actions = shapes.get("actor.2.weight", (None,))[0]
        if trained_actions != n_actions and trained_actions is not None:
            fail(f"{args.checkpoint or args.resume} was trained on an env with {trained_actions} actions, {args.env_id} "
                 f"has {n_actions}: evaluate or fine-tune it on an env with {trained_actions} actions")
        if "film.weight" not in shapes:
            fail(f"{args.checkpoint or args.resume} holds the earlier agent (no mission-conditioned CNN, no memory), which "
                 "this script no longer builds: train a new agent")
        if shapes != expected:
            fail(f"{args.checkpoint or args.resume} holds another network than this script's (written by another "
                 "version of it?): train a new agent")
    if args.resume is not None:
        for name in ["env_id", "num_envs", "num_steps"]:
            if getattr(args, name) != checkpoint["args"][name]:
                fail(f"--resume continues the run with its --{name.replace('_', '-')} {checkpoint['args'][name]}; to "
                     "train on something else, start a new run with --checkpoint PATH --fine-tune")
        if checkpoint["iteration"] >= args.total_timesteps // (args.num_envs * args.num_steps):
            fail(f"--resume {args.resume}: the run already did all its {checkpoint['iteration']} updates; evaluate it "
                 "with --checkpoint PATH --eval-episodes N, or pass a larger --total-timesteps to train it further")
    return checkpoint


def check_llm_args(args):
    """The LLM scripts' own flags: the adviser and its deployment, the guidance weights, the exploration bonus."""
    from llmppo.llm_flags import llm_flag_error

    if (message := llm_flag_error(args)):
        fail(message)
    if hasattr(args, "llm_coef"):  # ppo_llm_policy.py
        if args.llm_query_every < 1 or args.llm_max_queries < 0:
            fail("--llm-query-every must be at least 1 and --llm-max-queries 0 (no limit) or more")
        if args.llm_only and args.eval_episodes == 0:
            fail("--llm-only plays the adviser as the policy: add --eval-episodes N")
    if hasattr(args, "bonus_mode"):  # ppo_llm_explore.py
        if args.bonus_mode not in ("prob", "topk", "action"):
            fail(f"--bonus-mode must be prob, topk or action, got '{args.bonus_mode}'")
        if args.bonus_top_k < 1:
            fail(f"--bonus-top-k must be at least 1, got {args.bonus_top_k}")


def writable_folder_error(path, flag):
    """None if `path` is, or can be made, a folder this process can write; else one line saying why not."""
    existing = os.path.abspath(os.path.expanduser(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{flag} {path}: {existing} is a file, not a folder; pass a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{flag} {path}: {existing} is not writable; pass a folder you can write to"
    return None


# ---- checkpoints -----------------------------------------------------------------------------------------------------
def checkpoint_file(path):
    return os.path.join(path, "agent.pt") if os.path.isdir(path) else path


def read_checkpoint(path, flag):
    """The checkpoint written by save_checkpoint at `path` (a run folder means its agent.pt), or one line on what is wrong."""
    path = checkpoint_file(path)
    if not os.path.isfile(path):
        fail(f"{flag} {path} does not exist (checkpoints are written with --save-model, and by Ctrl-C)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        fail(f"cannot read {flag} {path}: {error.strerror or error}")
    except Exception:  # torch's own messages differ for each kind of damage, and some give unsafe advice
        checkpoint = None
    keys = {"model", "optimizer", "args", "global_step"}
    if not (isinstance(checkpoint, dict) and keys <= checkpoint.keys() and isinstance(checkpoint["model"], dict)
            and isinstance(checkpoint["args"], dict) and "env_id" in checkpoint["args"]):
        fail(f"{flag} {path} is not a checkpoint of these scripts (truncated or another file); pass an agent.pt "
             "written by --save-model or Ctrl-C")
    return checkpoint


def resumed_args(Args, path):
    """The flags of the run that wrote checkpoint `path`, to continue it (flags given again on the command line win)."""
    checkpoint = read_checkpoint(path, "--resume")
    script = script_name(Args)
    if "iteration" not in checkpoint or checkpoint.get("script") != script:
        fail(f"--resume {path} was not written by {script} with --resume support; train from it "
             "in a new run with --checkpoint PATH --fine-tune")
    saved = {key: value for key, value in checkpoint["args"].items() if key in Args.__dataclass_fields__}
    # --save-model: the run folder's agent.pt must not stay behind at the interruption once the run has finished
    return Args(**saved | {"resume": path, "checkpoint": None, "fine_tune": False, "save_model": True})


def save_checkpoint(run_path, agent, optimizer, args, global_step, iteration):
    """<run_path>/agent.pt: weights, optimizer, args, and what --resume needs: the updates done and the random streams.
    Returns False, with one line on stderr and nothing half-written left, when it cannot be written."""
    path = os.path.join(run_path, "agent.pt")
    os.makedirs(run_path, exist_ok=True)
    checkpoint = {"model": agent.state_dict(), "optimizer": optimizer.state_dict(), "args": vars(args)}
    numpy_state = np.random.get_state()
    rng = {"torch": torch.get_rng_state(), "random": random.getstate(),
           "numpy": [numpy_state[0], torch.as_tensor(numpy_state[1].astype(np.int64)), *numpy_state[2:]]}
    script = script_name(type(args))
    checkpoint |= {"global_step": global_step, "iteration": iteration, "script": script, "rng": rng}
    # Write a temporary file, then rename: a Ctrl-C or a full disk must not leave half of an earlier agent.pt.
    previous_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        torch.save(checkpoint, path + ".tmp")
        os.replace(path + ".tmp", path)
    except (OSError, RuntimeError) as error:  # torch reports a failed write (a full disk) as a RuntimeError
        with contextlib.suppress(OSError):
            os.remove(path + ".tmp")
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "the write failed: is the disk full?"
        print(f"error: could not write the checkpoint {path} ({reason}); free some space, the logs are kept",
              file=sys.stderr, flush=True)
        return False
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    print(f"saved checkpoint {path}")
    return True


def load_checkpoint(checkpoint, agent, optimizer, args):
    """The weights and optimizer of --checkpoint / --resume into `agent` and `optimizer`."""
    agent.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    print(f"loaded {args.checkpoint or args.resume} (trained on {checkpoint['args']['env_id']}, "
          f"{checkpoint['global_step']} frames)")


def restore_rng_state(rng):
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["random"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


# ---- Ctrl-C, the run folder, the end -----------------------------------------------------------------------------------
class StopFlag:
    """Set by Ctrl-C or SIGTERM (a job scheduler's stop request); the loop, the evaluation and the adviser check it.
    A flag rather than an exception: a KeyboardInterrupt that lands inside a __del__ (torch and TensorBoard objects
    have them) is printed and swallowed, and training would go on. Before open_run there is nothing to save: a
    Ctrl-C then exits at once with code 130."""

    def __init__(self):
        self.requested, self.run_started = False, False
        signal.signal(signal.SIGINT, self.request)
        signal.signal(signal.SIGTERM, self.request)

    def request(self, signum=None, frame=None):
        self.requested = True
        if not self.run_started:  # still loading (a model, a server's checks): nothing to save, so stop at once
            print("interrupted before the run started: nothing was written", file=sys.stderr, flush=True)
            sys.exit(130)

    def __call__(self):
        return self.requested


def open_run(args, checkpoint, stop):
    """The run folder and its TensorBoard writer, made only now, so that a run that never started (bad input, Ctrl-C
    while loading) leaves none. --resume reuses the run's folder: TensorBoard drops what it logged after its last
    update. Returns (run path, writer, the first update to do)."""
    if stop():
        print("interrupted before the run started: nothing was written", file=sys.stderr)
        sys.exit(130)
    if args.resume is not None:
        run_path = os.path.dirname(os.path.abspath(checkpoint_file(args.resume)))
    else:
        run_path = new_run_folder(os.path.join(args.run_dir, f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"))
    start_iteration = checkpoint["iteration"] if args.resume is not None else 0
    stop.run_started = True  # from here a Ctrl-C ends the loop, saves a checkpoint and flushes the logs
    try:
        writer = SummaryWriter(run_path, purge_step=start_iteration * args.batch_size + 1 if args.resume is not None else None)
    except OSError as error:  # what check_args could not foresee, e.g. a special file system
        fail(f"cannot write the run folder {run_path} ({error.strerror}): pass another --run-dir")
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])),
    )
    return run_path, writer, start_iteration


def new_run_folder(path):
    """Make `path`, or `path`-2, -3, ... when it exists: two runs started in the same second never share a folder."""
    candidate, number = path, 1
    while True:
        try:
            os.makedirs(candidate)
            return candidate
        except FileExistsError:
            number += 1
            candidate = f"{path}-{number}"
        except OSError as error:
            fail(f"cannot make the run folder {candidate} ({error.strerror}): pass another --run-dir")


def finish(args, train, stop, save, evaluate, writer, envs, global_step, what="eval", tag="eval/", details=lambda: ""):
    """The end of a run: a checkpoint (with --save-model, or after Ctrl-C) before the final evaluation, which may be cut
    short; the evaluation's scalars (<tag>episodic_return, <tag>success_rate) and its line (`what` on the env: ...,
    then `details()`); the envs and logs closed; exit code 130 after Ctrl-C, 1 when the checkpoint could not be
    written. `evaluate(video_dir)` returns (mean return, success rate, mean length), or None when Ctrl-C cut it short."""
    if stop() and train:
        print(f"\ninterrupted at {global_step} frames: saving a checkpoint and flushing logs", flush=True)
    saved = True
    if train and (args.save_model or stop()):
        saved = save()
    if args.eval_episodes > 0 and not stop():
        video_dir = os.path.join(writer.log_dir, "videos") if args.capture_video else None
        evaluation = evaluate(video_dir)
        if evaluation is None:
            saving = ": saving a checkpoint and flushing logs" if train and not args.save_model else ""
            print(f"\ninterrupted during the final evaluation{saving}", flush=True)
            if train and not args.save_model:
                saved = save()
        else:
            mean_return, success_rate, mean_length = evaluation
            writer.add_scalar(f"{tag}episodic_return", mean_return, global_step)
            writer.add_scalar(f"{tag}success_rate", success_rate, global_step)
            print(
                f"{what} on {args.env_id}: mean return {mean_return:.3f}, success rate {success_rate:.3f}, "
                f"mean length {mean_length:.1f} over {args.eval_episodes} episodes{details()}",
                flush=True,
            )
    with contextlib.suppress(Exception):  # worker processes may already be gone after Ctrl-C
        envs.close()
    writer.close()
    if stop():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Python's shutdown restores the default: a Ctrl-C would kill it
        sys.exit(130)
    if not saved:  # the run itself went through, but its checkpoint is missing
        sys.exit(1)
