"""tools/benchmark.py --launcher slurm against a real one-node Slurm cluster (tests/slurm_cluster.py), no mocks.

The cluster is installed with apt when missing and started once for this file. Where it cannot be, the tests fail
in CI (CI=true) and are skipped elsewhere, with the reason.
"""

import contextlib
import copy
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, outside_repo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark
import benchmark_slurm
import slurm_cluster
from benchmark_presets import PRESETS

BENCHMARK = os.path.join(ROOT, "tools", "benchmark.py")
# What a run computes; the same command and seed must give the same numbers wherever it runs.
SAME = ["returncode", "frames", "rolling_return", "eval_return", "eval_success", "eval_length", "eval_episodes",
        "llm_queries", "llm_uncached", "llm_fallbacks"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(slurm_cluster.cluster(str(tmp_path_factory.mktemp("slurm"))))
        except (slurm_cluster.ClusterError, OSError, subprocess.SubprocessError) as e:
            message = f"no one-node Slurm cluster for the --launcher slurm tests: {e}"
            if os.environ.get("CI", "").lower() in ("true", "1"):
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        yield cluster


def benchmark_command(out, *flags):
    return [sys.executable, BENCHMARK, "--preset", "tiny", "--workers", "2", "--out", str(out),
            "--llm-cache-dir", str(out / "cache"), *flags]


def call(command, env=None, timeout=300):
    start = time.time()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=outside_repo(), env=env)
    return result, time.time() - start


def squeue(slurm):
    return subprocess.run(["squeue", "--noheader"], capture_output=True, text=True, env=slurm["env"]).stdout.strip()


def comparable(command, out):
    """A result's command without what differs between two output folders: the folder, the checkpoint's run name."""
    return re.sub(r"__\d+/agent\.pt", "__T/agent.pt", command.replace(str(out), "OUT"))


def test_tiny_preset_on_slurm_gives_the_local_results_and_resumes(slurm, tmp_path):
    local, slurm_out = tmp_path / "local", tmp_path / "slurm"
    first, local_seconds = call(benchmark_command(local))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    options = ["--slurm-time", "10", "--slurm-mem", "1G", "--slurm-sbatch-args", "comment=tiny-test"]
    on_slurm, slurm_seconds = call(benchmark_command(slurm_out, "--launcher", "slurm", *options), env=slurm["env"])
    assert on_slurm.returncode == 0, on_slurm.stdout[-3000:] + on_slurm.stderr[-3000:]
    print(f"tiny preset: local {local_seconds:.0f} s, slurm {slurm_seconds:.0f} s")

    runs = PRESETS["tiny"]
    jobs = json.loads((slurm_out / "slurm" / "jobs.json").read_text())
    assert set(jobs) == {run["key"] for run in runs}
    for run in runs:  # each run's job id and log are printed
        assert re.search(rf"^ +{re.escape(jobs[run['key']])}  {re.escape(run['key'])}  .*\.log$", on_slurm.stdout,
                         re.M), on_slurm.stdout
        ran_here = json.loads((local / "runs" / run["key"] / "result.json").read_text())
        ran_there = json.loads((slurm_out / "runs" / run["key"] / "result.json").read_text())
        assert comparable(ran_there["command"], slurm_out) == comparable(ran_here["command"], local)
        assert {k: ran_there.get(k) for k in SAME} == {k: ran_here.get(k) for k in SAME}, run["key"]
        assert (slurm_out / "logs" / f"{run['key']}.log").read_text().startswith(ran_there["command"])
    assert f"slurm: {len(runs)} done, 0 running, 0 pending, 0 failed of {len(runs)}" in on_slurm.stdout
    sbatch_file = next((slurm_out / "slurm").glob("*_submission.sh")).read_text()
    for line in ["--time=10", "--mem=1G", "--comment=tiny-test", "--cpus-per-task=1", "--kill-on-invalid-dep=yes"]:
        assert f"#SBATCH {line}\n" in sbatch_file
    assert (slurm_out / "curves.png").stat().st_size > 1000 and "## Transfer" in (slurm_out / "results.md").read_text()

    # A second call finds every result.json and submits nothing.
    second, seconds = call(benchmark_command(slurm_out, "--launcher", "slurm", *options), env=slurm["env"])
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"skipping {len(runs)} finished" in second.stdout and "0 to run" in second.stdout
    assert "submitted" not in second.stdout and seconds < 60
    assert json.loads((slurm_out / "slurm" / "jobs.json").read_text()) == jobs and squeue(slurm) == ""


def test_a_failing_job_is_reported_with_its_log_tail_and_the_others_finish(slurm, tmp_path, monkeypatch, capsys):
    # The same launcher function the command line calls, on the tiny preset with a bad flag injected into the
    # training run that two transfer runs need: those two are not run, the zero-shot run still finishes.
    monkeypatch.setenv("SLURM_CONF", slurm["conf"])
    runs = copy.deepcopy(PRESETS["tiny"])
    bad = next(run for run in runs if run["kind"] == "train" and "--save-model" in run["flags"])
    bad["flags"].append("--no-such-flag")
    picked = [run for run in runs if bad["key"] in (run["key"], run.get("after")) or run["kind"] == "zeroshot"]
    args = benchmark.Args(preset="tiny", workers=2, out=str(tmp_path), llm_cache_dir=str(tmp_path / "cache"),
                          launcher="slurm")
    failed = benchmark_slurm.launch_slurm(args, picked, str(tmp_path))
    printed = capsys.readouterr().out

    dependents = [run["key"] for run in picked if run.get("after") == bad["key"]]
    assert set(failed) == {bad["key"], *dependents}, printed
    assert failed[bad["key"]] == str(tmp_path / "logs" / f"{bad['key']}.log")
    report = printed[printed.index(f"FAILED {bad['key']}"):]
    assert "--no-such-flag" in report.split("log:")[0]  # the log's tail: the script's own complaint
    for key in dependents:
        assert failed[key] == f"not run: {bad['key']} failed" and f"FAILED {key}: not run" in printed
    zeroshot = next(run for run in picked if run["kind"] == "zeroshot")
    assert json.loads((tmp_path / "runs" / zeroshot["key"] / "result.json").read_text())["returncode"] == 0
    assert f"0 running, 0 pending, {1 + len(dependents)} failed of {len(picked)}" in printed and squeue(slurm) == ""


def test_ctrl_c_while_waiting_cancels_the_submitted_jobs(slurm, tmp_path):
    log = tmp_path / "runner.out"
    with open(log, "w") as f:
        runner = subprocess.Popen(benchmark_command(tmp_path, "--launcher", "slurm"), stdout=f,
                                  stderr=subprocess.STDOUT, cwd=outside_repo(), env=slurm["env"])
    deadline = time.time() + 120
    while "RUNNING" not in subprocess.run(["squeue", "--noheader", "--format=%T"], capture_output=True, text=True,
                                          env=slurm["env"]).stdout and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # into the runner's waiting loop
    runner.send_signal(signal.SIGINT)
    assert runner.wait(timeout=180) == 130, log.read_text()[-3000:]
    printed = log.read_text()
    ids = json.loads((tmp_path / "slurm" / "jobs.json").read_text()).values()
    cancelled = re.search(r"Ctrl-C: cancelling the \d+ Slurm jobs of this benchmark: (.*)", printed)
    assert cancelled and set(cancelled.group(1).split()) <= set(ids), printed
    assert "none of them is in squeue any more" in printed and squeue(slurm) == ""
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in processes  # no run goes on alone


def test_launcher_input_errors_are_one_line_and_exit_2(tmp_path):
    for flags, env, expected in [
        (["--launcher", "foo"], None, "unknown --launcher 'foo'"),
        (["--launcher", "slurm"], os.environ | {"PATH": str(tmp_path)}, "needs the Slurm client commands on PATH"),
        (["--launcher", "slurm", "--slurm-sbatch-args=-A rl"], None, "long names"),
    ]:
        result, _ = call(benchmark_command(tmp_path, *flags), env=env, timeout=60)
        assert result.returncode == 2 and expected in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    # The Slurm jobs run the commands the local launcher would: --dry-run prints the same for both.
    local, _ = call(benchmark_command(tmp_path, "--dry-run"), timeout=60)
    slurm, _ = call(benchmark_command(tmp_path, "--dry-run", "--launcher", "slurm"), timeout=60)
    assert local.returncode == slurm.returncode == 0 and local.stdout == slurm.stdout and "[todo]" in local.stdout


def test_a_job_that_sbatch_refuses_is_one_line_and_exit_2(slurm, tmp_path):
    result, _ = call(benchmark_command(tmp_path, "--launcher", "slurm", "--slurm-partition", "no-such-partition"),
                     env=slurm["env"], timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error: sbatch refused a job: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "no-such-partition" in result.stderr.lower()
    assert squeue(slurm) == ""


def test_no_wait_submits_and_the_same_command_later_collects(slurm, tmp_path):
    command = benchmark_command(tmp_path, "--launcher", "slurm", "--only", "zeroshot", "--no-wait")
    submitted, _ = call(command, env=slurm["env"])
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "1 runs submitted to Slurm now" in submitted.stdout and "--no-wait: not waiting" in submitted.stdout
    jobs = json.loads((tmp_path / "slurm" / "jobs.json").read_text())
    again, _ = call(command, env=slurm["env"])  # while it runs: waits for that job, submits nothing
    assert again.returncode == 0 and json.loads((tmp_path / "slurm" / "jobs.json").read_text()) == jobs
    assert "0 runs submitted to Slurm now, 1 still queued" in again.stdout or "skipping 1 finished" in again.stdout
    deadline = time.time() + 120
    while squeue(slurm) and time.time() < deadline:
        time.sleep(1)
    collected, _ = call(command, env=slurm["env"])
    assert collected.returncode == 0 and "skipping 1 finished" in collected.stdout, collected.stdout[-3000:]
    assert "## Zero-shot" in (tmp_path / "results.md").read_text()
