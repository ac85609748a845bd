#!/usr/bin/env python3
"""Turns a bench-results/<run>/ directory into summary.md and chart.svg.

Usage: bench_report.py <run dir>. Standard library only.
"""
import glob
import json
import os
import sys

run = sys.argv[1]
rows = {}
parts = {}
for path in sorted(glob.glob(os.path.join(run, "*.json"))):
    name = os.path.basename(path)[:-5]
    if name.endswith(".parts"):
        parts[name[:-6]] = json.load(open(path))
    else:
        rows[name] = json.load(open(path))
ref = {}
for path in sorted(glob.glob(os.path.join(run, "redis-evalsha-*.txt"))):
    name = os.path.basename(path)[len("redis-evalsha-"):-4]
    try:
        ref[name] = float(open(path).read().strip())
    except ValueError:
        ref[name] = 0.0
scripts = {}
for path in sorted(glob.glob(os.path.join(run, "*.scripts"))):
    scripts[os.path.basename(path)[:-8]] = int(open(path).read().strip() or 0)
raw = max((v for k, v in ref.items() if k.endswith("p1")), default=0.0)

PARTS = [
    ("server", "coupond server (gRPC, batcher, producer, finalizer)"),
    ("redis", "Redis (process)"),
    ("redis_scripts", "Redis scripts' run time (INFO commandstats; wall time, so it counts waits for the CPU)"),
    ("postgres", "PostgreSQL (all backends)"),
    ("broker", "Kafka broker"),
    ("machine", "whole machine, load generator excluded"),
    ("load_generator", "load generator (apart)"),
]


def rev(label):
    try:
        return open(os.path.join(run, f"{label}.rev")).read().split("\n")[0].strip()
    except OSError:
        return ""


def rounds(key):
    """(parts, row) of every round of a cost run: NAME, NAME.r2, ..."""
    out = []
    for k in sorted((k for k in parts if k == key or k.startswith(key + ".r")),
                    key=lambda k: int(k.rsplit(".r", 1)[1]) if ".r" in k else 1):
        if k in rows:
            out.append((parts[k], rows[k]))
    return out


def median(values):
    v = sorted(values)
    return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2


def cost_table():
    """CPU µs per coupon of each part, baseline (and before) beside current,
    per load, with current's ratio to each; with several rounds, each figure
    is its median over the rounds."""
    labels = [l for l in ("baseline", "before", "current") if any(k.startswith(f"cost-{l}-") for k in parts)]
    if not labels:
        return []
    loads = ("stream-s16", "unary-c1000", "unary-c100")
    heads = [f"{l} {rev(l)}".strip() for l in labels]
    others = [(i, l) for i, l in enumerate(labels) if l != "current"] if "current" in labels else []
    heads += [f"current / {l}" for _, l in others]
    n = max(len(rounds(f"cost-{l}-{load}")) for l in labels for load in loads)
    each = f"; the median of {n} rounds, {', '.join(labels)} in turn" if n > 1 else ""
    out = [f"CPU µs per coupon issued and finalized, per part (cpu_parts.py around each run; same stack, same run{each}):", ""]
    for load in loads:
        cols = [rounds(f"cost-{l}-{load}") for l in labels]
        if not all(cols):
            continue
        out.append(f"| {load} | " + " | ".join(heads) + " |")
        out.append("|---" * (len(heads) + 1) + "|")

        def line(title, of, fmt):
            values = [median([of(p, r) for p, r in col]) for col in cols]
            cur = values[labels.index("current")] if others else None
            ratios = [f"{cur / values[i]:.2f}" if values[i] else "-" for i, _ in others]
            out.append(f"| {title} | " + " | ".join([fmt(v) for v in values] + ratios) + " |")

        for key, title in PARTS:
            line(title, lambda p, r, key=key: p["cpu_s"][key] * 1e6 / max(r["issued"], 1), lambda v: f"{v:.1f}")
        line("Redis commands per coupon", lambda p, r: p["redis_commands"] / max(r["issued"], 1), lambda v: f"{v:.2f}")
        line("requests/s", lambda p, r: r["requests_per_s"], lambda v: f"{v:.0f}")
        line("p50 latency ms", lambda p, r: r["latency_us"]["p50"] / 1000, lambda v: f"{v:.1f}")
        line("p99 latency ms", lambda p, r: r["latency_us"]["p99"] / 1000, lambda v: f"{v:.1f}")
        line("load + finalization wall s", lambda p, r: p["wall_s"], lambda v: f"{v:.1f}")
        copy = parts.get("copy-1000000")
        if copy:
            per_row = copy["cpu_s"]["postgres"] * 1e6 / 1_000_000
            line("PostgreSQL per coupon / per row of COPY (1,000,000 rows)",
                 lambda p, r: p["cpu_s"]["postgres"] * 1e6 / max(r["issued"], 1) / per_row,
                 lambda v: f"{v:.2f}x")
        out.append("| invariants, every round | " + " | ".join(
            ["OK" if all(r["invariants_ok"] for _, r in col) else "VIOLATED" for col in cols] + [""] * len(others)) + " |")
        out.append("")
    return out


def linger_table():
    """Per linger and durability mode: throughput, latency, CPU per coupon."""
    names = sorted((k for k in rows if k.startswith("linger-") and k in parts),
                   key=lambda k: (int(k.split("-")[1]), k))
    if not names:
        return []
    out = ["Producer linger per durability mode (ONLY=linger; CPU µs per coupon issued and finalized):", "",
           "| linger ms | durability | load | requests/s | p50 ms | p99 ms | server µs | broker µs | machine µs | invariants |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for k in names:
        _, ms, mode, load = k.split("-", 3)
        r, c = rows[k], parts[k]["cpu_s"]
        n = max(r["issued"], 1)
        out.append(f"| {ms} | {mode} | {load} | {r['requests_per_s']:.0f} | {r['latency_us']['p50']/1000:.2f} | "
                   f"{r['latency_us']['p99']/1000:.2f} | {c['server']*1e6/n:.1f} | {c['broker']*1e6/n:.1f} | "
                   f"{c['machine']*1e6/n:.1f} | {'OK' if r['invariants_ok'] else 'VIOLATED'} |")
    return out + [""]


def grown_table():
    """The preload and the stream drop on a database holding earlier drops'
    coupons beside a fresh one (ONLY=grown): medians over the rounds, and
    the cold-cache run when there is one."""
    phases = [p for p in ("fresh", "grown", "archived", "reindexed", "cold") if rounds(f"grown-{p}-preload")]
    if len(phases) < 2 or phases[0] != "fresh":
        return []
    growth = os.path.join(run, "grown-growth.txt")
    size = open(growth).read().strip().splitlines()[-1] if os.path.exists(growth) else "?"
    heads = {"fresh": "fresh database", "grown": "grown database",
             "archived": "grown, earlier events archived",
             "reindexed": "archived, indexes rebuilt", "cold": "grown, cold caches"}
    out = [f"Cost as the database grows (ONLY=grown; the grown database: {size}):", "",
           "| | " + " | ".join(heads[p] + (" | / fresh" if p != "fresh" else "") for p in phases) + " |",
           "|---" * (2 * len(phases)) + "|"]

    def line(title, key, of, fmt):
        cols = [rounds(f"grown-{phase}-{key}") for phase in phases]
        if not all(cols):
            return
        values = [median([of(p, r) for p, r in col]) for col in cols]
        cells = [fmt(values[0])] + [f"{fmt(v)} | {v / values[0] if values[0] else 0:.2f}" for v in values[1:]]
        out.append(f"| {title} | " + " | ".join(cells) + " |")

    def each(title, key, of):
        cols = [" / ".join(f"{of(p, r):.0f}" for p, r in rounds(f"grown-{phase}-{key}")) for phase in phases]
        out.append(f"| {title} | " + " | ".join([cols[0]] + [f"{c} |" for c in cols[1:]]) + " |")

    per = lambda p, r, part: p["cpu_s"][part] * 1e6 / max(r["issued"], 1)
    each("preload ms, each round in turn", "preload", lambda p, r: r["preload_ms"])
    line("preload ms (end to end)", "preload", lambda p, r: r["preload_ms"], lambda v: f"{v:.0f}")
    line("preload: PostgreSQL µs per coupon", "preload",
         lambda p, r: p["cpu_s"]["postgres"] * 1e6 / r["total_coupons"], lambda v: f"{v:.1f}")
    line("drop: requests/s", "stream-s16", lambda p, r: r["requests_per_s"], lambda v: f"{v:.0f}")
    line("drop: PostgreSQL caught up after the load, ms", "stream-s16",
         lambda p, r: r["finalize_catch_up_ms"] or 0, lambda v: f"{v:.0f}")
    line("drop: finalizer rows/s (first to last commit)", "stream-s16",
         lambda p, r: r["finalize_delay"]["count"] / (r["finalize_delay"]["span_ms"] / 1000), lambda v: f"{v:.0f}")
    line("drop: ISSUED -> PostgreSQL p99 ms", "stream-s16",
         lambda p, r: r["finalize_delay"]["p99_ms"], lambda v: f"{v:.0f}")
    for part in ("postgres", "server", "machine"):
        line(f"drop: {part} µs per coupon", "stream-s16", lambda p, r, part=part: per(p, r, part), lambda v: f"{v:.1f}")
    ok = ["OK" if all(r["invariants_ok"] for _, r in rounds(f"grown-{phase}-stream-s16")) else "VIOLATED"
          for phase in phases]
    out.append("| invariants, every round | " + " | ".join([ok[0]] + [f"{o} |" for o in ok[1:]]) + " |")
    return out + [""]

lines = ["| run | requests/s | p50 ms | p90 ms | p99 ms | max ms | gRPC errors | issued | invariants | PG caught up (ms) | ISSUED->PG p50 / p99 ms | finalizer rows/s | Redis script calls (users per call) | vs raw Redis |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for name, r in rows.items():
    if r["mode"] in ("preload", "broker"):
        continue
    d = r.get("finalize_delay")
    delay = f"{d['p50_ms']:.0f} / {d['p99_ms']:.0f}" if d else "-"
    # Commits from first to last over the rows: the finalizer's rate while
    # it had a backlog (it also ran while the load was on).
    rate = f"{d['count'] / (d['span_ms'] / 1000):.0f}" if d and d["span_ms"] > 0 else "-"
    # All scripts count (finalizer, sweeper, preload too): users per call is a floor.
    calls = scripts.get(name)
    per_call = f"{calls} ({r['requests'] / calls:.1f})" if calls else "-"
    lat = r["latency_us"]
    errs = sum(r["grpc_errors"].values())
    ratio = f"{r['requests_per_s'] / raw:.2f}" if raw else "-"
    lines.append(
        f"| {name} | {r['requests_per_s']:.0f} | {lat['p50']/1000:.2f} | {lat['p90']/1000:.2f} | "
        f"{lat['p99']/1000:.2f} | {lat['max']/1000:.1f} | {errs} | {r['issued']} | "
        f"{'OK' if r['invariants_ok'] else 'VIOLATED'} | {r['finalize_catch_up_ms']} | {delay} | {rate} | {per_call} | {ratio} |")
lines.append("")
lines.append("| redis-benchmark EVALSHA (one-user issue script) | calls/s |")
lines.append("|---|---|")
for k, v in sorted(ref.items()):
    lines.append(f"| {k} | {v:.0f} |")
for name, r in rows.items():
    if r["mode"] == "preload":
        lines.append("")
        lines.append(f"Preload of {r['total_coupons']} coupons: {r['preload_ms']} ms end to end.")
    if r["mode"] == "broker":
        lines.append("")
        lines.append(
            f"Broker alone ({r['messages']} messages, the service's producer settings): "
            f"produce {r['produce_per_s']:.0f}/s acknowledged (idempotent, acks=all, "
            f"{r['produce_errors']} errors), consume {r['consume_per_s']:.0f}/s.")
perf = os.path.join(run, "kafka-producer-perf.txt")
if os.path.exists(perf):
    lines.append("")
    lines.append("kafka-producer-perf-test (acks=all, idempotent, 120-byte records): " + open(perf).read().strip())
vs_copy = os.path.join(run, "preload-vs-copy.md")
if os.path.exists(vs_copy):
    lines.append("")
    lines.append("Preload beside PostgreSQL's COPY of the same rows (bench-preload.sh):")
    lines.append("")
    lines.extend(open(vs_copy).read().splitlines())
def cpu(path):
    """`cpu (wall)` seconds of a client process, from cpu-seconds.py (ghz)
    or cpu_parts.py (coupond-bench)."""
    try:
        if path.endswith(".json"):
            p = json.load(open(path))
            return f"{p['cpu_s']['load_generator']:.1f} ({p['wall_s']:.1f})"
        c, w = open(path).read().split()
        return f"{float(c):.1f} ({float(w):.1f})"
    except (OSError, ValueError, KeyError):
        return "-"


ghz = {}
for path in sorted(glob.glob(os.path.join(run, "ghz", "*.json"))):
    name = os.path.basename(path)[:-5]
    if not name.endswith(("-event", "-config")):
        ghz[name] = json.load(open(path))
if ghz:
    lines.append("")
    lines.append("ghz beside coupond-bench, same server (ack), same run; ghz counts a stream as one call, "
                 "so stream rates are messages/s over ghz's total time and its stream latencies are of whole streams:")
    lines.append("")
    lines.append("| load | ghz requests/s | ghz p50 / p99 ms | ghz errors | ghz CPU s (wall s) | coupond-bench requests/s | coupond-bench p50 / p99 ms | coupond-bench CPU s (wall s) |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for name, g in ghz.items():
        pct = {int(p["percentage"]): p["latency"] / 1e6 for p in g.get("latencyDistribution") or []}
        errors = sum((g.get("errorDistribution") or {}).values())
        rate = g["rps"]
        if name.startswith("stream"):
            cfg = json.load(open(os.path.join(run, "ghz", name + "-config.json")))
            rate = g["count"] * cfg["stream-call-count"] / (g["total"] / 1e9)
        ours = rows.get(name, {})
        ours_lat = ours.get("latency_us", {})
        lines.append(
            f"| {name} | {rate:.0f} | {pct.get(50, 0):.2f} / {pct.get(99, 0):.2f} | {errors} | "
            f"{cpu(os.path.join(run, 'ghz', name + '.cpu'))} | "
            f"{ours.get('requests_per_s', 0):.0f} | {ours_lat.get('p50', 0)/1000:.2f} / {ours_lat.get('p99', 0)/1000:.2f} | "
            f"{cpu(os.path.join(run, name + '.parts.json'))} |")
lines = cost_table() + linger_table() + grown_table() + lines
open(os.path.join(run, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))

# Chart: throughput (bars) and p99 latency (line) against concurrency, unary runs.
series = {}
for mode in ("ack", "async"):
    pts = []
    for c in (100, 1000, 3000):
        r = rows.get(f"unary-{mode}-c{c}")
        if r:
            pts.append((c, r["requests_per_s"], r["latency_us"]["p99"] / 1000))
    series[mode] = pts
W, H, L, B, T = 720, 400, 70, 50, 40
maxq = max([p[1] for s in series.values() for p in s] + [raw, 1]) * 1.1
maxl = max([p[2] for s in series.values() for p in s] + [1]) * 1.1
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="20" text-anchor="middle" font-size="14">coupond unary Issue: throughput and p99 latency vs concurrent clients</text>']
plot_w, plot_h = W - L - 80, H - B - T
svg.append(f'<line x1="{L}" y1="{H-B}" x2="{L+plot_w}" y2="{H-B}" stroke="black"/>')
svg.append(f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>')
svg.append(f'<line x1="{L+plot_w}" y1="{T}" x2="{L+plot_w}" y2="{H-B}" stroke="black"/>')
for i in range(6):
    y = H - B - plot_h * i / 5
    svg.append(f'<text x="{L-5}" y="{y+4}" text-anchor="end">{maxq*i/5:.0f}</text>')
    svg.append(f'<text x="{L+plot_w+5}" y="{y+4}">{maxl*i/5:.1f}</text>')
svg.append(f'<text x="15" y="{T+plot_h/2}" transform="rotate(-90 15 {T+plot_h/2})" text-anchor="middle">requests/s (bars)</text>')
svg.append(f'<text x="{W-12}" y="{T+plot_h/2}" transform="rotate(90 {W-12} {T+plot_h/2})" text-anchor="middle">p99 ms (lines)</text>')
if raw:
    y = H - B - plot_h * raw / maxq
    svg.append(f'<line x1="{L}" y1="{y}" x2="{L+plot_w}" y2="{y}" stroke="gray" stroke-dasharray="4"/>')
    svg.append(f'<text x="{L+5}" y="{y-4}" fill="gray">raw Redis, one-user script: {raw:.0f}/s</text>')
colors = {"ack": "#1f77b4", "async": "#ff7f0e"}
groups = [100, 1000, 3000]
gw = plot_w / len(groups)
for gi, c in enumerate(groups):
    svg.append(f'<text x="{L+gw*gi+gw/2}" y="{H-B+18}" text-anchor="middle">{c} clients</text>')
for si, (mode, pts) in enumerate(series.items()):
    line = []
    for c, q, p99 in pts:
        gi = groups.index(c)
        x = L + gw * gi + gw * (0.25 + 0.25 * si)
        h = plot_h * q / maxq
        svg.append(f'<rect x="{x-gw*0.11}" y="{H-B-h}" width="{gw*0.22}" height="{h}" fill="{colors[mode]}" opacity="0.6"/>')
        line.append(f"{x},{H-B-plot_h*p99/maxl}")
    if line:
        svg.append(f'<polyline points="{" ".join(line)}" fill="none" stroke="{colors[mode]}" stroke-width="2"/>')
    svg.append(f'<rect x="{L+10+si*150}" y="{H-18}" width="12" height="12" fill="{colors[mode]}"/>')
    svg.append(f'<text x="{L+26+si*150}" y="{H-8}">durability={mode}</text>')
svg.append("</svg>")
open(os.path.join(run, "chart.svg"), "w").write("\n".join(svg))
