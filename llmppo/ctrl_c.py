"""Imported first by each script: from then on a Ctrl-C (or SIGTERM) while the script loads, checks its flags or
builds its adviser exits with code 130 and no traceback. runs.StopFlag takes over once the run starts."""

import signal
import sys


def exit_quietly(signum, frame):
    sys.exit(130)


signal.signal(signal.SIGINT, exit_quietly)
signal.signal(signal.SIGTERM, exit_quietly)
