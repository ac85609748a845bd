#!/usr/bin/env python3
"""Runs a command and writes the CPU seconds it used (user + system, its
children included) and the wall seconds to OUT: `cpu wall`.

Usage: cpu-seconds.py OUT COMMAND [ARGS...]. Standard library only.
"""
import resource
import subprocess
import sys
import time

out, cmd = sys.argv[1], sys.argv[2:]
start = time.monotonic()
rc = subprocess.call(cmd)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(out, "w") as f:
    f.write(f"{ru.ru_utime + ru.ru_stime:.2f} {time.monotonic() - start:.2f}\n")
sys.exit(rc)
