import subprocess, sys, re, collections
B = [("kernel (scheduling, sockets, futexes)", lambda d,k,s,c: k=="k"),
     ("allocator and memmove", lambda d,k,s,c: "mi_" in s or "memmove" in s or s.startswith(("malloc","_int_free","cfree","free"))),
     ("gRPC and HTTP/2 (h2, hyper, http, tonic, tower, axum, bytes, slab, indexmap)", lambda d,k,s,c: c in ("h2","hyper","hyper_util","http","tonic","tower","axum","bytes","slab","indexmap","http_body","http_body_util","httparse")),
     ("runtime and futures (tokio, futures_util, futures_channel)", lambda d,k,s,c: c in ("tokio","futures_util","futures_channel","futures_core","tokio_util","tokio_stream")),
     ("Kafka producer (librdkafka, LZ4, rdkafka)", lambda d,k,s,c: d.startswith("librdkafka") or s.startswith(("rd_","LZ4")) or c=="rdkafka"),
     ("metrics (metrics, metrics_util, hashing)", lambda d,k,s,c: c in ("metrics","metrics_util","metrics_exporter_prometheus") or "sip::Hasher" in s),
     ("Redis client (redis, combine)", lambda d,k,s,c: c in ("redis","combine","deadpool","deadpool_redis")),
     ("protobuf (prost)", lambda d,k,s,c: c=="prost"),
     ("coupond's own code", lambda d,k,s,c: c=="coupond"),
]
def crate(sym):
    s = re.sub(r"^<+", "", sym)
    return re.split(r"::|<| ", s)[0]
def buckets(data):
    out = subprocess.run(["perf","report","-i",data,"--no-children","--sort","dso,symbol","--stdio","-q","--percent-limit","0"],capture_output=True,text=True).stdout
    acc = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
        if not m: continue
        p,d,k,s = float(m.group(1)),m.group(2),m.group(3),m.group(4).strip()
        for name,f in B:
            if f(d,k,s,crate(s)): acc[name]+=p; break
        else: acc["other (core, alloc, std, libc, vdso clock)"]+=p
    return acc
u, st = buckets("unary.data"), buckets("stream.data")
names = [n for n,_ in B] + ["other (core, alloc, std, libc, vdso clock)"]
print("| share of the server's samples | unary-c1000 | stream-s16 |")
print("|---|---|---|")
for n in names: print(f"| {n} | {u[n]:.1f}% | {st[n]:.1f}% |")
