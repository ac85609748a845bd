#!/usr/bin/env python3
"""Redis's CPU per coupon issued and finalized: coupond's scripts beside the
same data model worked with less (a minimal script, then no script at all),
to tell what the scripts cost from what the data model costs.

Usage: bench-redis-floor.py OUT.md [ROUNDS]   (env: REDIS_PORT 6379,
FLOOR_COUPONS 300000, FLOOR_BATCH 200, FLOOR_LAG 100; FLOOR_BASELINE_LUA:
a directory holding another revision's issue.lua and finalize.lua, run as
the way "baseline" and shown as the reference)

Each way issues FLOOR_COUPONS coupons of a fresh event to as many distinct
users, FLOOR_BATCH users per call, and finalizes each batch FLOOR_LAG
batches later (the finalizer trails the issue path, so the pending set
holds FLOOR_LAG batches, as in a drop). The ways, taking turns ROUNDS times:
  baseline       FLOOR_BASELINE_LUA's issue.lua, then its finalize.lua
  coupond        scripts/lua/issue.lua, then scripts/lua/finalize.lua
  coupond-issue  issue.lua only (nothing finalized)
  minimal        a script each with only the data model's calls: HMGET,
                 LPOP, HSET and ZADD; HMGET, HSET (the state byte) and ZREM
  native         the same calls sent as plain commands (no Lua)
  native-derived native, but finalizing is the ZREM alone (the state read
                 from the pending set instead of rewritten)
  native-nopend  native without the pending set (HSET on issue and finalize)
  native-issue   native's issue calls only
Redis's CPU is its process's (INFO cpu: every thread) around each way.
Standard library only; the keys are deleted after each way.
"""
import os
import random
import socket
import statistics
import sys
import time

PORT = int(os.environ.get("REDIS_PORT", "6379"))
N = int(os.environ.get("FLOOR_COUPONS", "300000"))
B = int(os.environ.get("FLOOR_BATCH", "200"))
LAG = int(os.environ.get("FLOOR_LAG", "100"))
WAYS = ["coupond", "coupond-issue", "minimal", "native", "native-derived",
        "native-nopend", "native-issue"]
LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua")
BASELINE_LUA = os.environ.get("FLOOR_BASELINE_LUA")
if BASELINE_LUA:
    WAYS.insert(0, "baseline")

MIN_ISSUE = """
local n = #ARGV
redis.call('HMGET', KEYS[2], unpack(ARGV))
local codes = redis.call('LPOP', KEYS[1], n)
local now = redis.call('TIME')[1] .. '000'
local f, z = {}, {}
for i = 1, n do
  f[2 * i - 1] = ARGV[i]; f[2 * i] = codes[i] .. '\\t' .. now .. '\\treq\\tP'
  z[2 * i - 1] = now; z[2 * i] = ARGV[i]
end
redis.call('HSET', KEYS[2], unpack(f))
redis.call('ZADD', KEYS[3], unpack(z))
return codes
"""
MIN_FINALIZE = """
local n = #ARGV / 2
local u = {}
for i = 1, n do u[i] = ARGV[2 * i - 1] end
local recs = redis.call('HMGET', KEYS[1], unpack(u))
local f = {}
for i = 1, n do f[2 * i - 1] = u[i]; f[2 * i] = string.sub(recs[i], 1, -2) .. 'F' end
redis.call('HSET', KEYS[1], unpack(f))
redis.call('ZREM', KEYS[2], unpack(u))
return n
"""


class Redis:
    """A RESP client just big enough for this: send, read, call."""

    def __init__(self):
        self.sock = socket.create_connection(("127.0.0.1", PORT))
        self.f = self.sock.makefile("rb")

    def send(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))

    def read(self):
        line = self.f.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.f.read(n + 2)[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        return rest

    def call(self, *args):
        self.send(*args)
        return self.read()

    def cpu_s(self):
        info = self.call("INFO", "cpu").decode()
        v = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return float(v["used_cpu_sys"]) + float(v["used_cpu_user"])


class Event:
    """One fresh event's keys, its queue filled with N codes."""

    NAMES = ["couponQueue", "couponIssued", "couponMeta", "couponPending",
             "couponMetaOffline", "couponProgress", "couponConflicts"]

    def __init__(self, r, way):
        self.r = r
        self.k = {n: f"{n}:{{floor-{way}-{os.getpid()}}}" for n in self.NAMES}
        self.drop()
        alphabet = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
        codes = ["".join(random.choices(alphabet, k=12)) + "\tPERCENT\t10" for _ in range(N)]
        for i in range(0, N, 10000):
            r.call("RPUSH", self.k["couponQueue"], *codes[i:i + 10000])
        now = int(time.time() * 1000)
        r.call("HSET", self.k["couponMeta"], "starts_at", now - 1000,
               "ends_at", now + 3_600_000, "total", N)

    def keys(self, *names):
        return [self.k[n] for n in names]

    def drop(self):
        # DEL, not UNLINK: a background free would be counted in the next way.
        self.r.call("DEL", *self.k.values())


def issue(r, ev, way, sha, users):
    """Issues to `users`; returns their codes."""
    if way.startswith("coupond") or way == "baseline":
        args = [len(users)]
        for u in users:
            args += [u, "req-" + u]
        out = r.call("EVALSHA", sha["issue"], 5, *ev.keys(
            "couponQueue", "couponIssued", "couponMeta", "couponPending",
            "couponMetaOffline"), *args)
        assert all(out[2 * j] == 1 for j in range(len(users))), "every user ISSUED"
        return [out[2 * j + 1].split(b"\t")[0] for j in range(len(users))]
    if way == "minimal":
        got = r.call("EVALSHA", sha["issue"], 3,
                     *ev.keys("couponQueue", "couponIssued", "couponPending"), *users)
        return [c.split(b"\t")[0] for c in got]
    queue, issued, pending = ev.keys("couponQueue", "couponIssued", "couponPending")
    r.send("HMGET", issued, *users)
    r.send("LPOP", queue, len(users))
    r.read()
    got = r.read()
    now = str(int(time.time() * 1000)).encode()
    fields, scores = [], []
    for u, c in zip(users, got):
        fields += [u, c + b"\t" + now + b"\treq\tP"]
        scores += [now, u]
    r.call("HSET", issued, *fields)
    if way != "native-nopend":
        r.call("ZADD", pending, *scores)
    return [c.split(b"\t")[0] for c in got]


def finalize(r, ev, way, sha, users, codes):
    if way in ("coupond-issue", "native-issue"):
        return
    pairs = [x for u, c in zip(users, codes) for x in (u, c)]
    if way in ("coupond", "baseline"):
        done = r.call("EVALSHA", sha["finalize"], 4, *ev.keys(
            "couponIssued", "couponPending", "couponProgress", "couponConflicts"), *pairs)
        # The baseline's script answers the count alone.
        done = done if isinstance(done, int) else done[0]
        assert done == len(users), "every issuance finalized"
        return
    if way == "minimal":
        r.call("EVALSHA", sha["finalize"], 2, *ev.keys("couponIssued", "couponPending"), *pairs)
        return
    issued, pending = ev.keys("couponIssued", "couponPending")
    if way != "native-derived":
        recs = r.call("HMGET", issued, *users)
        fields = [x for u, rec in zip(users, recs) for x in (u, rec[:-1] + b"F")]
        r.call("HSET", issued, *fields)
    if way != "native-nopend":
        r.call("ZREM", pending, *users)


def run(way):
    """Redis CPU µs per coupon of one way."""
    r = Redis()
    ev = Event(r, way)
    sha = {}
    if way.startswith("coupond") or way == "baseline":
        for name in ("issue", "finalize"):
            where = BASELINE_LUA if way == "baseline" else LUA
            with open(os.path.join(where, name + ".lua")) as f:
                sha[name] = r.call("SCRIPT", "LOAD", f.read())
    elif way == "minimal":
        sha = {"issue": r.call("SCRIPT", "LOAD", MIN_ISSUE),
               "finalize": r.call("SCRIPT", "LOAD", MIN_FINALIZE)}
    users = [f"user-{i:08d}" for i in range(N)]
    random.shuffle(users)
    time.sleep(1)  # the queue's fill settles before the count starts
    before = r.cpu_s()
    trailing = []
    for s in range(0, N, B):
        batch = users[s:s + B]
        trailing.append((batch, issue(r, ev, way, sha, batch)))
        if len(trailing) > LAG:
            finalize(r, ev, way, sha, *trailing.pop(0))
    for batch, codes in trailing:
        finalize(r, ev, way, sha, batch, codes)
    spent = r.cpu_s() - before
    assert r.call("HLEN", ev.k["couponIssued"]) == N, "every user holds a record"
    ev.drop()
    return 1e6 * spent / N


def main():
    out = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    got = {w: [] for w in WAYS}
    for i in range(rounds):
        for w in WAYS:
            got[w].append(run(w))
            print(f"round {i + 1} {w}: {got[w][-1]:.2f} µs", file=sys.stderr)
    ref_way = "baseline" if BASELINE_LUA else "coupond"
    ref = statistics.median(got[ref_way])
    with open(out, "w") as f:
        f.write(f"Redis CPU µs per coupon issued and finalized: {N} coupons, batches of {B}, "
                f"finalized {LAG} batches later; median of {rounds} rounds taken in turn\n\n")
        if BASELINE_LUA:
            f.write(f"baseline: the scripts of {os.environ.get('FLOOR_BASELINE_REV', BASELINE_LUA)}\n\n")
        f.write(f"| way | µs per coupon (median) | / {ref_way} | every round |\n|---|---|---|---|\n")
        for w in WAYS:
            m = statistics.median(got[w])
            rounds_s = ", ".join(f"{x:.2f}" for x in got[w])
            f.write(f"| {w} | {m:.2f} | {m / ref:.2f} | {rounds_s} |\n")
    print(open(out).read())


if __name__ == "__main__":
    main()
