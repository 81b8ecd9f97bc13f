"""Issue 16, "nothing lost, nothing cryptic": the scripts and tools tried as a new user would, with the real scripts,
the real embedded model and real files. Ctrl-C never loses the agent, errors are one line, and an error path never
deletes what was already written."""

import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TINY, only_run, outside_repo, run_script, scalars

import plot
from llmppo import llama

LLM_SCRIPTS = ["ppo_llm_policy.py", "ppo_llm_explore.py"]


def start_script(*flags, script="ppo_baseline.py"):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, script), *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=outside_repo())


def finish(process, timeout=60):
    """communicate(), killing the process if it does not end in time (a failed test leaves nothing running)."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise


def wait_for_line(process, prefix, timeout=120):
    deadline = time.time() + timeout
    for line in process.stdout:
        if line.startswith(prefix) or time.time() > deadline:
            return line
    return ""


def wait_until(condition, timeout=120):
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline:
        time.sleep(0.1)


def assert_one_error_line(result, message):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr[-3000:]


def unprivileged(argv):
    """argv run without root's right to ignore file permissions (CI runs as root)."""
    if os.geteuid() != 0:
        return argv
    capsh = shutil.which("capsh") or "/usr/sbin/capsh"
    if not os.path.exists(capsh):
        pytest.skip("needs capsh (package libcap2-bin) to drop root's permission override")
    return [capsh, "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", shlex.join(argv)]


def run_unprivileged(*flags, script="ppo_baseline.py", timeout=300):
    argv = unprivileged([sys.executable, os.path.join(ROOT, script), *flags])
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=outside_repo())


def read_only(*paths):
    for path in paths:
        os.chmod(path, 0o555 if os.path.isdir(path) else 0o444)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A 2-update run of the baseline with --save-model: its agent.pt."""
    run_dir = tmp_path_factory.mktemp("runs")
    result = run_script("--total-timesteps", "256", "--save-model", "--run-dir", str(run_dir), *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return os.path.join(only_run(str(run_dir)), "agent.pt")


# ---- 1. Ctrl-C during an evaluation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGINT, signal.SIGINT], [signal.SIGTERM]])
def test_ctrl_c_during_the_final_evaluation_saves_the_trained_agent(signals, tmp_path):
    process = start_script("--total-timesteps", "256", "--eval-episodes", "5000", "--log-every", "1",
                           "--run-dir", str(tmp_path), *TINY)
    assert wait_for_line(process, "update 2/2").startswith("update 2/2")
    time.sleep(1.0)  # the evaluation of 5000 episodes is under way
    for signum in signals:  # a second Ctrl-C changes nothing: it still saves; SIGTERM is a scheduler's Ctrl-C
        process.send_signal(signum)
        time.sleep(0.2)
    stdout, stderr = finish(process, 60)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert "interrupted during the final evaluation" in stdout
    checkpoint = torch.load(os.path.join(only_run(str(tmp_path)), "agent.pt"), weights_only=True)
    assert checkpoint["global_step"] == 256 and checkpoint["iteration"] == 2


def test_ctrl_c_during_a_periodic_evaluation_saves_the_agent(tmp_path):
    process = start_script("--total-timesteps", "1024", "--eval-every", "1", "--eval-episodes", "5000",
                           "--run-dir", str(tmp_path), *TINY)
    wait_until(lambda: glob.glob(str(tmp_path / "*" / "events.out.tfevents.*")))
    time.sleep(2.0)  # one update (128 frames) is done long before; the first evaluation of 5000 episodes is not
    process.send_signal(signal.SIGINT)
    stdout, stderr = finish(process, 60)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    checkpoint = torch.load(os.path.join(only_run(str(tmp_path)), "agent.pt"), weights_only=True)
    assert checkpoint["iteration"] == 1


def test_ctrl_c_during_the_llm_queries_of_a_rollout_stops_within_one_query(tmp_path):
    """No cache, 32 GoToLocal envs: the first step alone asks SmolLM2 about 32 different states. A Ctrl-C under way
    skips the queries not yet asked (no advice), and the run saves at once, without the partial rollout."""
    process = start_script("--env-id", "BabyAI-GoToLocal-v0", "--advisor", "llm", "--llm-cache-dir", "none",
                           "--num-envs", "32", "--num-steps", "4", "--num-minibatches", "2", "--total-timesteps", "128",
                           "--run-dir", str(tmp_path), script="ppo_llm_policy.py")
    wait_until(lambda: glob.glob(str(tmp_path / "*" / "events.out.tfevents.*")))
    time.sleep(2.0)
    process.send_signal(signal.SIGINT)
    stdout, stderr = finish(process, 120)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert "interrupted at 32 frames" in stdout, stdout[-3000:]
    checkpoint = torch.load(os.path.join(only_run(str(tmp_path)), "agent.pt"), weights_only=True)
    assert checkpoint["iteration"] == 0
    summary = re.search(r"(\d+) queries, (\d+) uncached, (\d+) without advice", stdout)
    assert summary, stdout[-3000:]
    queries, uncached, skipped = map(int, summary.groups())
    assert queries == 32 and 0 < uncached < 32 and uncached + skipped == 32, summary.group(0)


def test_ctrl_c_while_evaluating_a_checkpoint_exits_130_and_keeps_it(small_checkpoint, tmp_path):
    before = open(small_checkpoint, "rb").read()
    process = start_script("--checkpoint", small_checkpoint, "--eval-episodes", "5000", "--run-dir", str(tmp_path))
    assert wait_for_line(process, "loaded ").startswith("loaded ")
    time.sleep(1.5)
    process.send_signal(signal.SIGINT)
    stdout, stderr = finish(process, 60)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert open(small_checkpoint, "rb").read() == before


# ---- 2. a read-only cache is used, never wiped -------------------------------------------------------------------
def test_a_read_only_cache_is_used_read_only_and_left_as_it_was(tmp_path):
    cache = tmp_path / "cache"
    flags = ["--advisor", "llm", "--total-timesteps", "64", "--num-envs", "2", "--num-steps", "32",
             "--num-minibatches", "2", "--update-epochs", "1", "--llm-n-threads", "2", "--llm-cache-dir", str(cache)]
    first = run_script(*flags, "--run-dir", str(tmp_path / "runs1"), script="ppo_llm_policy.py")
    assert first.returncode == 0, first.stderr[-3000:]
    database = cache / "llm-advice-v1" / "cache.db"
    written = database.read_bytes()
    # The sqlite file read-only, then the whole cache folder: every answer still comes from it, nothing changes.
    for step, paths in enumerate([[database], [database.parent, cache]]):
        read_only(*paths)
        try:
            again = run_unprivileged(*flags, "--run-dir", str(tmp_path / f"runs{step + 2}"), script="ppo_llm_policy.py")
        finally:
            for path in paths:
                os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)
        assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
        assert "using it read-only" in again.stderr
        assert "64 queries, 0 uncached" in again.stdout, again.stdout[-2000:]
        assert database.read_bytes() == written


def test_an_unwritable_cache_folder_is_skipped_with_a_warning(tmp_path):
    parent = tmp_path / "readonly"
    parent.mkdir()
    read_only(parent)
    try:
        result = run_unprivileged("--advisor", "llm", "--llm-only", "--env-id", "BabyAI-GoToObj-v0", "--eval-episodes",
                                  "1", "--num-envs", "1", "--llm-n-threads", "2", "--llm-cache-dir", str(parent / "c"),
                                  "--run-dir", str(tmp_path / "runs"), script="ppo_llm_policy.py")
    finally:
        os.chmod(parent, 0o755)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "running without a cache" in result.stderr and "as the policy" in result.stdout


# ---- 3. outputs under the run folder, checked before training -------------------------------------------------------
def test_an_unwritable_run_dir_is_refused_before_any_work(tmp_path):
    read_only(tmp_path)
    try:
        result = run_unprivileged("--total-timesteps", "256", "--run-dir", str(tmp_path / "runs"), *TINY)
    finally:
        os.chmod(tmp_path, 0o755)
    assert_one_error_line(result, "is not writable")
    assert not os.listdir(tmp_path)


# ---- 4. envs with fewer than MiniGrid's 7 actions -----------------------------------------------------------------
@pytest.mark.parametrize("script, flags", [
    ("ppo_llm_policy.py", ["--advisor", "uniform"]),
    ("ppo_llm_policy.py", ["--advisor", "llm"]),
    ("ppo_llm_explore.py", ["--advisor", "uniform", "--bonus-mode", "action"]),
])
def test_an_env_with_three_actions_works_with_every_script(script, flags, tmp_path):
    result = run_script("--env-id", "MiniGrid-Dynamic-Obstacles-5x5-v0", *flags, "--total-timesteps", "256",
                        "--eval-episodes", "2", "--run-dir", str(tmp_path / "runs"), "--llm-cache-dir",
                        str(tmp_path / "cache"), "--llm-n-threads", "2", *TINY, script=script)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "over 2 episodes" in result.stdout


# ---- 5. --resume continues the same run ---------------------------------------------------------------------------
def test_resume_continues_the_run_its_schedules_and_folder(tmp_path):
    flags = ["--advisor", "uniform", "--total-timesteps", "2048", "--log-every", "1", "--run-dir", str(tmp_path), *TINY]
    process = start_script(*flags, script="ppo_llm_policy.py")
    wait_for_line(process, "update 3/16")
    process.send_signal(signal.SIGINT)
    _, stderr = finish(process, 60)
    assert process.returncode == 130, stderr[-3000:]
    run_path = only_run(str(tmp_path))
    done = torch.load(os.path.join(run_path, "agent.pt"), weights_only=True)["iteration"]
    assert 3 <= done < 16

    resumed = run_script("--resume", run_path, script="ppo_llm_policy.py")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert only_run(str(tmp_path)) == run_path and f"update {done + 1}/16 " in resumed.stdout
    assert "frames 2048" in resumed.stdout
    logged = scalars(run_path)
    # One point per update over both processes, on the schedules of the original 16 updates (LR and LLM weight).
    assert logged["charts/learning_rate"] == pytest.approx([2e-3 * (1 - i / 16) for i in range(16)], rel=1e-5)
    assert logged["llm/coef"] == pytest.approx([0.5 * max(0.0, 1 - i / 4) for i in range(16)], rel=1e-5)
    assert torch.load(os.path.join(run_path, "agent.pt"), weights_only=True)["iteration"] == 16

    finished = run_script("--resume", run_path, script="ppo_llm_policy.py")
    assert_one_error_line(finished, "--checkpoint PATH --eval-episodes N, or pass a larger --total-timesteps")
    other_env = run_script("--resume", run_path, "--env-id", "BabyAI-GoToObj-v0", script="ppo_llm_policy.py")
    assert_one_error_line(other_env, "--checkpoint PATH --fine-tune")


# ---- 6. tools/advice_eval.py on a warm cache --------------------------------------------------------------------
def test_advice_eval_runs_twice_on_the_same_cache(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "tools", "advice_eval.py"), "--env-ids", "BabyAI-GoToObj-v0",
               "--num-states", "2", "--subgoal-states", "3", "--subgoal-env-ids", "BabyAI-KeyCorridorS3R1-v0",
               "--llm-n-threads", "2", "--llm-cache-dir", str(tmp_path)]
    for attempt in range(2):
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=outside_repo())
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "| llm | " in result.stdout and "all cached" in result.stdout and "| llm, cyclic order" in result.stdout


# ---- 7. a damaged result.json --------------------------------------------------------------------------------------
def benchmark_runs():
    import benchmark  # tools/ is on sys.path

    return benchmark.PRESETS["tiny"]


def test_a_damaged_result_file_counts_as_not_run(tmp_path):
    key = benchmark_runs()[0]["key"]
    (tmp_path / "runs" / key).mkdir(parents=True)
    (tmp_path / "runs" / key / "result.json").write_text('{"command": "python ppo_baseline.py --tot')  # half-written
    dry = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--preset", "tiny", "--out",
                          str(tmp_path), "--dry-run"], capture_output=True, text=True, timeout=60, cwd=outside_repo())
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "unreadable" in dry.stderr and f"[todo] {key}" in dry.stdout and "Traceback" not in dry.stderr
    plotted = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "plot.py"), str(tmp_path)],
                             capture_output=True, text=True, timeout=120, cwd=outside_repo())
    # No run left to report: one line and exit 2, nothing replaced (issue 33; tests/test_reliability.py)
    assert plotted.returncode == 2 and "unreadable" in plotted.stderr, plotted.stderr[-3000:]
    assert "nothing was replaced" in plotted.stderr and not (tmp_path / "results.md").exists()


# ---- 8. LLM flags: checked before any work, identically in both scripts ---------------------------------------------
@pytest.fixture(scope="module")
def broken_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    data = open(llama.default_model_path(), "rb").read()
    (folder / "truncated.gguf").write_bytes(data[: len(data) // 2])
    (folder / "notes.gguf").write_text("not a model")
    return folder


@pytest.mark.parametrize("flags, message", [
    (["--llm-temperature", "0"], "--llm-temperature must be a positive number"),
    (["--llm-n-threads", "0"], "--llm-n-threads must be at least 1"),
    (["--llm-n-ctx", "16"], "--llm-n-ctx must be between"),
    (["--llm-model-path", "{models}/truncated.gguf"], "not within the file bounds"),
    (["--llm-model-path", "{models}"], "is a folder"),
    (["--llm-cache-dir", "{models}/notes.gguf"], "--llm-cache-dir"),
])
def test_bad_llm_flags_give_the_same_line_in_both_scripts(flags, message, broken_models, tmp_path):
    flags = [flag.format(models=broken_models) for flag in flags]
    lines = []
    for script in LLM_SCRIPTS:
        result = run_script(*flags, "--run-dir", str(tmp_path / "runs"), script=script)
        assert_one_error_line(result, message)
        assert not os.path.exists(tmp_path / "runs")  # nothing started
        lines.append(result.stderr)
    assert lines[0] == lines[1]


# ---- 9. tools/benchmark.py: --workers 0, and a SIGINT while in the background ----------------------------------------
def test_benchmark_refuses_zero_workers_and_stops_on_a_background_sigint(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--preset", "tiny", "--out", str(tmp_path)]
    zero = subprocess.run(command + ["--workers", "0"], capture_output=True, text=True, timeout=60, cwd=outside_repo())
    assert_one_error_line(zero, "--workers must be at least 1")
    # A folder left by an earlier attempt of a run is moved aside when the run starts again, never deleted.
    key = next(run["key"] for run in benchmark_runs() if "DoorKey-5x5__baseline" in run["key"])
    (tmp_path / "runs" / key).mkdir(parents=True)
    (tmp_path / "runs" / key / "agent.pt").write_bytes(b"an earlier attempt's checkpoint")
    # A shell starts a background job (`cmd &`) with SIGINT ignored; a scheduler's `kill -INT` must still stop it.
    process = subprocess.Popen(command + ["--workers", "1", "--only", "DoorKey-5x5__baseline"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=outside_repo(),
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert wait_for_line(process, "preset tiny").startswith("preset tiny")
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    stdout, stderr = finish(process, 120)
    assert process.returncode == 130 and "finished runs are kept" in stdout, stdout[-2000:] + stderr[-2000:]
    kept = glob.glob(str(tmp_path / "earlier-attempts" / f"{key}__*" / "agent.pt"))
    assert len(kept) == 1 and open(kept[0], "rb").read() == b"an earlier attempt's checkpoint"


# ---- 10 and 11: one line, exit 2, nothing left behind -----------------------------------------------------------
def write_bad_checkpoints(folder):
    data = open(os.path.join(folder, "good.pt"), "rb").read()
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    (folder / "random.pt").write_bytes(os.urandom(4096))
    (folder / "empty.pt").write_bytes(b"")
    (folder / "args.pt").write_text(json.dumps({"model": {}}))
    torch.save({"weights": torch.zeros(3)}, folder / "nomodel.pt")


@pytest.mark.parametrize("flags, message", [
    (["--total-timesteps", "100"], "less than one update"),
    (["--checkpoint", "{ckpt}/truncated.pt", "--eval-episodes", "2"], "is not a checkpoint of these scripts"),
    (["--checkpoint", "{ckpt}/random.pt", "--eval-episodes", "2"], "is not a checkpoint of these scripts"),
    (["--checkpoint", "{ckpt}/empty.pt", "--eval-episodes", "2"], "is not a checkpoint of these scripts"),
    (["--checkpoint", "{ckpt}/args.pt", "--eval-episodes", "2"], "is not a checkpoint of these scripts"),
    (["--checkpoint", "{ckpt}/nomodel.pt", "--eval-episodes", "2"], "is not a checkpoint of these scripts"),
    (["--checkpoint", "{ckpt}/good.pt", "--eval-episodes", "2", "--env-id", "MiniGrid-Dynamic-Obstacles-5x5-v0"],
     "was trained on an env with 7 actions"),
    (["--resume", "{ckpt}/good.pt", "--checkpoint", "{ckpt}/good.pt"], "use one of them"),
    (["--run-dir", "{ckpt}/good.pt"], "is a file, not a folder"),
])
def test_bad_input_gives_one_line_and_leaves_nothing(flags, message, small_checkpoint, tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    shutil.copy(small_checkpoint, folder / "good.pt")
    write_bad_checkpoints(folder)
    flags = [flag.format(ckpt=folder) for flag in flags]
    if "--run-dir" not in flags:
        flags += ["--run-dir", str(tmp_path / "runs")]
    result = run_script(*flags, *TINY)
    assert_one_error_line(result, message)
    assert "weights_only" not in result.stderr and not os.path.exists(tmp_path / "runs")


def test_an_env_that_needs_a_missing_dependency_is_refused_up_front(tmp_path):
    import importlib.util

    if importlib.util.find_spec("imageio") is not None:
        pytest.skip("imageio is installed: the WFC envs work here")
    result = run_script("--env-id", "MiniGrid-WFC-MazeSimple-v0", "--run-dir", str(tmp_path / "runs"), *TINY)
    assert_one_error_line(result, "pip install")
    assert not os.path.exists(tmp_path / "runs")


@pytest.mark.parametrize("tool, flags, message", [
    ("bench_fps.py", ["--env-id", "MiniGrid-DorKey-5x5-v0"], "did you mean MiniGrid-DoorKey-5x5-v0"),
    ("advice_eval.py", ["--env-ids", "BabyAI-GoToLocl-v0"], "did you mean BabyAI-GoToLocal-v0"),
    ("advice_eval.py", ["--num-states", "0"], "--num-states"),
    ("advice_eval.py", ["--llm-n-threads", "0"], "--llm-n-threads must be at least 1"),
    ("summarize_runs.py", ["{tmp}/no-such-folder"], "is not a folder"),
])
def test_tools_give_one_line_for_bad_input(tool, flags, message, tmp_path):
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), *flags], capture_output=True,
                            text=True, timeout=120, cwd=outside_repo())
    assert_one_error_line(result, message)


def test_the_study_table_never_prints_nan_for_a_zero_baseline():
    entry = {"base_late": [0.0, 0.0], "points": {("policy", 0.5): {"late": [0.0, 0.1]}}}
    sentence = plot.worst_case(entry, "policy")
    assert "nan" not in sentence and "baseline at 0" in sentence
