import subprocess, sys, re, collections
data = sys.argv[1]
out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,symbol", "--stdio", "-q", "--percent-limit", "0"], capture_output=True, text=True).stdout
groups = collections.Counter(); tops = []
for line in out.splitlines():
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
    if not m: continue
    pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
    tops.append((pct, dso, sym))
    if kind == "k": g = "kernel"
    elif "mi_" in sym or "mimalloc" in sym: g = "allocator"
    elif dso.startswith("libc"): g = "libc:" + sym.split("@")[0][:30]
    elif dso.startswith("librdkafka") or "rd_kafka" in sym or sym.startswith("rd_"): g = "librdkafka"
    else:
        s = re.sub(r"^<+", "", sym)
        crate = re.split(r"::|<| ", s)[0]
        g = crate
    groups[g] += pct
for g, p in groups.most_common(25): print(f"{p:6.2f}% {g}")
print("--- top symbols")
for pct, dso, sym in tops[:40]: print(f"{pct:6.2f}% {dso[:12]:12} {sym[:150]}")
