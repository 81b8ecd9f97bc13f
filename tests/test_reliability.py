"""Issue 33, "nothing lost, nothing leaked, nothing cryptic (2)": faults found by trying the scripts as a new user
would, each checked with the real scripts as subprocesses, real files and, for the server faults, a small real HTTP
server on 127.0.0.1. Each test failed on the code before its fix."""

import dataclasses
import re
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, TINY, only_run, outside_repo, run_script
from llmppo import runs


def assert_one_error_line(result, message):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr[-3000:]


# ---- 1. every float flag: finite and in its range -------------------------------------------------------------------
@pytest.mark.parametrize("script, flag, value", [
    ("ppo_baseline.py", "--learning-rate", "nan"),
    ("ppo_baseline.py", "--learning-rate", "inf"),
    ("ppo_baseline.py", "--max-grad-norm", "nan"),
    ("ppo_baseline.py", "--vf-coef", "nan"),
    ("ppo_baseline.py", "--clip-coef", "nan"),
    ("ppo_baseline.py", "--ent-coef", "-1"),
    ("ppo_llm_policy.py", "--llm-coef", "nan"),
    ("ppo_llm_explore.py", "--bonus-coef", "inf"),
])
def test_a_float_flag_that_is_not_a_finite_number_in_range_gets_one_line(script, flag, value, tmp_path):
    result = run_script(flag, value, "--advisor" if script != "ppo_baseline.py" else "--seed",
                        "uniform" if script != "ppo_baseline.py" else "1", "--run-dir", str(tmp_path / "runs"), *TINY,
                        script=script)
    assert_one_error_line(result, f"{flag} must be")
    assert not os.path.exists(tmp_path / "runs")


def script_args(path):
    """The Args dataclass of a script or tool, read from its source without running its main block."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3] + "_for_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Args


@pytest.mark.parametrize("path", ["ppo_baseline.py", "ppo_llm_policy.py", "ppo_llm_explore.py", "tools/advice_eval.py",
                                  "tools/plot.py", "tools/summarize_runs.py"])
def test_every_float_flag_of_every_script_and_tool_refuses_nan_and_infinity(path):
    Args = script_args(os.path.join(ROOT, path))
    float_fields = [field for field in dataclasses.fields(Args) if field.type in (float, "float")
                    or "float" in str(field.type)]
    assert float_fields or path.endswith(("plot.py", "summarize_runs.py"))
    defaults = {field.name: None if field.default is dataclasses.MISSING else field.default
                for field in dataclasses.fields(Args)}  # a positional field without a default: None here
    for field in float_fields:
        for bad in (float("nan"), float("inf"), float("-inf")):
            args = Args.__new__(Args)
            for name, value in defaults.items():
                object.__setattr__(args, name, value)
            object.__setattr__(args, field.name, bad)
            message = runs.float_flag_error(args)
            assert message and message.startswith(f"--{field.name.replace('_', '-')} must be"), (field.name, message)


@pytest.mark.parametrize("tool, flags", [
    ("plot.py", ["{tmp}", "--threshold", "nan"]),
    ("summarize_runs.py", ["{tmp}", "--threshold", "inf"]),
    ("advice_eval.py", ["--llm-max-rps", "nan"]),
])
def test_tools_refuse_a_float_flag_that_is_not_finite(tool, flags, tmp_path):
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), *flags], capture_output=True,
                            text=True, timeout=120, cwd=outside_repo())
    assert_one_error_line(result, "must be")


# ---- 2. --seed out of numpy's range ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", ["4294967296", "-1"])
def test_a_seed_out_of_range_gets_one_line_about_the_seed(seed, tmp_path):
    result = run_script("--seed", seed, "--run-dir", str(tmp_path / "runs"), *TINY)
    assert_one_error_line(result, "--seed must be between 0 and 4294967295")
    assert not os.path.exists(tmp_path / "runs")


# ---- 6. Ctrl-C before the run starts: exit 130, no traceback ---------------------------------------------------------
@pytest.mark.parametrize("script", ["ppo_baseline.py", "ppo_llm_policy.py"])
def test_ctrl_c_while_the_script_loads_exits_130_without_a_traceback(script, tmp_path):
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, script), "--run-dir", str(tmp_path / "runs")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=outside_repo())
    time.sleep(0.5)  # torch and gymnasium are still being imported
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert not os.path.exists(tmp_path / "runs")


# The signal lands inside library code as it loads: a class attribute's __set_name__ (Python wraps an exception raised
# there into a RuntimeError) and a __del__ (Python prints an exception raised there and goes on).
CTRL_C_INSIDE = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import llmppo.ctrl_c
class Interrupts:
    def __set_name__(self, owner, name):
        os.kill(os.getpid(), signal.SIGINT)
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
if sys.argv[2] == "__set_name__":
    class Loading:
        attribute = Interrupts()
else:
    Interrupts()
print("still loading after the Ctrl-C")
"""


@pytest.mark.parametrize("where", ["__set_name__", "__del__"])
def test_ctrl_c_inside_library_code_while_loading_exits_130_without_a_traceback(where):
    """A Ctrl-C in CI landed in torch's import inside a __set_name__: a RuntimeError's traceback and exit code 1."""
    result = subprocess.run([sys.executable, "-c", CTRL_C_INSIDE, ROOT, where], capture_output=True, text=True,
                            timeout=60, cwd=outside_repo())
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "still loading" not in result.stdout, result.stderr[-3000:]


# ---- 9. two runs started in the same second never share a folder -----------------------------------------------------
def test_a_run_never_writes_into_an_existing_run_folder(tmp_path):
    # The folders that runs started in the next minute would be named after, each with a file of its own.
    now = int(time.time())
    taken = [tmp_path / f"MiniGrid-DoorKey-5x5-v0__ppo_baseline__1__{second}" for second in range(now, now + 60)]
    for folder in taken:
        folder.mkdir()
        (folder / "events.out.tfevents.earlier").write_text("an earlier run's log")
    result = run_script("--total-timesteps", "128", "--save-model", "--run-dir", str(tmp_path), *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    new = sorted(set(glob.glob(str(tmp_path / "*"))) - {str(folder) for folder in taken})
    assert len(new) == 1 and new[0].endswith("-2") and os.path.isfile(os.path.join(new[0], "agent.pt")), new
    assert all(os.listdir(folder) == ["events.out.tfevents.earlier"] for folder in taken)


# ---- 10. a full disk at the checkpoint ---------------------------------------------------------------------------------
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a device whose writes fail as on a full disk")
def test_a_full_disk_at_the_checkpoint_gives_one_line_keeps_the_old_one_and_still_evaluates(tmp_path):
    first = run_script("--total-timesteps", "128", "--save-model", "--eval-episodes", "2", "--run-dir", str(tmp_path),
                       *TINY)
    assert first.returncode == 0, first.stderr[-3000:]
    run_path = only_run(str(tmp_path))
    checkpoint = os.path.join(run_path, "agent.pt")
    before = open(checkpoint, "rb").read()
    os.symlink("/dev/full", checkpoint + ".tmp")  # every write into the temporary file fails with "no space left"
    resumed = run_script("--resume", run_path, "--total-timesteps", "256")
    assert resumed.returncode == 1 and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    lines = resumed.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not write the checkpoint" in lines[0] and checkpoint in lines[0], lines
    assert not os.path.lexists(checkpoint + ".tmp") and open(checkpoint, "rb").read() == before
    assert "over 2 episodes" in resumed.stdout  # the final evaluation still ran
    shutil.rmtree(run_path)


# ---- 11. a benchmark re-run keeps the interrupted runs' logs beside their folders --------------------------------------
def test_a_benchmark_rerun_moves_an_earlier_attempts_log_aside_with_its_folder(tmp_path):
    import benchmark  # tools/ is on sys.path

    key = next(run["key"] for run in benchmark.PRESETS["tiny"] if "DoorKey-5x5__baseline" in run["key"])
    (tmp_path / "runs" / key).mkdir(parents=True)
    (tmp_path / "runs" / key / "agent.pt").write_bytes(b"the interrupted attempt's checkpoint")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / f"{key}.log").write_text("the interrupted attempt's log\n")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--preset", "tiny", "--out",
                             str(tmp_path), "--workers", "1", "--only", "DoorKey-5x5__baseline"],
                            capture_output=True, text=True, timeout=600, cwd=outside_repo())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    folders = glob.glob(str(tmp_path / "earlier-attempts" / f"{key}__*[0-9]"))
    assert len(folders) == 1 and open(os.path.join(folders[0], "agent.pt"), "rb").read().startswith(b"the interrupted")
    assert open(folders[0] + ".log").read() == "the interrupted attempt's log\n"
    assert "the interrupted attempt" not in (tmp_path / "logs" / f"{key}.log").read_text()


# ---- 12. tools/plot.py on a folder whose runs cannot be read replaces nothing ---------------------------------------
def test_plot_with_no_readable_run_gives_one_line_and_keeps_the_report(tmp_path):
    (tmp_path / "runs" / "a-run").mkdir(parents=True)
    (tmp_path / "runs" / "a-run" / "result.json").write_text('{"command": "python ppo_baseline.py --tot')  # half-written
    (tmp_path / "results.md").write_text("the committed report\n")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "plot.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=120, cwd=outside_repo())
    assert result.returncode == 2 and "wrote" not in result.stdout, result.stdout[-2000:]
    errors = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "nothing was replaced" in errors[0], result.stderr[-2000:]
    assert (tmp_path / "results.md").read_text() == "the committed report\n"
    assert not (tmp_path / "curves.png").exists()


# ---- a misbehaving OpenAI-compatible server: a small real HTTP server, started and stopped by its PID -------------------
def free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def misbehaving_server(tmp_path):
    """start(mode) -> base URL of tests/misbehaving_server.py in that mode; every server is stopped by its PID."""
    processes = []

    def start(mode):
        import socket

        port = free_port()
        process = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "misbehaving_server.py"), mode,
                                    str(port), str(tmp_path / "models-asked")])
        processes.append(process)
        deadline = time.time() + 30
        while time.time() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return f"http://127.0.0.1:{port}/v1"
            time.sleep(0.05)
        raise RuntimeError(f"the misbehaving server ({mode}) did not start")

    yield start
    for process in processes:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


def run_served(base_url, *flags, tmp_path, env=None, script="ppo_llm_policy.py"):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), "--llm-base-url", base_url, "--total-timesteps",
                           "128", "--run-dir", str(tmp_path / "runs"), "--llm-cache-dir", str(tmp_path / "cache"),
                           *TINY, *flags], capture_output=True, text=True, timeout=300, cwd=outside_repo(),
                          env=env)


# ---- 3. a malformed answer: one line at the start, a counted fallback mid-run -----------------------------------------
@pytest.mark.parametrize("mode", ["models-null", "models-int"])
def test_a_malformed_model_list_at_the_start_gives_one_line(mode, misbehaving_server, tmp_path):
    result = run_served(misbehaving_server(mode), tmp_path=tmp_path)
    assert_one_error_line(result, "lists no model at /models")
    assert not os.path.exists(tmp_path / "runs")


@pytest.mark.parametrize("mode", ["huge-usage", "nan"])
def test_malformed_answers_mid_run_are_counted_fallbacks_and_the_run_ends_well(mode, misbehaving_server, tmp_path):
    result = run_served(misbehaving_server(mode), "--save-model", tmp_path=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert os.path.isfile(os.path.join(only_run(str(tmp_path / "runs")), "agent.pt"))
    fallbacks = int(re.search(r"(\d+) fallbacks", result.stdout).group(1))
    assert (fallbacks > 0) == (mode == "nan"), result.stdout[-2000:]


# ---- 8. only valid advice is cached ------------------------------------------------------------------------------------
def test_a_garbage_answer_is_not_cached_so_a_healthy_server_is_asked_again(misbehaving_server, tmp_path):
    garbage = run_served(misbehaving_server("nan"), tmp_path=tmp_path)
    assert garbage.returncode == 0 and re.search(r"[1-9]\d* fallbacks", garbage.stdout), garbage.stdout[-2000:]
    shutil.rmtree(tmp_path / "runs")
    healthy = run_served(misbehaving_server("healthy"), tmp_path=tmp_path)
    assert healthy.returncode == 0, healthy.stderr[-3000:]
    assert " 0 fallbacks" in healthy.stdout, healthy.stdout[-2000:]


# ---- 4. the API key is never printed, whatever it holds ----------------------------------------------------------------
@pytest.mark.parametrize("key, message", [("sk-SECRET-4711\r\n", "ends with a space or a line break"),
                                          ("sk-SECRET-4711-é", "characters an HTTP header cannot carry")])
def test_a_key_with_a_line_break_or_non_ascii_is_refused_without_printing_it(key, message, misbehaving_server,
                                                                            tmp_path):
    env = os.environ | {"MY_LLM_KEY": key}
    start = time.time()
    result = run_served(misbehaving_server("healthy"), "--llm-api-key-env", "MY_LLM_KEY", tmp_path=tmp_path, env=env)
    assert_one_error_line(result, message)
    assert "SECRET" not in result.stderr + result.stdout and time.time() - start < 60


# ---- 5. a plain web server's 404 page is not pasted into the error -----------------------------------------------------
def test_a_404_page_gives_one_line_with_the_status_and_what_to_check(misbehaving_server, tmp_path):
    result = run_served(misbehaving_server("html-404"), tmp_path=tmp_path)
    assert_one_error_line(result, "HTTP 404")
    assert "<" not in result.stderr and "--llm-base-url" in result.stderr


# ---- 6. Ctrl-C during the up-front server check -------------------------------------------------------------------------
def test_ctrl_c_during_the_server_check_exits_130_at_once_without_a_traceback(misbehaving_server, tmp_path):
    base_url = misbehaving_server("slow-models")
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "ppo_llm_policy.py"), "--llm-base-url", base_url,
                                "--run-dir", str(tmp_path / "runs")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=outside_repo())
    deadline = time.time() + 60
    while not (tmp_path / "models-asked").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    start = time.time()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr and time.time() - start < 10, stderr[-3000:]
    assert not os.path.exists(tmp_path / "runs")


# ---- 7. a damaged cache is moved aside, never deleted -------------------------------------------------------------------
def test_a_damaged_cache_is_moved_aside_with_what_lies_beside_it(tmp_path):
    folder = tmp_path / "cache" / "llm-advice-v1"
    folder.mkdir(parents=True)
    (folder / "cache.db").write_bytes(b"\x00garbage, not sqlite\xff" * 512)
    (folder / "notes.txt").write_text("a file of the user's")
    result = run_script("--advisor", "llm", "--llm-n-threads", "2", "--total-timesteps", "128", "--llm-cache-dir",
                        str(tmp_path / "cache"), "--run-dir", str(tmp_path / "runs"), *TINY, script="ppo_llm_policy.py")
    assert result.returncode == 0 and "moved it to" in result.stderr, result.stderr[-3000:]
    moved = glob.glob(str(tmp_path / "cache" / "llm-advice-v1.damaged-*"))
    assert len(moved) == 1 and open(os.path.join(moved[0], "notes.txt")).read() == "a file of the user's"
    assert open(os.path.join(moved[0], "cache.db"), "rb").read().startswith(b"\x00garbage")
    assert (folder / "cache.db").exists()  # the new cache


# ---- 13. tools/bench_server.py: counts of 0 ------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--num-states", "--rounds"])
def test_bench_server_refuses_zero_counts(flag):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench_server.py"), flag, "0"],
                            capture_output=True, text=True, timeout=120, cwd=outside_repo())
    assert_one_error_line(result, f"{flag} must be at least 1")


# ---- 14. tools/advice_eval.py: outputs checked first; --env-ids alone is the subgoal table's levels too ---------------
def test_advice_eval_checks_its_output_before_the_evaluation(tmp_path):
    start = time.time()
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "advice_eval.py"), "--output",
                             str(tmp_path / "no-such-folder" / "report.md")], capture_output=True, text=True,
                            timeout=300, cwd=outside_repo())
    assert_one_error_line(result, "does not exist")
    assert time.time() - start < 30


def test_advice_eval_with_env_ids_alone_ranks_subgoals_on_those_levels(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "advice_eval.py"), "--env-ids",
                             "BabyAI-GoToObj-v0", "--num-states", "2", "--subgoal-states", "2", "--llm-n-threads", "2"],
                            capture_output=True, text=True, timeout=300, cwd=outside_repo())
    assert result.returncode == 0, result.stderr[-3000:]
    ranking = result.stdout[result.stdout.index("## Subgoal ranking"):]
    assert "GoToObj" in ranking and "KeyCorridor" not in ranking and "UnlockPickup" not in ranking


# ---- also: server-only flags without a server, a chat API that mostly falls back, llama.cpp's context notice ----------
def test_server_only_flags_without_a_server_get_one_warning_and_the_notice_is_gone(tmp_path):
    result = run_script("--advisor", "llm", "--llm-timeout", "5", "--llm-n-threads", "2", "--total-timesteps", "128",
                        "--llm-cache-dir", "none", "--run-dir", str(tmp_path / "runs"), *TINY, script="ppo_llm_policy.py")
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "--llm-timeout" in warnings[0] and "--llm-base-url" in warnings[0], result.stderr
    assert "n_ctx_per_seq" not in result.stderr


def test_a_chat_api_whose_answers_mostly_fall_back_warns_while_the_run_goes_on(misbehaving_server, tmp_path):
    result = run_served(misbehaving_server("chat-prose"), "--llm-api", "chat", "--log-every", "1", "--total-timesteps",
                        "256", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fell back to uniform advice" in result.stderr and "--llm-api completions" in result.stderr
