"""A vector env whose envs are stepped in groups, one group in this process and the others in worker processes at the
same time: a CPU core per group. Env i gets the same seed and the same observations as in a SyncVectorEnv of all the
envs, so a run gives the same numbers with one group or several; only the wall time changes."""

import multiprocessing
import signal
import traceback

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import CloudpickleWrapper


def _worker(env_fns, autoreset_mode, connection):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle; it closes the workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the main process's handler (forked): a terminate() ends it quietly
    envs = gym.vector.SyncVectorEnv(env_fns.fn, autoreset_mode=autoreset_mode)
    while True:
        try:
            command, data = connection.recv()
        except EOFError:  # the main process is gone
            break
        try:
            if command == "close":
                break
            connection.send(("ok", getattr(envs, command)(**data)))
        except Exception:  # noqa: BLE001  (the main process raises it with the worker's traceback)
            connection.send(("error", traceback.format_exc()))
    envs.close()
    connection.close()


def merge_infos(group_infos, group_sizes):
    """One vector info dict from the groups' dicts: arrays concatenated, a group without a key filled as SyncVectorEnv
    fills an env without it (zeros, False for the `_key` masks, None in object arrays); nested dicts merged alike."""
    merged = {}
    for key in dict.fromkeys(key for infos in group_infos for key in infos):
        values = [infos.get(key) for infos in group_infos]
        if any(isinstance(value, dict) for value in values):
            merged[key] = merge_infos([value or {} for value in values], group_sizes)
            continue
        example = next(np.asarray(value) for value in values if value is not None)
        fill = None if example.dtype == object else 0
        merged[key] = np.concatenate(
            [np.asarray(value) if value is not None else np.full((size, *example.shape[1:]), fill, dtype=example.dtype)
             for value, size in zip(values, group_sizes)]
        )
    return merged


class EnvGroups(gym.vector.VectorEnv):
    """`env_fns` split into `num_groups` consecutive groups (SyncVectorEnvs): group 0 steps here while the others step
    in worker processes. Observations must be arrays (a Box space)."""

    def __init__(self, env_fns, num_groups, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP):
        self.num_envs = len(env_fns)
        bounds = [round(self.num_envs * g / num_groups) for g in range(num_groups + 1)]
        self.group_slices = [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:]) if stop > start]
        self.group_sizes = [s.stop - s.start for s in self.group_slices]
        self.local = gym.vector.SyncVectorEnv(env_fns[self.group_slices[0]], autoreset_mode=autoreset_mode)
        self.connections, self.processes = [], []
        context = multiprocessing.get_context()
        for group in self.group_slices[1:]:
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_worker, args=(CloudpickleWrapper(env_fns[group]), autoreset_mode, child_end), daemon=True
            )
            process.start()
            child_end.close()
            self.connections.append(parent_end)
            self.processes.append(process)
        self.single_observation_space = self.local.single_observation_space
        self.single_action_space = self.local.single_action_space
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self.metadata = dict(self.local.metadata, autoreset_mode=autoreset_mode)
        self.render_mode = self.local.render_mode

    def _call_groups(self, command, local_data, worker_data):
        for connection, data in zip(self.connections, worker_data):
            connection.send((command, data))  # the workers start now ...
        results = [getattr(self.local, command)(**local_data)]  # ... while this process runs group 0
        for connection in self.connections:
            status, result = connection.recv()
            if status == "error":
                raise RuntimeError(f"an env worker process failed:\n{result}")
            results.append(result)
        return results

    def reset(self, *, seed=None, options=None):
        if seed is None or isinstance(seed, int):  # an int seeds env i with seed + i, as SyncVectorEnv does
            seeds = [None if seed is None else seed + group.start for group in self.group_slices]
        else:
            seeds = [list(seed[group]) for group in self.group_slices]
        data = [{"seed": group_seed, "options": options} for group_seed in seeds]
        results = self._call_groups("reset", data[0], data[1:])
        return np.concatenate([obs for obs, _ in results]), merge_infos([infos for _, infos in results], self.group_sizes)

    def step(self, actions):
        actions = np.asarray(actions)
        data = [{"actions": actions[group]} for group in self.group_slices]
        results = self._call_groups("step", data[0], data[1:])
        obs, rewards, terminations, truncations, infos = zip(*results)
        return (np.concatenate(obs), np.concatenate(rewards), np.concatenate(terminations), np.concatenate(truncations),
                merge_infos(infos, self.group_sizes))

    def close_extras(self, **kwargs):
        for connection in self.connections:
            try:
                connection.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
        self.local.close()
