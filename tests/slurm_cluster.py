"""A real one-node Slurm cluster for the tests: munged, slurmctld and slurmd from a temporary slurm.conf.

Everything lives in one temporary folder (munge key and socket, state, spool, pid and log files); the ports are free
ones picked at start, so a system Slurm or another test cluster on the host is left alone. Client commands (sbatch,
squeue, scancel) find this cluster through SLURM_CONF, which `cluster()` yields in `env`. The daemons run in the
foreground as children of the test process and are stopped by their PIDs.

    python tests/slurm_cluster.py     # start one by hand, print its SLURM_CONF, stop it on Enter
"""

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time

PACKAGES = ["slurm-wlm", "munge"]
DAEMONS = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "srun"]


class ClusterError(RuntimeError):
    pass


def install():
    """apt-get install slurm-wlm and munge when a daemon or client is missing (root, Debian/Ubuntu)."""
    for sbin in ["/usr/sbin", "/sbin"]:  # munged, slurmctld and slurmd live there, not always on a PATH
        if sbin not in os.environ["PATH"].split(os.pathsep):
            os.environ["PATH"] += os.pathsep + sbin
    if all(shutil.which(name) for name in DAEMONS):
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        raise ClusterError(f"Slurm is not installed and cannot be: apt-get install -y {' '.join(PACKAGES)} needs root")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", *PACKAGES]  # wait for another apt
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:  # a fresh machine has no package lists
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise ClusterError(f"apt-get install {' '.join(PACKAGES)} failed: {done.stderr.strip()[-500:]}")
    missing = [name for name in DAEMONS if not shutil.which(name)]
    if missing:
        raise ClusterError(f"after apt-get install {' '.join(PACKAGES)}, still missing: {', '.join(missing)}")


def free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_line(host):
    """This host as slurmd sees it (CPUs, sockets, cores, memory), under its short name."""
    line = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    return " ".join([f"NodeName={host} NodeAddr=127.0.0.1", *line.split()[1:]])  # whether or not DNS knows host


def write_conf(folder, munge_socket):
    host = socket.gethostname().split(".")[0]
    paths = {name: os.path.join(folder, name) for name in ["state", "spool"]}
    for path in paths.values():
        os.makedirs(path, exist_ok=True)
    conf = f"""ClusterName=tests
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=2
MinJobAge=10
StateSaveLocation={paths['state']}
SlurmdSpoolDir={paths['spool']}
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
{node_line(host)} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
    path = os.path.join(folder, "slurm.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path


def wait_for(check, seconds, what, logs):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {log}\n{tail(log)}" for log in logs)
    raise ClusterError(f"{what} did not happen within {seconds} s\n{tails}")


def tail(path, lines=15):
    if not os.path.exists(path):
        return "(no file)"
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def stop(procs):
    for proc in reversed(procs):  # slurmd, slurmctld, then munged
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def cluster(folder=None):
    """Yields dict(env=os.environ with SLURM_CONF, conf=path, folder=...) while a one-node cluster is up."""
    install()
    folder = folder or tempfile.mkdtemp(prefix="slurm-")
    os.makedirs(folder, exist_ok=True)
    key_dir, socket_dir = os.path.join(folder, "munge-key"), os.path.join(folder, "munge")
    os.makedirs(key_dir, mode=0o700, exist_ok=True)
    os.makedirs(socket_dir, mode=0o755, exist_ok=True)
    key = os.path.join(key_dir, "munge.key")
    with open(key, "wb") as f:
        f.write(os.urandom(1024))
    os.chmod(key, 0o400)
    munge_socket = os.path.join(socket_dir, "munge.socket")
    conf = write_conf(folder, munge_socket)
    env = os.environ | {"SLURM_CONF": conf}
    procs = []
    try:
        # --force: the temporary folder's parents are not world-executable, which munged otherwise refuses.
        procs.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={munge_socket}",
             f"--pid-file={socket_dir}/munged.pid", f"--log-file={socket_dir}/munged.log",
             f"--seed-file={key_dir}/munged.seed"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: os.path.exists(munge_socket), 20, "munged creating its socket", [f"{socket_dir}/munged.log"])
        logs = [f"{folder}/slurmctld.log", f"{folder}/slurmd.log"]
        procs.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", conf], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: subprocess.run(["sinfo", "-h"], env=env, capture_output=True).returncode == 0, 30,
                 "slurmctld answering sinfo", logs)
        procs.append(subprocess.Popen(["slurmd", "-D", "-f", conf], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        idle = lambda: subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,  # noqa: E731
                                      text=True).stdout.strip() in ("idle", "mix", "alloc")
        wait_for(idle, 60, "the node becoming idle", logs)
        for proc in procs:
            if proc.poll() is not None:
                raise ClusterError(f"{proc.args[0]} exited with {proc.returncode}\n" +
                                   "\n".join(f"--- {log}\n{tail(log)}" for log in logs))
        yield dict(env=env, conf=conf, folder=folder, pids=[proc.pid for proc in procs])
    finally:
        stop(procs)


if __name__ == "__main__":
    with cluster() as c:
        print(f"export SLURM_CONF={c['conf']}   # daemons: {c['pids']}; Enter stops them")
        input()
