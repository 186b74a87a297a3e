#!/usr/bin/env python3
"""Cost curves: Switchyard and floor side by side, one dimension swept at a time.

usage: bench/curves.py [--dims subs,channels,groups,conns,payload] [--rounds 3] [--quick]
       bench/curves.py --plot target/bench-results/curves-<stamp>.jsonl

For every point of every dimension it runs ../shared/bench/run.sh's `custom` scenario (through
the harness bench/compare.sh lays out, `PREPARE_ONLY=1`) against each server, round after
round (a round runs every point and server once, so a slow stretch of the shared machine hits
one round of everything), and records server CPU per delivery, p99 latency, RSS and loss.
Then it prints a markdown table per dimension (medians over the rounds, ratio to floor) and
draws docs/curves/<dimension>.png (matplotlib, from a venv under target/ it creates).

Dimensions (offered deliveries/s held constant where it can be, so the curve is the cost of
the dimension, not of the load):
  subs      subscribers of one channel, 1 .. 10,000; 20,000 deliveries/s
  channels  channels with 2 subscribers each, 10 .. 100,000 (up to 100 channels per
            connection); 10,000 deliveries/s, each message to the next channel
  groups    delivery groups (tenants) on one channel of 2,000 subscribers, 1 .. 1,000;
            20,000 deliveries/s; Switchyard with and without allow-all (its deliver hook runs
            once per group); floor has no groups (the tokens are ignored): its line is flat
  conns     idle connections held on one node beside the fanout-light load (1,000
            subscribers, 20,000 deliveries/s), 1,000 .. 17,000 (the node's fd limit is 20,000)
  payload   data size, 64 B .. 64 KiB; fanout-light shape (1,000 subscribers on 10 channels),
            200 msg/s, fewer above 8 KiB so loopback stays below ~200 MB/s

Environment: QUIET_WAIT (run.sh --quiet-wait, default 30), JOBS (cargo -j, default 1).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "target" / "bench-results"
HARNESS = RESULTS / "harness"
PLOTS = ROOT / "docs" / "curves"
SECRET = "bench-curves-secret-0123456789"
COMMON = ["--warmup", "2", "--duration", "8", "--drain", "5", "--payload", "256"]


def sy(config, env=""):
    """A run.sh `cmd:` peer for the dist binary with a bench config."""
    binary = ROOT / "target" / "dist" / "switchyard"
    return (f"cmd:{env}exec {binary} --listen 127.0.0.1:{{PORT}} --redis-url {{REDIS_URL}} "
            f"--config {ROOT / 'bench' / 'configs' / config}")


# The groups sweep's tokens need the secret; the payload sweep's 64 KiB data makes a publish
# frame a little larger than the default 64 KiB limit (floor has none).
ENV = f"SWITCHYARD__AUTH__HS256_SECRET={SECRET} SWITCHYARD__LIMITS__MAX_MESSAGE_BYTES=131072 "
SERVERS = {
    "switchyard": sy("plain.toml", ENV),
    "allow-all": sy("allow-all.toml", ENV),
    "floor": "floor",
}
LABELS = {"switchyard": "Switchyard (no plugin)", "allow-all": "Switchyard + allow-all",
          "floor": "floor"}


def point_args(dim, x, quick):
    """(run.sh nodes, loadgen args, what one unit of x means) for one point."""
    if dim == "subs":
        rate = 20000 / x
        return 2, ["--subs", str(x), "--channels", "1", "--publishers", "1",
                   "--rate", f"{rate:g}"] + COMMON
    if dim == "channels":
        conns = min(2 * x, 2000)
        per_conn = 2 * x // conns
        return 2, ["--subs", str(conns), "--channels", str(x), "--subs-per-conn", str(per_conn),
                   "--publishers", "1", "--rate", "5000"] + COMMON
    if dim == "groups":
        return 2, ["--subs", "2000", "--channels", "1", "--publishers", "1", "--rate", "10",
                   "--tenants", str(x), "--hs256-secret", SECRET] + COMMON
    if dim == "conns":
        return 1, ["--subs", "1000", "--channels", "10", "--publishers", "1", "--rate", "200",
                   "--hold-extra", str(x), "--connect-concurrency", "512"] + COMMON
    if dim == "payload":
        rate = min(200, 2_000_000 // x)
        args = ["--subs", "1000", "--channels", "10", "--publishers", "1", "--rate", str(rate)]
        return 2, args + [a if a != "256" else str(x) for a in COMMON]
    raise ValueError(dim)


DIMS = {
    # dimension: (points, quick points, servers, x label)
    "subs": ([1, 100, 1000, 10000], [1, 10000], ["switchyard", "floor"],
             "subscribers of one channel"),
    "channels": ([10, 1000, 100000], [10, 100000], ["switchyard", "floor"],
                 "channels (2 subscribers each)"),
    "groups": ([1, 10, 100, 1000], [1, 1000], ["switchyard", "allow-all", "floor"],
               "delivery groups (tenants) on one channel of 2,000 subscribers"),
    "conns": ([1000, 8000, 17000], [1000, 17000], ["switchyard", "floor"],
              "idle connections held on the node (beside 1,000 subscribers)"),
    "payload": ([64, 1024, 16384, 65536], [64, 65536], ["switchyard", "floor"],
                "payload bytes"),
}


def log(msg):
    print(f"[curves] {msg}", file=sys.stderr, flush=True)


def prepare():
    env = dict(os.environ, PREPARE_ONLY="1", SERVERS="redis allow-all floor",
               JOBS=os.environ.get("JOBS", "1"))
    subprocess.run([str(ROOT / "bench" / "compare.sh")], env=env, check=True)


def run_custom(run_opts, peer, label, loadgen_args, tag, out):
    """One run.sh `custom` run; its JSON line, with `tag` added, is appended to `out`."""
    cmd = [str(HARNESS / "run.sh"), *run_opts, "--quiet-wait", os.environ.get("QUIET_WAIT", "30"),
           "--label", label, peer, "custom", "--", *loadgen_args]
    env = dict(os.environ, LOADGEN_PATH="/ws", LOADGEN_WINDOW_MODE="deliveries")
    log(f"{label}, round {tag[1]['round']}")
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        log(f"run failed: {label} (rc {p.returncode})")
        return
    r = json.loads(lines[-1])
    r[tag[0]] = tag[1]
    with open(out, "a") as f:
        f.write(json.dumps(r, separators=(",", ":")) + "\n")


def run_point(dim, x, server, rnd, quick, out):
    nodes, lg = point_args(dim, x, quick)
    run_custom(["--nodes", str(nodes)], SERVERS[server], f"curves/{dim}/{x}/{server}", lg,
               ("curve", {"dim": dim, "x": x, "server": server, "round": rnd}), out)


def figures(r):
    lg = r.get("loadgen") or {}
    srv = r.get("servers") or {}
    lat = lg.get("latency_ms") or {}
    conns = (lg.get("subs") or 0) + (lg.get("publishers") or 0)
    conns += r["curve"]["x"] if r["curve"]["dim"] == "conns" else 0
    rss = None
    if srv.get("rss_kib_end") is not None and srv.get("rss_kib_baseline") is not None and conns:
        rss = (srv["rss_kib_end"] - srv["rss_kib_baseline"]) / conns
    return {"cpu": srv.get("cpu_us_per_delivery"), "p99": lat.get("p99"),
            "lost": lg.get("lost"), "dps": lg.get("delivered_per_s"), "rss": rss,
            "errors": (lg.get("errors") or {}).get("total")}


def medians(path):
    """{dim: {server: {x: figures (medians; lost and errors the largest)}}}."""
    by = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            c = r["curve"]
            by.setdefault(c["dim"], {}).setdefault(c["server"], {}).setdefault(c["x"], []).append(figures(r))
    out = {}
    for dim, servers in by.items():
        for server, xs in servers.items():
            for x, runs in xs.items():
                m = {}
                for k in runs[0]:
                    vals = [f[k] for f in runs if f[k] is not None]
                    if not vals:
                        m[k] = None
                    elif k in ("lost", "errors"):
                        m[k] = max(vals)
                    else:
                        m[k] = statistics.median(vals)
                m["rounds"] = len(runs)
                out.setdefault(dim, {}).setdefault(server, {})[x] = m
    return out


def fmt(v, d=2):
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{d}f}"


def table(med):
    for dim in [d for d in DIMS if d in med]:
        servers = [s for s in DIMS[dim][2] if s in med[dim]]
        xs = sorted({x for s in servers for x in med[dim][s]})
        print(f"\n## {dim}: {DIMS[dim][3]}\n")
        head = " | ".join(f"{LABELS[s]} CPU µs/delivery (× floor) | p99 ms | lost" for s in servers)
        print(f"| x | {head} |")
        print("|---:|" + "---:|---:|---:|" * len(servers))
        for x in xs:
            fl = med[dim].get("floor", {}).get(x, {})
            cells = []
            for s in servers:
                m = med[dim][s].get(x)
                if m is None:
                    cells += ["–", "–", "–"]
                    continue
                r = (m["cpu"] / fl["cpu"]) if m["cpu"] and fl.get("cpu") else None
                cells += [f"{fmt(m['cpu'])} ({fmt(r)})", fmt(m["p99"], 3), fmt(m["lost"], 0)]
            print(f"| {x:,} | " + " | ".join(cells) + " |")


def plotting_python():
    """A Python with matplotlib: target/bench-venv, created (pip) on first use."""
    venv = ROOT / "target" / "bench-venv"
    py = venv / "bin" / "python3"
    if not py.exists():
        log("creating target/bench-venv with matplotlib (pip)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "matplotlib"], check=True)
    PLOTS.mkdir(parents=True, exist_ok=True)
    return py


def draw_memory(med, stamp):
    """docs/curves/memory.png: idle RSS per connection against connections held, per server."""
    script = r'''
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
med, out, stamp = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
fig, ax = plt.subplots(figsize=(6, 4))
for server, pts in sorted(med.items()):
    xs = sorted(pts, key=int)
    ax.plot([int(x) for x in xs], [pts[x] for x in xs], marker="o", label=server)
ax.set_xlabel("idle subscribed connections on one node")
ax.set_ylabel("RSS KiB per connection")
ax.set_ylim(bottom=0)
ax.grid(True, alpha=0.3)
ax.legend()
fig.suptitle(f"idle memory: medians of rounds, bench/conns.py {stamp}")
fig.tight_layout()
fig.savefig(f"{out}/memory.png", dpi=90)
'''
    subprocess.run([str(plotting_python()), "-c", script, json.dumps(med), str(PLOTS), stamp],
                   check=True)
    log(f"memory plot in {PLOTS.relative_to(ROOT)}/memory.png")


def plot(med, stamp):
    py = plotting_python()
    spec = {d: {"xlabel": DIMS[d][3], "servers": [LABELS[s] for s in DIMS[d][2]]} for d in DIMS}
    data = {d: {LABELS[s]: sorted((x, m["cpu"], m["p99"]) for x, m in xs.items())
                for s, xs in servers.items()} for d, servers in med.items()}
    script = r'''
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
data, spec, out, stamp = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
for dim, series in data.items():
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name in spec[dim]["servers"]:
        pts = series.get(name)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        a.plot(xs, [p[1] for p in pts], marker="o", label=name)
        b.plot(xs, [p[2] for p in pts], marker="o", label=name)
    for ax, y in ((a, "server CPU µs per delivery"), (b, "p99 latency, ms")):
        ax.set_xscale("log")
        ax.set_xlabel(spec[dim]["xlabel"])
        ax.set_ylabel(y)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    a.set_yscale("log")
    b.set_yscale("log")
    fig.suptitle(f"{dim}: medians of rounds, bench/curves.py {stamp}")
    fig.tight_layout()
    fig.savefig(f"{out}/{dim}.png", dpi=90)
'''
    subprocess.run([str(py), "-c", script, json.dumps(data), json.dumps(spec), str(PLOTS), stamp],
                   check=True)
    log(f"plots in {PLOTS.relative_to(ROOT)}/")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default=",".join(DIMS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="two or three points per dimension")
    ap.add_argument("--plot", help="only print the tables and draw the plots of this results file")
    a = ap.parse_args()
    if a.plot:
        path = Path(a.plot)
    else:
        dims = [d for d in a.dims.split(",") if d]
        for d in dims:
            if d not in DIMS:
                sys.exit(f"unknown dimension {d!r} ({', '.join(DIMS)})")
        prepare()
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"curves-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.jsonl"
        log(f"results: {path}")
        for rnd in range(1, a.rounds + 1):
            for d in dims:
                points = DIMS[d][1] if a.quick else DIMS[d][0]
                for x in points:
                    for s in DIMS[d][2]:
                        run_point(d, x, s, rnd, a.quick, path)
    if not path.exists() or path.stat().st_size == 0:
        sys.exit("no results")
    med = medians(path)
    print(f"# Cost curves ({path.name})\n\nMedians over rounds; CPU is all server nodes' CPU per "
          "delivery, with its ratio to floor at the same point.")
    table(med)
    plot(med, path.stem.removeprefix("curves-"))


if __name__ == "__main__":
    main()
