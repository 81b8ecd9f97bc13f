"""One Markdown row per training run, read from its TensorBoard events.

    python tools/summarize_runs.py runs                      # every run under runs/
    python tools/summarize_runs.py runs --tag eval/episodic_return --threshold 0.9

Columns: the frame at which `--tag` first reached `--threshold` ("-" if never), its last value, the final
evaluation of the agent alone (eval/episodic_return and eval/success_rate, if the run evaluated), the last FPS, and
the wall time that tools/benchmark.py recorded in the run's result.json (for a preset's runs).
"""

import glob
import json
import os
import sys
from dataclasses import dataclass

import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from llmppo.checks import float_flag_error  # noqa: E402


@dataclass
class Args:
    run_dirs: tyro.conf.Positional[tuple[str, ...]] = ("runs",)
    """folders holding run folders (each with TensorBoard event files), or run folders themselves"""
    tag: str = "charts/rolling_return"
    """scalar to test against the threshold (charts/rolling_return: mean return of the last 100 episodes)"""
    threshold: float = 0.9
    """report the first frame at which the tag reached this value"""


def fail(message):
    """Bad input: one line on stderr naming what to do, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def read_scalars(run_path):
    events = EventAccumulator(run_path, size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def first_reach(points, threshold):
    return next((step for step, value in points if value >= threshold), None)


def run_paths(run_dirs):
    paths = []
    for run_dir in run_dirs:
        if glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
            paths.append(run_dir)
        else:
            paths += sorted(path for path in glob.glob(os.path.join(run_dir, "*")) if os.path.isdir(path))
    return paths


if __name__ == "__main__":
    args = tyro.cli(Args)
    if (message := float_flag_error(args)):
        fail(message)
    for run_dir in args.run_dirs:
        if not os.path.isdir(run_dir):
            fail(f"{run_dir} is not a folder: pass the --run-dir of the training scripts (default runs)")
    if not run_paths(args.run_dirs):
        fail(f"no runs in {', '.join(args.run_dirs)}: pass a folder of run folders, or a run folder")
    print(f"| run | frames to {args.tag} >= {args.threshold} | last {args.tag} | eval return | eval success | FPS | "
          "wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for path in run_paths(args.run_dirs):
        scalars = read_scalars(path)
        points = scalars.get(args.tag, [])
        reached = first_reach(points, args.threshold)
        last = f"{points[-1][1]:.3f}" if points else "-"
        eval_return = f"{scalars['eval/episodic_return'][-1][1]:.3f}" if "eval/episodic_return" in scalars else "-"
        eval_success = f"{scalars['eval/success_rate'][-1][1]:.2f}" if "eval/success_rate" in scalars else "-"
        fps = int(scalars["charts/SPS"][-1][1]) if "charts/SPS" in scalars else "-"
        result_path = os.path.join(os.path.dirname(path), "result.json")  # a preset's run: <out>/runs/<key>/<run>
        wall = f"{json.load(open(result_path))['wall_seconds']:.0f}" if os.path.exists(result_path) else "-"
        print(f"| {os.path.basename(path)} | {reached if reached is not None else '-'} | {last} | {eval_return} | "
              f"{eval_success} | {fps} | {wall} |")
