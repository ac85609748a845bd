#!/usr/bin/env python3
"""Runs a load command and writes what each part of the stack spent on it.

Usage: cpu_parts.py OUT.json SERVER_PID COMMAND [ARGS...]

Samples /proc before and after the command (the bench waits for
PostgreSQL to record every issuance, so the finalizer's work is inside):
CPU seconds of the coupond server, of Redis (every redis-server), of
PostgreSQL (every backend, with those that exited during the run through
the postmaster's reaped-children time), of the Kafka broker, of the
command itself (the load generator, kept apart) and of the whole machine
less the load generator; from Redis's INFO commandstats the time spent
inside scripts and the number of commands Redis ran. Standard library only.
"""
import json
import os
import resource
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")
REDIS_PORT = os.environ.get("REDIS_PORT", "6379")


def stat(pid):
    """(comm, ppid, own ticks, reaped children's ticks) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    # fields[0] is state (stat field 3): utime is field 14, so index 11.
    own = int(fields[11]) + int(fields[12])
    children = int(fields[13]) + int(fields[14])
    return comm, int(fields[1]), own, children


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def processes():
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                out[int(name)] = stat(name)
            except (OSError, ValueError):
                pass  # exited while listed
    return out


def redis_stats():
    """(µs inside scripts, commands run) from INFO commandstats."""
    text = subprocess.run(["redis-cli", "-p", REDIS_PORT, "INFO", "commandstats"],
                          capture_output=True, text=True, check=True).stdout
    script_us, calls = 0, 0
    for line in text.splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, values = line[len("cmdstat_"):].split(":", 1)
        kv = dict(p.split("=") for p in values.split(","))
        if name in ("eval", "evalsha", "fcall", "eval_ro", "evalsha_ro"):
            script_us += int(kv["usec"])
        elif name != "info":
            calls += int(kv["calls"])
    return script_us, calls


def machine_busy():
    with open("/proc/stat") as f:
        cpu = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: all but idle and iowait.
    return cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + cpu[7]


def sample(server_pid):
    procs = processes()
    parts = {"server": 0, "redis": 0, "postgres": 0, "broker": 0}
    for pid, (comm, ppid, own, children) in procs.items():
        if pid == server_pid:
            parts["server"] += own
        elif comm == "redis-server":
            parts["redis"] += own
        elif comm == "postgres":
            parts["postgres"] += own
            if procs.get(ppid, ("",))[0] != "postgres":
                parts["postgres"] += children  # the postmaster: backends that exited
        elif comm == "java" and "kafka.Kafka" in cmdline(pid):
            parts["broker"] += own
    parts["machine"] = machine_busy()
    script_us, calls = redis_stats()
    return parts, script_us, calls


def main():
    out, server_pid, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    before, scripts_before, calls_before = sample(server_pid)
    start = time.monotonic()
    rc = subprocess.call(cmd)
    wall = time.monotonic() - start
    after, scripts_after, calls_after = sample(server_pid)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = ru.ru_utime + ru.ru_stime
    seconds = {k: (after[k] - before[k]) / TICK for k in before}
    seconds["machine"] = max(seconds["machine"] - load, 0.0)
    seconds["load_generator"] = load
    seconds["redis_scripts"] = (scripts_after - scripts_before) / 1e6
    with open(out, "w") as f:
        json.dump({"wall_s": wall, "cpu_s": seconds,
                   "redis_commands": calls_after - calls_before}, f, indent=1)
    sys.exit(rc)


if __name__ == "__main__":
    main()
