"""tools/benchmark.py and tools/plot.py end to end: the tiny preset with the real scripts and the real embedded LLM."""

import json
import os
import subprocess
import sys
import time

from conftest import ROOT, outside_repo

from benchmark_presets import PRESETS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_benchmark(out):
    command = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--preset", "tiny", "--workers", "2",
               "--out", str(out), "--llm-cache-dir", str(out / "cache")]
    start = time.time()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=outside_repo())
    return result, time.time() - start


def test_tiny_preset_runs_plots_and_resumes(tmp_path):
    runs = PRESETS["tiny"]
    first, _ = run_benchmark(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    for run in runs:
        with open(tmp_path / "runs" / run["key"] / "result.json") as f:
            result = json.load(f)
        assert result["returncode"] == 0 and result["wall_seconds"] > 0 and result["command"].startswith("python ")
        assert 0.0 <= result["eval_return"] <= 1.0  # every run of the preset ends with an evaluation
    llm_run = next(run for run in runs if run["variant"] == "policy+llm")
    with open(tmp_path / "runs" / llm_run["key"] / "result.json") as f:
        assert json.load(f)["llm_queries"] > 0

    png = tmp_path / "curves.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG_SIGNATURE
    table = (tmp_path / "results.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| env | variant |"))
    for column in ["seeds", "final eval return (LLM-free)", "success rate", "frames to ≥ 0.9", "FPS", "LLM queries",
                   "cache hit rate", "wall (s)"]:
        assert column in header
    for run in runs:
        if run["kind"] == "train":
            assert f"| {run['env_id']} | {run['variant']} | 1 |" in table
    assert "## Zero-shot" in table and "## Transfer" in table
    # The saved checkpoint evaluated again, sampled and argmax, on the same levels: one row each.
    for mode in ["sampled", "argmax"]:
        assert f"| MiniGrid-DoorKey-5x5-v0 | baseline | {mode} | 1 | 3 |" in table
    argmax_run = next(run for run in runs if run["kind"] == "reeval" and run["eval_mode"] == "argmax")
    with open(tmp_path / "runs" / argmax_run["key"] / "result.json") as f:
        argmax_result = json.load(f)
    assert "--eval-argmax" in argmax_result["command"] and "agent.pt" in argmax_result["command"]
    assert argmax_result["eval_episodes"] == 3

    # A second invocation finds every result.json and runs nothing.
    second, seconds = run_benchmark(tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"skipping {len(runs)} finished" in second.stdout and "0 to run" in second.stdout
    assert "rc 0" not in second.stdout and seconds < 60

    # A result made with other flags than the preset's (the preset was changed since) is stale: it would run again.
    stale = next(run for run in runs if run["kind"] == "train")
    path = tmp_path / "runs" / stale["key"] / "result.json"
    result = json.loads(path.read_text())
    assert "--total-timesteps 2048" in result["command"]
    result["command"] = result["command"].replace("--total-timesteps 2048", "--total-timesteps 4096")
    path.write_text(json.dumps(result))
    dry = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--preset", "tiny",
                          "--out", str(tmp_path), "--dry-run"], capture_output=True, text=True, timeout=60, cwd=outside_repo())
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert f"skipping {len(runs) - 1} finished" in dry.stdout and "1 result(s) made with other flags" in dry.stdout
    assert f"[todo] {stale['key']}" in dry.stdout


def test_study_tiny_preset_writes_accuracy_plot_and_table(tmp_path):
    """The accuracy study (issue 8) end to end on its tiny preset: noisy-expert advisers at two accuracies through
    both mechanisms and the baseline, then accuracy.png and study.md."""
    runs = PRESETS["study-tiny"]
    assert {run["variant"] for run in runs} == {"baseline", "policy+noisy1.0", "policy+noisy0.25", "explore+noisy1.0",
                                                 "explore+noisy0.25"}
    command = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--preset", "study-tiny", "--workers", "2",
               "--out", str(tmp_path), "--llm-cache-dir", str(tmp_path / "cache")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=outside_repo())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    for run in runs:
        with open(tmp_path / "runs" / run["key"] / "result.json") as f:
            saved = json.load(f)
        assert 0.0 <= saved["eval_return"] <= 1.0
        if run["variant"] != "baseline":  # what plot.py reads, and the adviser's own count of agreement
            assert saved["mechanism"] in ("policy", "explore") and saved["advice_accuracy"] in (1.0, 0.25)
            assert 0.0 <= saved["agreed_with_expert"] <= 1.0

    png = tmp_path / "accuracy.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG_SIGNATURE
    study = (tmp_path / "study.md").read_text()
    header = next(line for line in study.splitlines() if line.startswith("| advice accuracy p |"))
    for mechanism in ["policy", "explore"]:
        for column in ["frames to ≥ 0.9", "ratio to baseline", "final return", "measured agreement"]:
            assert f"{mechanism}: {column}" in header
        assert f"- **{mechanism}**: " in study  # its break-even statement
    assert "| 1 |" in study and "| 0.25 |" in study and "## BabyAI-GoToObj-v0: threshold 0.9" in study
    assert "SmolLM2-135M 0.29 (measured on BabyAI-GoToLocal-v0)" in study
    assert "accuracy.png" in (tmp_path / "results.md").read_text()

    # The study at a success-rate threshold instead (plot.py --tag eval/success_rate, benchmarks/study-gotolocal).
    replot = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "plot.py"), str(tmp_path), "--tag",
                             "eval/success_rate"], capture_output=True, text=True, timeout=120, cwd=outside_repo())
    assert replot.returncode == 0, replot.stderr[-3000:]
    study = (tmp_path / "study.md").read_text()
    assert "## BabyAI-GoToObj-v0: threshold 0.9 (eval success)" in study and "policy: late return" in study


def test_bench_fps_prints_a_ratio_per_run_and_a_median_per_script_and_flags():
    # A smoke test of the tool on a tiny budget: it checks what is printed, never how fast anything is. The same
    # script with and without extra flags must stay two rows of the summary, not one median over both.
    command = [sys.executable, os.path.join(ROOT, "tools", "bench_fps.py"), "--raw-steps", "300",
               "--total-timesteps", "1024", "--repeats", "2", "--scripts", "ppo_baseline.py", "ppo_baseline.py",
               "--script-args=--no-memory"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=outside_repo())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_rows = [line for line in result.stdout.splitlines() if line.startswith(tuple(f"| {i} | " for i in range(1, 5)))]
    assert [row.split("|")[2].strip() for row in run_rows] == ["ppo_baseline.py", "ppo_baseline.py --no-memory"] * 2
    for row in run_rows:
        fps, raw_around, ratio = row.split("|")[3:6]
        assert int(fps) > 0 and float(raw_around) > 0 and 0 < int(ratio.strip().rstrip("%")) <= 1000
        env_ms, inference_ms, update_ms = (float(ms) for ms in row.split("|")[8].split("/"))  # where an update's time goes
        assert env_ms > 0 and inference_ms > 0 and update_ms > 0
    for label in ("ppo_baseline.py", "ppo_baseline.py --no-memory"):
        median_row = next(line for line in result.stdout.splitlines() if line.startswith(f"| {label} | 2 | "))
        assert median_row.split("|")[4].strip().endswith("%")


def test_llm_base_url_reaches_every_llm_run_and_only_those(tmp_path):
    for launcher in ("local", "slurm"):  # the Slurm jobs run the very commands the dry run prints
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--preset", "tiny", "--dry-run", "--out",
             str(tmp_path), "--launcher", launcher, "--llm-base-url", "http://127.0.0.1:9/v1"],
            capture_output=True, text=True, timeout=60, cwd=outside_repo())
        assert result.returncode == 0, result.stderr
        commands = [line for line in result.stdout.splitlines() if line.startswith("    python ")]
        assert commands and all(("--llm-base-url http://127.0.0.1:9/v1" in line) == ("ppo_llm_" in line)
                                for line in commands)
