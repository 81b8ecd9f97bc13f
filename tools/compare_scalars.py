"""Does a change keep behaviour? Runs the same tiny runs with an earlier commit and with this working tree, then
compares every TensorBoard scalar (all tags but the timing ones) and every script's and tool's list of flags.

    python tools/compare_scalars.py --against 3a35841

The runs: the baseline; the policy script with the embedded LLM, with the expert and --distill-coef 0.5, and
--llm-only; the explore script with the LLM (listed and cyclic subgoal orders) and with the expert; and a --resume of
a run interrupted by Ctrl-C (one interrupted run, written by the earlier commit, resumed by each side). Exit 0 when
everything matches, 1 with the differences listed otherwise, 2 on bad input.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from summarize_runs import read_scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING_TAGS = {"charts/SPS", "llm/ms_per_query", "llm/ms_per_update"}
TINY = ["--num-envs", "4", "--num-steps", "32", "--num-minibatches", "2", "--update-epochs", "2", "--seed", "1"]
LLM = ["--llm-n-threads", "1"]
RUNS = {
    "baseline": ("ppo_baseline.py", ["--total-timesteps", "512", "--eval-episodes", "4"]),
    "policy-llm": ("ppo_llm_policy.py", ["--env-id", "BabyAI-GoToLocal-v0", "--total-timesteps", "256", *LLM]),
    "policy-expert-distill": ("ppo_llm_policy.py", ["--env-id", "BabyAI-GoToLocal-v0", "--advisor", "expert",
                                                    "--distill-coef", "0.5", "--total-timesteps", "512",
                                                    "--eval-episodes", "4"]),
    "policy-llm-only": ("ppo_llm_policy.py", ["--env-id", "BabyAI-GoToObj-v0", "--llm-only", "--eval-episodes", "4",
                                              *LLM]),
    "explore-llm": ("ppo_llm_explore.py", ["--env-id", "BabyAI-GoToLocal-v0", "--total-timesteps", "256", *LLM]),
    "explore-llm-cyclic": ("ppo_llm_explore.py", ["--env-id", "BabyAI-GoToLocal-v0", "--total-timesteps", "256",
                                                  "--llm-subgoal-orders", "cyclic", *LLM]),
    "explore-expert": ("ppo_llm_explore.py", ["--env-id", "BabyAI-GoToLocal-v0", "--advisor", "expert",
                                              "--total-timesteps", "512", "--eval-episodes", "4"]),
}
HELP_OF = ["ppo_baseline.py", "ppo_llm_policy.py", "ppo_llm_explore.py", "tools/advice_eval.py", "tools/benchmark.py",
           "tools/bench_fps.py", "tools/bench_server.py", "tools/plot.py", "tools/actor_vs_bot.py"]


def run(tree, script, flags, cwd, timeout=600):
    result = subprocess.run([sys.executable, os.path.join(tree, script), *flags], capture_output=True, text=True,
                            cwd=cwd, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(flags)} in {tree} exited {result.returncode}: {result.stderr[-1500:]}")
    return result


def only_run(run_dir):
    runs = os.listdir(run_dir)
    if len(runs) != 1:
        raise RuntimeError(f"expected one run in {run_dir}, found {runs}")
    return os.path.join(run_dir, runs[0])


def differences(name, before, after):
    before = {tag: values for tag, values in before.items() if tag not in TIMING_TAGS}
    after = {tag: values for tag, values in after.items() if tag not in TIMING_TAGS}
    found = [f"{name}: tags only before: {sorted(before.keys() - after.keys())}"] if before.keys() - after.keys() else []
    found += [f"{name}: tags only after: {sorted(after.keys() - before.keys())}"] if after.keys() - before.keys() else []
    for tag in sorted(before.keys() & after.keys()):
        if [value for _, value in before[tag]] != [value for _, value in after[tag]]:
            found.append(f"{name}: {tag} differs: {[v for _, v in before[tag]][:4]}... vs {[v for _, v in after[tag]][:4]}...")
        elif [step for step, _ in before[tag]] != [step for step, _ in after[tag]]:
            found.append(f"{name}: {tag} is logged at other frames")
    return found


def flags_in_help(tree, script, cwd):
    """Each `--flag` of the script's --help with the default it shows (tyro and argparse formats)."""
    text = run(tree, script, ["--help"], cwd).stdout
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return sorted(set(re.findall(r"(--[a-z][a-z0-9-]*)", text)))


def interrupted_run(tree, work):
    """A policy-script run stopped by Ctrl-C after a few updates: its folder holds agent.pt and the logs."""
    run_dir = os.path.join(work, "interrupted")
    flags = ["--advisor", "uniform", "--total-timesteps", "2048", "--log-every", "1", "--run-dir", run_dir, *TINY]
    process = subprocess.Popen([sys.executable, os.path.join(tree, "ppo_llm_policy.py"), *flags], cwd=work,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("update 3/"):
            process.send_signal(signal.SIGINT)
            break
    process.communicate(timeout=120)
    if process.returncode != 130:
        raise RuntimeError(f"the interrupted run exited {process.returncode}, not 130")
    return only_run(run_dir)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="the earlier commit (any git revision) to compare with")
    parser.add_argument("--runs", nargs="*", default=[*RUNS, "resume"], help="which runs (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder with both sides' runs")
    options = parser.parse_args()
    unknown = set(options.runs) - set(RUNS) - {"resume"}
    if unknown:
        print(f"error: unknown --runs {sorted(unknown)}; choose from {', '.join([*RUNS, 'resume'])}", file=sys.stderr)
        sys.exit(2)
    work = tempfile.mkdtemp(prefix="compare-scalars-")
    earlier = os.path.join(work, "earlier")
    os.makedirs(earlier)
    archive = subprocess.run(["git", "-C", ROOT, "archive", options.against], capture_output=True)
    if archive.returncode != 0:
        print(f"error: git cannot read --against {options.against}: {archive.stderr.decode().strip()}", file=sys.stderr)
        sys.exit(2)
    subprocess.run(["tar", "-x", "-C", earlier], input=archive.stdout, check=True)
    sides = {"before": earlier, "after": ROOT}
    found = []
    try:
        for script in HELP_OF:
            if all(os.path.exists(os.path.join(tree, script)) for tree in sides.values()):
                before, after = (flags_in_help(tree, script, work) for tree in sides.values())
                if before != after:
                    found.append(f"{script} --help: only before {sorted(set(before) - set(after))}, "
                                 f"only after {sorted(set(after) - set(before))}")
                print(f"{script} --help: {len(after)} flags", "same" if before == after else "DIFFER", flush=True)
        for name in options.runs:
            start = time.time()
            logged = {}
            if name == "resume":
                first = interrupted_run(earlier, work)
                for side, tree in sides.items():
                    copy = os.path.join(work, side, "resume", os.path.basename(first))
                    shutil.copytree(first, copy)
                    run(tree, "ppo_llm_policy.py", ["--resume", copy], work)
                    logged[side] = read_scalars(copy)
            else:
                script, flags = RUNS[name]
                for side, tree in sides.items():
                    run_dir, cache = (os.path.join(work, side, name, part) for part in ("runs", "cache"))
                    run(tree, script, [*TINY, *flags, "--run-dir", run_dir,
                                       *(["--llm-cache-dir", cache] if script != "ppo_baseline.py" else [])], work)
                    logged[side] = read_scalars(only_run(run_dir))
            new = differences(name, logged["before"], logged["after"])
            found += new
            tags = len(set(logged["after"]) - TIMING_TAGS)
            print(f"{name}: {tags} tags, {'same' if not new else 'DIFFER'} ({time.time() - start:.0f} s)", flush=True)
    finally:
        if not options.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(found) if found else f"same scalars and flags as {options.against}")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
