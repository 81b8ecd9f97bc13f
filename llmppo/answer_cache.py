"""The advisers' answer caches: raw LLM answers in memory (an LRU dict) over a diskcache folder shared between runs.

A disk cache that this process cannot write is used read-only (ReadOnlyDiskCache) or skipped, with a warning; only a
cache that fails SQLite's integrity check is rebuilt empty; one that breaks mid-run is switched off, never a crash."""

from __future__ import annotations

import collections
import os
import sqlite3
import time
import urllib.parse
import warnings

DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "minigrid-llm-ppo")


class ReadOnlyDiskCache:
    """get() from a diskcache folder that this process cannot write (set() stores nothing): a shared or archived
    cache is still used, and never changed."""

    def __init__(self, directory: str):
        import diskcache

        self.disk = diskcache.Disk(directory)
        path = urllib.parse.quote(os.path.join(directory, "cache.db"))
        try:
            self.connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            self.connection.execute("SELECT COUNT(*) FROM Cache").fetchone()
        except sqlite3.OperationalError:  # WAL mode needs files next to it that a read-only folder cannot get
            self.connection = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
            self.connection.execute("SELECT COUNT(*) FROM Cache").fetchone()

    def get(self, key, default=None):
        db_key, raw = self.disk.put(key)
        row = self.connection.execute("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = ?",
                                      (db_key, raw)).fetchone()
        return default if row is None else self.disk.fetch(*row, read=False)

    def set(self, key, value):
        return False

    def close(self):
        self.connection.close()


def cache_is_corrupt(directory: str) -> bool:
    """True only when the cache's sqlite file fails SQLite's integrity check (not when it is merely unwritable)."""
    path = os.path.join(directory, "cache.db")
    if not os.path.exists(path):
        return False
    try:
        connection = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True)
        try:
            return connection.execute("PRAGMA quick_check").fetchone()[0] != "ok"
        finally:
            connection.close()
    except sqlite3.OperationalError as error:  # cannot open or read it (permissions, locks): not corruption
        return "malformed" in str(error) or "not a database" in str(error)
    except sqlite3.DatabaseError:  # "file is not a database", "database disk image is malformed"
        return True


def open_disk_cache(directory: str):
    """diskcache.Cache in `directory`. A cache this process cannot write is used read-only, or skipped (None), with a
    warning; a cache that fails the integrity check is moved aside (renamed, never deleted) and a new one started."""
    import diskcache

    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        warnings.warn(f"cannot create the advice cache {directory} ({error.strerror}); running without a cache")
        return None
    database = os.path.join(directory, "cache.db")
    writable = os.access(directory, os.W_OK | os.X_OK) and (not os.path.exists(database) or os.access(database, os.W_OK))
    if writable:
        try:
            disk_cache = diskcache.Cache(directory)
            disk_cache.get("health-check")  # reads the sqlite file: corruption shows up here, not later
            return disk_cache
        except Exception as error:
            if cache_is_corrupt(directory):
                damaged = f"{directory}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
                try:  # moved aside whole, with whatever else the folder holds; never deleted
                    os.rename(directory, damaged)
                    os.makedirs(directory)
                    warnings.warn(f"the advice cache in {directory} is corrupt ({type(error).__name__}: {error}); "
                                  f"moved it to {damaged} and starting an empty one")
                    return diskcache.Cache(directory)
                except OSError as move_error:
                    reason = f"it is corrupt and could not be moved aside ({move_error.strerror})"
            else:
                reason = f"{type(error).__name__}: {error}"
    else:
        reason = "it is not writable"
    if os.path.exists(database) and not cache_is_corrupt(directory):
        try:
            read_only = ReadOnlyDiskCache(directory)
            warnings.warn(f"the advice cache in {directory} cannot be written ({reason}); using it read-only")
            return read_only
        except Exception as error:
            reason += f"; reading it failed too ({type(error).__name__}: {error})"
    warnings.warn(f"the advice cache in {directory} cannot be used ({reason}); running without a cache, leaving it as is")
    return None



class AnswerCache:
    """Raw answers by key: memory first (keyed by the adviser's own text), then the disk (keyed by a hash of everything
    that determines the answer), in the folder llm-advice-v1 under `cache_dir` ("none" or None: memory only). Hits and
    misses are counted in `stats` (memory_hits, disk_hits, misses)."""

    def __init__(self, cache_dir: str | None, memory_size: int, stats: dict):
        self.memory, self.memory_size, self.stats = collections.OrderedDict(), memory_size, stats
        self.disk, self.disk_dir = None, None
        if cache_dir and str(cache_dir).lower() != "none":
            self.disk_dir = os.path.join(os.path.expanduser(str(cache_dir)), "llm-advice-v1")
            self.disk = open_disk_cache(self.disk_dir)

    def get(self, memory_key: str, disk_key: str):
        """The raw answer from the memory or the disk cache (counted as a hit), else None."""
        if memory_key in self.memory:
            self.memory.move_to_end(memory_key)
            self.stats["memory_hits"] += 1
            return self.memory[memory_key]
        raw = self._disk_call("get", disk_key) if self.disk is not None else None
        if raw is not None:
            self.stats["disk_hits"] += 1
            self.remember(memory_key, raw)
        return raw

    def put(self, memory_key: str, disk_key: str, raw):
        """An uncached answer, counted as a miss; a failed query (None) is not stored, so it is asked again."""
        self.stats["misses"] += 1
        if raw is not None:
            self.remember(memory_key, raw)
            if self.disk is not None:
                self._disk_call("set", disk_key, raw)

    def remember(self, key: str, raw):
        self.memory[key] = raw
        if len(self.memory) > self.memory_size:
            self.memory.popitem(last=False)

    def _disk_call(self, method: str, *args):
        """diskcache get/set; a cache that breaks mid-run is switched off with a warning, never a crash."""
        try:
            return getattr(self.disk, method)(*args)
        except Exception as error:
            warnings.warn(f"the advice cache in {self.disk_dir} failed ({error}); continuing without it")
            self.disk = None
            return None

    def close(self):
        if self.disk is not None:
            self.disk.close()
