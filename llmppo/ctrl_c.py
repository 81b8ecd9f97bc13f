"""Imported first by each script: from then on a Ctrl-C (or SIGTERM) while the script loads, checks its flags or
builds its adviser exits with code 130 and no traceback. runs.StopFlag takes over once the run starts."""

import os
import signal
import sys


def exit_quietly(signum, frame):
    # os._exit, not sys.exit: the handler runs inside whatever Python code is loading (a class body of torch), where a
    # SystemExit can be wrapped into another error (a class attribute's __set_name__) or printed and swallowed (a
    # __del__). Nothing has started yet that needs cleaning up.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # the signal may have landed inside a write to this very stream
            pass
    os._exit(130)


signal.signal(signal.SIGINT, exit_quietly)
signal.signal(signal.SIGTERM, exit_quietly)
