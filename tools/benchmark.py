"""Run a grid of (script x variant x env x seed) as subprocesses, then plot it.

    python tools/benchmark.py --preset smoke --workers 2          # < 10 minutes on 2 cores
    python tools/benchmark.py --preset main --dry-run             # print the commands only
    python tools/plot.py benchmarks/smoke                         # redraw curves.png and results.md
    python tools/benchmark.py --preset study --workers 2          # advice accuracy study: also accuracy.png, study.md

Each run gets its own folder <out>/runs/<key>/ (passed as --run-dir) and its log <out>/logs/<key>.log. A run that
exits 0 gets <out>/runs/<key>/result.json (command, wall time, the numbers it printed) and is skipped next time, so
an interrupted or partly failed benchmark is resumed by running the same command again.

With --launcher slurm each pending run is one Slurm job (submitit: a job array, and a job after its dependency for a
run that needs another's checkpoint); the jobs run the same command into the same folders, which must be on a file
system the nodes share. --no-wait exits once they are submitted; the same command later collects them and plots.

The presets (each one's runs and flags, and its default output folder) are in tools/benchmark_presets.py, the Slurm
launcher in tools/benchmark_slurm.py; this file builds the commands, runs them locally and writes result.json.
"""

import glob
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional

import tyro

from benchmark_presets import CHECKPOINT, PRESETS, preset_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



@dataclass
class Args:
    preset: str
    """which grid of runs to run: tiny, smoke, main, transfer, study, study-tiny, ranking, ... (see tools/benchmark_presets.py)"""
    workers: int = os.cpu_count() or 1
    """runs at the same time (one subprocess each)"""
    out: Optional[str] = None
    """output folder (default: benchmarks/<preset>)"""
    llm_cache_dir: Optional[str] = None
    """LLM answer cache passed to the LLM scripts (default: theirs, ~/.cache/minigrid-llm-ppo)"""
    llm_base_url: Optional[str] = None
    """an OpenAI-compatible LLM server passed to every LLM run (--llm-base-url), so that parallel runs share it"""
    llm_model: Optional[str] = None
    """the served model's name passed with --llm-base-url (default: the server's only model)"""
    llm_api: Optional[str] = None
    """completions or chat, passed with --llm-base-url (default: the scripts' own, completions)"""
    dry_run: bool = False
    """print the commands and which runs are already done, run nothing"""
    only: Optional[str] = None
    """run only the preset's runs whose key contains this text (e.g. GoToObj); the rest can be run later"""
    launcher: str = "local"
    """where the runs run: local (subprocesses, --workers at a time) or slurm (one Slurm job each, through submitit)"""
    slurm_partition: Optional[str] = None
    """--launcher slurm: the partition to submit to (None: the cluster's default one)"""
    slurm_time: int = 60
    """--launcher slurm: time limit of each run's job, in minutes"""
    slurm_cpus_per_task: int = 1
    """--launcher slurm: CPUs for each run"""
    slurm_gpus_per_task: Optional[int] = None
    """--launcher slurm: GPUs for each run's job"""
    slurm_mem: Optional[str] = None
    """--launcher slurm: memory for each run, as sbatch --mem takes it, e.g. 8G (None: the cluster's default)"""
    slurm_array_parallelism: int = 256
    """--launcher slurm: at most this many runs of the job array at the same time"""
    slurm_sbatch_args: str = ""
    """--launcher slurm: more sbatch options, e.g. 'account=rl qos=low exclusive' (long names, the -- optional)"""
    no_wait: bool = False
    """--launcher slurm: exit once the jobs are submitted; the same command later collects them and plots"""


def fail(message):
    """Bad input: one line on stderr naming what to do, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)



def command(run, out, args):
    script = os.path.join(ROOT, run["script"])
    flags = ["--env-id", run["env_id"], "--seed", str(run["seed"]), "--run-dir", os.path.join(out, "runs", run["key"]),
             "--torch-threads", "1", *run["flags"]]
    if args.launcher == "slurm" or args.workers > 1:  # a run's envs get its cores: one beside other runs, a job's CPUs
        flags += ["--env-processes", str(args.slurm_cpus_per_task if args.launcher == "slurm" else 1)]
    if run["script"] != "ppo_baseline.py":
        if args.llm_cache_dir:
            flags += ["--llm-cache-dir", args.llm_cache_dir]
        for name in ["llm_base_url", "llm_model", "llm_api"]:  # one server shared by every run
            if args.llm_base_url and getattr(args, name):
                flags += ["--" + name.replace("_", "-"), getattr(args, name)]
        if args.workers > 1:  # llama.cpp defaults to all cores: with other runs beside it, that is ~10x slower
            flags += ["--llm-n-threads", "1"]
    if run.get("after"):
        found = glob.glob(os.path.join(out, "runs", run["after"], "*", "agent.pt"))
        checkpoint = found[0] if found else os.path.join(out, "runs", run["after"], "*", "agent.pt")
        flags = [checkpoint if flag == CHECKPOINT else flag for flag in flags]
    return [sys.executable, script, *flags]


def readable(argv):
    """The command as one would type it in the repository root."""
    return shlex.join(["python", os.path.relpath(argv[1], ROOT), *argv[2:]])


def parse_output(text):
    """The numbers a script prints: last progress line, final evaluation, the LLM adviser's summary."""
    parsed = {}
    progress = re.findall(r"frames (\d+) \| FPS (\d+) \| return ([\d.]+|n/a)", text)
    if progress:
        frames, fps, rolling = progress[-1]
        parsed |= dict(frames=int(frames), fps=int(fps), rolling_return=None if rolling == "n/a" else float(rolling))
    evals = re.findall(r"mean return ([-\d.na]+), success rate ([\d.na]+), mean length ([\d.na]+) over (\d+) episodes", text)
    if evals:
        mean_return, success, length, episodes = evals[-1]
        parsed |= dict(eval_return=float(mean_return), eval_success=float(success), eval_length=float(length),
                       eval_episodes=int(episodes))
    adviser = re.search(r"^LLM adviser .*$", text, re.M)
    if adviser:
        line = parsed["llm_summary"] = adviser.group(0)
        for name, pattern in [("llm_queries", r"(\d+) queries"), ("llm_uncached", r"(\d+) uncached"),
                              ("cache_hit_rate", r"cache hit rate ([\d.]+)"), ("ms_per_uncached_query", r"(\d+) ms per"),
                              ("llm_fallbacks", r"(\d+) fallbacks"),
                              ("agreed_with_expert", r"agreed with the expert ([\d.]+)")]:
            if match := re.search(pattern, line):
                parsed[name] = float(match.group(1))
    return parsed


def result_path(out, key):
    return os.path.join(out, "runs", key, "result.json")


_unreadable_warned = set()


def read_result(path):
    """The result.json at `path`, or None if there is none, or (with one warning) if it cannot be read: half-written
    or damaged, that run counts as not run."""
    try:
        with open(path) as f:
            result = json.load(f)
        if isinstance(result, dict) and isinstance(result.get("command"), str):
            return result
        problem = "not a result of this tool"
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        problem = f"{type(error).__name__}: {error}"
    if path not in _unreadable_warned:
        _unreadable_warned.add(path)
        print(f"warning: {path} is unreadable ({problem}); that run counts as not run", file=sys.stderr, flush=True)
    return None


def write_json(path, data):
    """Write a temporary file, then rename: a crash or Ctrl-C never leaves half of a result.json."""
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=2)
    os.replace(path + ".tmp", path)


def finished(run, out):
    """A run is finished when its result.json exists and was made with the preset's current flags; a result from
    other flags (the preset changed since) is stale and runs again."""
    result = read_result(result_path(out, run["key"]))
    if result is None:
        return False
    made_by = result["command"]
    # The checkpoint placeholder became a path in the command: compare the flags on either side of it.
    flags = shlex.join(run["flags"]).split(shlex.quote(CHECKPOINT))
    return all(part.strip() in made_by for part in flags)


def last_line(path):
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else ""


def hms(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def launch(run, out, args):
    run_dir, log_path = os.path.join(out, "runs", run["key"]), os.path.join(out, "logs", f"{run['key']}.log")
    if os.path.exists(run_dir) or os.path.exists(log_path):
        # An earlier attempt's events would mix with this one's: its folder and log are moved aside, never deleted.
        attempt = os.path.join(out, "earlier-attempts", f"{run['key']}__{int(time.time() * 1000)}")
        os.makedirs(os.path.dirname(attempt), exist_ok=True)
        for path, moved in [(run_dir, attempt), (log_path, attempt + ".log")]:
            if os.path.exists(path):
                os.rename(path, moved)
    os.makedirs(run_dir)
    argv = command(run, out, args)
    log = open(log_path, "x")
    log.write(readable(argv) + "\n\n")
    log.flush()
    # Threads for numpy/BLAS too, so that `workers` runs really use `workers` cores.
    env = os.environ | ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if args.workers > 1 else {})
    # Own session: a Ctrl-C in the terminal reaches only this runner, which forwards exactly one SIGINT (a second
    # SIGINT would make a script stop at once, without saving its checkpoint).
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
    return dict(run=run, proc=proc, log=log, argv=argv, start=time.time())


def stop(signum, frame):
    raise KeyboardInterrupt  # SIGTERM too: the runs have their own sessions and would otherwise go on alone


def finish(job, out):
    """Close the log; on success write result.json. Returns the return code."""
    job["log"].close()
    run, rc = job["run"], job["proc"].returncode
    if rc == 0:
        with open(job["log"].name) as f:
            parsed = parse_output(f.read())
        result = {k: v for k, v in run.items() if k != "flags"} | dict(
            command=readable(job["argv"]), returncode=rc, wall_seconds=round(time.time() - job["start"], 1), **parsed)
        write_json(result_path(out, run["key"]), result)
    return rc


if __name__ == "__main__":
    args = tyro.cli(Args)
    import benchmark_slurm  # the Slurm launcher; it imports this file as the module `benchmark`

    benchmark_slurm.check_launcher(args)
    if args.preset not in PRESETS:
        fail(f"unknown --preset '{args.preset}': choose one of {', '.join(PRESETS)}")
    if args.workers < 1:
        fail(f"--workers must be at least 1, got {args.workers}")
    if args.llm_cache_dir and os.path.isfile(os.path.expanduser(args.llm_cache_dir)):
        fail(f"--llm-cache-dir {args.llm_cache_dir} is a file: pass a folder (every LLM run would fail on it)")
    out_arg = args.out or preset_folder(args.preset)
    out = os.path.abspath(out_arg)
    existing = out
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not args.dry_run and not (os.path.isdir(existing) and os.access(existing, os.W_OK | os.X_OK)):
        fail(f"--out {out_arg}: {existing} is not a writable folder; pass another --out")
    runs = PRESETS[args.preset]
    keys = {run["key"] for run in runs}
    assert len(keys) == len(runs), "duplicate run keys in the preset"
    assert all(run.get("after") in keys for run in runs if run.get("after")), "a dependency is missing from the preset"
    if args.only:
        runs = [run for run in runs if args.only in run["key"] or args.only in run.get("after", "")]
        if not runs:
            fail(f"no run of preset {args.preset} has '{args.only}' in its key (see --dry-run)")
    done = [run for run in runs if finished(run, out)]
    stale = [run["key"] for run in runs if run not in done and read_result(result_path(out, run["key"]))]
    if stale:
        print(f"{len(stale)} result(s) made with other flags (the preset changed) and will run again: "
              f"{', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}", flush=True)
    pending = [run for run in runs if run not in done]
    rerun = f"python tools/benchmark.py --preset {args.preset} --out {shlex.quote(out_arg)} --workers {args.workers}"
    rerun += f" --llm-cache-dir {shlex.quote(args.llm_cache_dir)}" if args.llm_cache_dir else ""
    for name in ["llm_base_url", "llm_model", "llm_api"]:
        rerun += f" --{name.replace('_', '-')} {shlex.quote(getattr(args, name))}" if getattr(args, name) else ""
    rerun += f" --only {shlex.quote(args.only)}" if args.only else ""
    print(f"preset {args.preset}: {len(runs)} runs, skipping {len(done)} finished (result.json present), "
          f"{len(pending)} to run with {args.workers} workers; output in {out_arg}", flush=True)
    if args.dry_run:
        for run in runs:
            state = "done" if run in done else ("after " + run["after"] if run.get("after") else "todo")
            print(f"[{state}] {run['key']}\n    {readable(command(run, out, args))}")
        sys.exit(0)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)

    total, finished, failed, running = len(pending), 0, {}, {}
    start = time.time()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # also when started in the background, where SIGINT begins ignored
    if args.launcher == "slurm":  # the cluster runs them; the local loop below then has nothing left to start
        failed, pending = benchmark_slurm.launch_slurm(args, pending, out), []
        rerun = shlex.join(["python", "tools/benchmark.py", *sys.argv[1:]])
    try:
        while pending or running:
            for run in list(pending):  # start what may start: a free worker, and any dependency finished
                after = run.get("after")
                if after in failed:
                    pending.remove(run)
                    failed[run["key"]] = f"not run: {after} failed"
                    finished += 1
                    print(f"[{finished}/{total}] {run['key']}  not run ({after} failed)", flush=True)
                elif len(running) < args.workers and (not after or read_result(result_path(out, after))):
                    pending.remove(run)
                    running[run["key"]] = launch(run, out, args)
            for key, job in list(running.items()):
                if job["proc"].poll() is None:
                    continue
                del running[key]
                rc, finished = finish(job, out), finished + 1
                if rc != 0:
                    failed[key] = job["log"].name
                elapsed = time.time() - start
                eta = elapsed / finished * (total - finished)
                note = f"  FAILED: {last_line(job['log'].name)[:200]}\n    log: {job['log'].name}" if rc else ""
                print(f"[{finished}/{total}] {key}  rc {rc}  {time.time() - job['start']:.0f}s  (ETA {hms(eta)}){note}",
                      flush=True)
            time.sleep(0.2)
    except KeyboardInterrupt:
        print(f"\nCtrl-C: stopping {len(running)} running runs (each saves a checkpoint; Ctrl-C again kills them)",
              flush=True)
        for job in running.values():
            job["proc"].send_signal(signal.SIGINT)
        try:
            for job in running.values():
                job["proc"].wait(timeout=120)
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            for job in running.values():
                job["proc"].kill()
                job["proc"].wait()
        for key, job in running.items():
            print(f"    {key}: rc {finish(job, out)}, log {job['log'].name}")
        print(f"finished runs are kept; resume with:\n    {rerun}", flush=True)
        sys.exit(130)

    print(f"ran {total} runs in {hms(time.time() - start)}; {len(failed)} failed", flush=True)
    from plot import make_report  # tools/ is on sys.path: this file runs as a script from there

    text, written = make_report(out)
    if text is None:
        print("no run finished: no plots or tables written")
    else:
        print(text)
        print(f"plots and tables: {', '.join(os.path.join(out_arg, os.path.basename(path)) for path in written)}")
    print(f"regenerate: {rerun}   (finished runs are skipped)\n    plots only: python tools/plot.py {shlex.quote(out_arg)}")
    if failed:
        print("failed runs (rerun the same command to retry them):")
        for key, where in failed.items():
            print(f"    {key}: {where}")
        sys.exit(1)
