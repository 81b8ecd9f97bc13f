"""tools/benchmark.py --launcher slurm: the pending runs as Slurm jobs through submitit.

Each job calls run_job, i.e. the local launcher's launch() and finish() (tools/benchmark.py), so a run gets the same
command, log file and result.json wherever it runs. The jobs unpickle run_job from this module, which they import
with tools/ on their PYTHONPATH.
"""

import contextlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import benchmark  # the local launcher, as a module (run as a script, its `finished` is a counter, not the function)
from benchmark import finish, finished, hms, launch

SLURM_POLL_S = 5  # between squeue calls while waiting
SLURM_GRACE_S = 15  # a job gone from squeue without result.json counts as failed after this (shared file systems lag)


def usage_error(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def sbatch_options(text):
    """'account=rl --qos=low exclusive' -> {'account': 'rl', 'qos': 'low', 'exclusive': True}, submitit's form."""
    options = {}
    for word in shlex.split(text):
        name, has_value, value = word.removeprefix("--").partition("=")
        if not name or name.startswith("-"):
            raise ValueError(f"'{word}': give sbatch options by their long names, as name=value or a bare name")
        options[name] = value if has_value else True
    return options


def check_launcher(args):
    """Bad launcher options: one line on stderr, exit 2."""
    if args.launcher not in ("local", "slurm"):
        usage_error(f"unknown --launcher '{args.launcher}': choose local or slurm")
    if args.launcher == "local":
        return
    try:
        sbatch_options(args.slurm_sbatch_args)
    except ValueError as e:
        usage_error(f"--slurm-sbatch-args: {e}")
    if not args.dry_run:
        missing = [tool for tool in ("sbatch", "squeue", "scancel", "srun") if not shutil.which(tool)]
        if missing:
            usage_error(f"--launcher slurm needs the Slurm client commands on PATH; missing: {', '.join(missing)}")


def run_job(run, out, args):
    """One run inside a Slurm job. The command is built here, on the node: a transfer run's checkpoint exists now."""
    job = launch(run, out, args)
    job["proc"].wait()
    if finish(job, out) != 0:  # a failed job, so that Slurm cancels the runs that wait for its checkpoint
        raise RuntimeError(f"{run['key']} exited with {job['proc'].returncode}; log: {job['log'].name}")


def slurm_executor(args, folder):
    import submitit

    executor = submitit.SlurmExecutor(folder=folder)
    extra = sbatch_options(args.slurm_sbatch_args) | ({"mem": args.slurm_mem} if args.slurm_mem else {})
    parameters = dict(
        job_name=f"benchmark-{args.preset}", time=args.slurm_time, cpus_per_task=args.slurm_cpus_per_task,
        array_parallelism=args.slurm_array_parallelism, stderr_to_stdout=True,
        # the job's python unpickles benchmark_slurm.run_job: tools/ on its path
        setup=[f"export PYTHONPATH={shlex.quote(os.path.join(benchmark.ROOT, 'tools'))}${{PYTHONPATH:+:$PYTHONPATH}}"],
        # a run whose dependency failed is cancelled rather than left pending for ever
        additional_parameters={"kill-on-invalid-dep": "yes", **extra})
    if args.slurm_partition:
        parameters["partition"] = args.slurm_partition
    if args.slurm_gpus_per_task:
        parameters["gpus_per_task"] = args.slurm_gpus_per_task
    executor.update_parameters(**parameters)
    return executor


def slurm_queue():
    """{job id: state} of this user's jobs that Slurm still lists (pending, running, completing), array elements
    one by one; None when squeue did not answer (a busy controller: try again later)."""
    listed = subprocess.run(["squeue", "--noheader", "--array", "--me", "--format=%i|%T"], capture_output=True,
                            text=True)
    if listed.returncode != 0:
        return None
    return dict(line.strip().split("|", 1) for line in listed.stdout.splitlines() if "|" in line)


def slurm_log(out, job_id):
    return os.path.join(out, "slurm", f"{job_id}_0_log.out")  # submitit's name for task 0's stdout and stderr


def tail(path, lines=5):
    if not os.path.exists(path):
        return []
    with open(path, errors="replace") as f:
        return [line.rstrip() for line in f if line.strip()][-lines:]


def failure_note(run, job_id, out, failed):
    """Why a job failed: its run's log tail, else the Slurm job's own log (the job did not get to start the run)."""
    log = os.path.join(out, "logs", f"{run['key']}.log")
    if run.get("after") in failed:
        return f"not run: {run['after']} failed"
    lines = tail(log) if len(tail(log)) > 1 else tail(slurm_log(out, job_id))  # line 1 of a run log is its command
    where = f"    log: {log}\n    slurm log: {slurm_log(out, job_id)}"
    return "\n".join([f"job {job_id} failed:", *[f"    | {line[:200]}" for line in lines], where])


def is_finished(run, out):
    try:
        return finished(run, out)
    except (OSError, ValueError, KeyError):  # a result.json still being written
        return False


def submit_slurm(args, runs, out, ids):
    """Submit runs, filling ids (key -> job id) as it goes: the independent ones as one job array, then each run
    that needs another's checkpoint as its own job, started by Slurm once that one has succeeded."""
    executor = slurm_executor(args, os.path.join(out, "slurm"))
    job_args = benchmark.Args(**vars(args))
    waiting = {run["key"] for run in runs} | set(ids)
    first = [run for run in runs if run.get("after") not in waiting]
    if first:
        with executor.batch():
            jobs = [executor.submit(run_job, run, out, job_args) for run in first]
        ids.update({run["key"]: job.job_id for run, job in zip(first, jobs)})
    later = [run for run in runs if run.get("after") in waiting]
    while later:
        run = next(run for run in later if run["after"] in ids)  # its dependency has a job id by now
        later.remove(run)
        executor.update_parameters(dependency=f"afterok:{ids[run['after']]}")
        ids[run["key"]] = executor.submit(run_job, run, out, job_args).job_id


def launch_slurm(args, pending, out):
    """Run the pending runs as Slurm jobs and wait for them; returns {key: log or reason} of the failed ones, as the
    local loop does. A run whose job an earlier call submitted and Slurm still lists is waited for, not resubmitted."""
    if not pending:
        return {}
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    os.makedirs(os.path.join(out, "slurm"), exist_ok=True)
    record = os.path.join(out, "slurm", "jobs.json")  # key -> job id of every job submitted for this folder
    jobs = {}
    if os.path.exists(record):
        with open(record) as f:
            jobs = json.load(f)
    queue = slurm_queue()
    if queue is None:
        sys.exit("error: squeue failed: is this a Slurm cluster (is SLURM_CONF set where it needs to be)?")
    by_key = {run["key"]: run for run in pending}
    ids = {key: jobs[key] for key in by_key if jobs.get(key) in queue}  # queued or running since a call before
    for key in by_key:
        if key in jobs and key not in ids:  # like the local launcher, a rerun retries what failed
            print(f"{key}: its earlier job {jobs[key]} ended without result.json (failed or cancelled; log "
                  f"{os.path.join(out, 'logs', key + '.log')}): submitting it again", flush=True)
    adopted = dict(ids)
    again = shlex.join(["python", "tools/benchmark.py", *sys.argv[1:]])
    start, failed, gone = time.time(), {}, {}
    try:
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes a refusing sbatch's stderr: said below
                submit_slurm(args, [run for run in pending if run["key"] not in adopted], out, ids)
        except (FailedJobError, FailedSubmissionError) as e:  # e.g. an unknown partition: no half-submitted grid
            submitted = [job_id for key, job_id in ids.items() if key not in adopted]
            if submitted:
                subprocess.run(["scancel", *submitted], capture_output=True)
            usage_error(f"sbatch refused a job: {str(e).strip().splitlines()[0]}"
                        + (f" (cancelled the {len(submitted)} jobs submitted before it)" if submitted else ""))
        finally:  # what was submitted, even if sbatch refused a later job
            with open(record, "w") as f:
                json.dump(jobs | ids, f, indent=1)
        print(f"{len(ids) - len(adopted)} runs submitted to Slurm now, {len(adopted)} still queued or running from "
              f"an earlier call; job id, run, its log (each job's own: {slurm_log(out, '<job id>')}):", flush=True)
        for key, job_id in ids.items():
            print(f"    {job_id:>12}  {key}  {os.path.join(out, 'logs', key + '.log')}", flush=True)
        if args.no_wait and ids:
            print(f"--no-wait: not waiting; this command again collects the results (and plots them):\n    {again}")
            sys.exit(0)
        progress = None
        while ids:
            time.sleep(SLURM_POLL_S)
            queue = slurm_queue()
            if queue is None:
                continue
            counts = dict(done=0, running=0, pending=0)
            for key, job_id in ids.items():
                if key in failed:
                    continue
                if job_id in queue:
                    counts["running" if queue[job_id] in ("RUNNING", "COMPLETING") else "pending"] += 1
                elif is_finished(by_key[key], out):
                    counts["done"] += 1
                elif time.time() - gone.setdefault(key, time.time()) > SLURM_GRACE_S:
                    note = failure_note(by_key[key], job_id, out, failed)
                    print(f"FAILED {key}: {note}", flush=True)
                    failed[key] = note if note.startswith("not run") else os.path.join(out, "logs", f"{key}.log")
            line = (f"slurm: {counts['done']} done, {counts['running']} running, {counts['pending']} pending, "
                    f"{len(failed)} failed of {len(ids)}")
            if line != progress:
                print(f"{line}  ({hms(time.time() - start)})", flush=True)
                progress = line
            if counts["done"] + len(failed) == len(ids):
                break
    except KeyboardInterrupt:
        live = [job_id for key, job_id in ids.items() if key not in failed and not is_finished(by_key[key], out)]
        print(f"\nCtrl-C: cancelling the {len(live)} Slurm jobs of this benchmark: {' '.join(live)}", flush=True)
        if live:
            subprocess.run(["scancel", *live], capture_output=True)
        try:
            deadline, left = time.time() + 120, set(live)  # Slurm kills a job KillWait seconds after its SIGTERM
            while left and time.time() < deadline:
                time.sleep(1)
                queue = slurm_queue()
                left = left & queue.keys() if queue is not None else left
            print(f"cancelled; still in squeue: {' '.join(sorted(left))}" if left else
                  "cancelled: none of them is in squeue any more", flush=True)
        except KeyboardInterrupt:
            pass
        print(f"finished runs are kept; resume with:\n    {again}", flush=True)
        sys.exit(130)
    return failed
