"""llama.cpp's own HTTP server, `llama-server`, built once from the sources of the installed llama-cpp-python version
(its source distribution vendors llama.cpp, server included) into a cache folder and reused after; and started and
stopped by PID on 127.0.0.1 for the tests and tools/bench_server.py.

    python tools/llama_server.py             # build it (once; needs cmake and a C++ compiler), print its path
    $(python tools/llama_server.py) -m FILE.gguf --host 127.0.0.1 --port 8080 --parallel 16     # serve with it
"""

import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass

import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "minigrid-llm-ppo")


@dataclass
class Args:
    cache_dir: str = DEFAULT_CACHE
    """where the built llama-server is kept, one folder per llama-cpp-python version"""
    jobs: int = 0
    """parallel compile jobs (0: one per core)"""


class BuildError(Exception):
    """What stopped the build, in one line."""


def installed_version() -> str:
    return importlib.metadata.version("llama-cpp-python")


def server_path(cache_dir: str = DEFAULT_CACHE) -> str:
    return os.path.join(cache_dir, f"llama-server-{installed_version()}", "llama-server")


def build_llama_server(cache_dir: str = DEFAULT_CACHE, jobs: int = 0, log=print) -> str:
    """The path of llama-server for the installed llama-cpp-python version, built first if the cache lacks it:
    the version's source distribution from the package index (pip download), its vendored llama.cpp configured
    without curl and shared libraries, and only the llama-server target compiled. BuildError for a missing tool
    or a failed step (the build log is kept and named)."""
    binary = server_path(cache_dir)
    if os.access(binary, os.X_OK):
        return binary
    missing = [tool for tool in ("cmake", "c++") if not (shutil.which(tool) or tool == "c++" and shutil.which("g++"))]
    if missing:
        raise BuildError(f"building llama-server needs {' and '.join(missing)}: install them (e.g. apt-get install "
                         f"cmake g++) and run again")
    version = installed_version()
    os.makedirs(cache_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f"llama-server-{version}-build-", dir=cache_dir)
    log_path = os.path.join(work, "build.log")
    jobs = jobs or os.cpu_count() or 1
    steps = [("download the llama-cpp-python source", [sys.executable, "-m", "pip", "download", "--no-deps",
                                                       "--no-binary", ":all:", f"llama-cpp-python=={version}",
                                                       "-d", work, "-q"]),
             ("configure llama.cpp", ["cmake", "-S", "SRC", "-B", os.path.join(work, "build"), "-DLLAMA_CURL=OFF",
                                      "-DBUILD_SHARED_LIBS=OFF", "-DCMAKE_BUILD_TYPE=Release",
                                      "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]),
             ("compile llama-server", ["cmake", "--build", os.path.join(work, "build"), "--target", "llama-server",
                                       "-j", str(jobs)])]
    start = time.monotonic()
    with open(log_path, "w") as build_log:
        for what, command in steps:
            log(f"llama-server {version}: {what} ({time.monotonic() - start:.0f} s so far; log: {log_path})",
                flush=True)
            if what.startswith("configure"):
                command[2] = unpack_sources(work, version)
            result = subprocess.run(command, stdout=build_log, stderr=subprocess.STDOUT)
            if result.returncode != 0:
                raise BuildError(f"could not {what} (exit {result.returncode}); see {log_path}")
    built = os.path.join(work, "build", "bin", "llama-server")
    if not os.access(built, os.X_OK):
        raise BuildError(f"the build made no {built}; see {log_path}")
    target = os.path.dirname(binary)
    os.makedirs(target, exist_ok=True)
    partial = binary + f".partial-{os.getpid()}"
    shutil.copy2(built, partial)
    os.replace(partial, binary)  # whole or absent: a build stopped halfway leaves no binary that looks finished
    shutil.rmtree(work, ignore_errors=True)  # this build's own scratch folder, sources and objects
    log(f"llama-server {version}: built in {time.monotonic() - start:.0f} s: {binary}", flush=True)
    return binary


def unpack_sources(work: str, version: str) -> str:
    """The vendored llama.cpp folder of the downloaded source distribution."""
    archives = [name for name in os.listdir(work) if name.endswith(".tar.gz")]
    if not archives:
        raise BuildError("pip download gave no source archive")
    with tarfile.open(os.path.join(work, archives[0])) as archive:
        archive.extractall(work, filter="data")
    source = os.path.join(work, f"llama_cpp_python-{version}", "vendor", "llama.cpp")
    if not os.path.isfile(os.path.join(source, "CMakeLists.txt")):
        raise BuildError(f"the source archive has no vendored llama.cpp at {source}")
    return source


def amx_flags() -> list[str]:
    """--no-repack on CPUs with AMX: the same llama.cpp's AMX Q4 kernels are wrong there (see llmppo.llama.load_llama)."""
    from llmppo.llama import has_amx

    return ["--no-repack"] if has_amx() else []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_llama_server(model_path: str, parallel: int = 1, threads: int = 1, port: int = 0, n_ctx_per_slot: int = 512,
                       cache_dir: str = DEFAULT_CACHE, extra: tuple = ()):
    """llama-server on 127.0.0.1 with `parallel` slots of `n_ctx_per_slot` tokens each; returns (process, base URL)
    once /health answers. Built first if the cache lacks it."""
    import httpx

    binary = build_llama_server(cache_dir)
    port = port or free_port()
    command = [binary, "-m", model_path, "--host", "127.0.0.1", "--port", str(port), "-t", str(threads), "-tb",
               str(threads), "--parallel", str(parallel), "--ctx-size", str(n_ctx_per_slot * parallel),
               "--no-webui", *amx_flags(), *extra]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama-server exited at start-up: {' '.join(command)}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return process, base + "/v1"
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    stop_server(process)
    raise RuntimeError("llama-server did not answer within 120 s")


def stop_server(process):
    """SIGTERM by PID, SIGKILL if it does not exit within 20 s."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def main():
    args = tyro.cli(Args)
    if args.jobs < 0:
        print(f"error: --jobs must be 0 (one per core) or more, got {args.jobs}", file=sys.stderr)
        sys.exit(2)
    try:
        binary = build_llama_server(args.cache_dir, args.jobs, log=lambda *a, **k: print(*a, **k, file=sys.stderr))
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: nothing was installed; run again to build", file=sys.stderr)
        sys.exit(130)
    print(binary)  # alone on stdout, for $(python tools/llama_server.py)


if __name__ == "__main__":
    main()
