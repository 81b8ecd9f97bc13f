"""What the tests share: the repository on sys.path, the real scripts run as subprocesses, their TensorBoard logs read
back, and a check that a test session writes nothing into the repository (every output goes under pytest's tmp_path)."""

import glob
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]

# 4 envs x 32 steps = 128 frames per update: training runs of a few seconds
TINY = ["--num-envs", "4", "--num-steps", "32", "--num-minibatches", "2", "--update-epochs", "2"]


def outside_repo():
    """The working folder of every subprocess the tests start: a temporary folder, so that nothing lands in the repo."""
    return os.environ["PYTEST_OUTSIDE_REPO"]


def run_script(*flags, script="ppo_baseline.py", timeout=300):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *flags], capture_output=True, text=True,
                          timeout=timeout, cwd=outside_repo())


def scalars(run_path):
    events = EventAccumulator(run_path, size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [event.value for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def only_run(run_dir):
    runs = glob.glob(os.path.join(run_dir, "*"))
    assert len(runs) == 1, runs
    return runs[0]


def repository_files():
    """Every file of the working tree but Python's and pytest's caches."""
    files = set()
    for folder, subfolders, names in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if name not in (".git", "__pycache__", ".pytest_cache")]
        files.update(os.path.relpath(os.path.join(folder, name), ROOT) for name in names)
    return files


@pytest.fixture(scope="session", autouse=True)
def nothing_written_into_the_repository(tmp_path_factory):
    """The scripts run from a temporary folder, so a forgotten --run-dir lands there; at the end no file may have
    appeared in the repository."""
    before = repository_files()
    os.environ["PYTEST_OUTSIDE_REPO"] = str(tmp_path_factory.mktemp("cwd"))
    yield
    new = sorted(repository_files() - before)
    assert not new, f"the tests wrote into the repository: {new[:10]}"
