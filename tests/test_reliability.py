"""Issue 33, "nothing lost, nothing leaked, nothing cryptic (2)": faults found by trying the scripts as a new user
would, each checked with the real scripts as subprocesses, real files and, for the server faults, a small real HTTP
server on 127.0.0.1. Each test failed on the code before its fix."""

import dataclasses
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
