#!/usr/bin/env python3
"""Connections: idle memory up to the fd limit, a reconnect storm, subscribe churn.

usage: bench/conns.py [--rounds 3] [--memory] [--storm] [--churn] [--storm-clients 18000]
       bench/conns.py --profile DIR [--storm-clients 18000]

memory  One node (with Redis, as deployed; and floor) holding N idle subscribed connections
        (100 channels), N = 1,000 .. 19,000 (a process may hold 20,000 file descriptors
        here): RSS per connection over the node's own RSS before the connections, from
        ../shared/bench/run.sh's idle figures (`--connect-only N`, one load generator).
storm   Two nodes + Redis; two load generator processes (one per node, each below its own
        20,000-descriptor limit, sources spread over 127.0.0.1-4) open --storm-clients
        connections each at once (each connects, upgrades and subscribes; 4,096 attempts in
        flight per process): connected, time until the last one is subscribed, the nodes' CPU
        per connection over the storm, and the kernel's listen-queue counters
        (TcpExtListenOverflows / ListenDrops, TCPSynRetrans; nstat) over the storm.
churn   Two nodes + Redis; 200 connections each subscribe to a fresh channel (a first local
        subscriber: the node SUBSCRIBEs it in Redis), wait for `subscribed`, unsubscribe, wait
        for `unsubscribed`, and again (`loadgen --churn`), 2 s warm-up, 8 s measured: cycles
        per second, subscribe p50/p99, and the nodes' and Redis's CPU per cycle.

--profile DIR runs one storm per server with node 0 sampled by `perf record` (cpu-clock, with
stacks) and writes perf's report to DIR/storm-<server>.txt instead of measuring.

With none of --memory, --storm, --churn, all three run. Rounds alternate the servers
(Switchyard, floor, and with BASE_BIN=<binary> that binary as server "base") so a slow
stretch hits them all. Results go to
target/bench-results/conns-<stamp>.jsonl; the tables are printed at the end and the memory
curve is drawn to docs/curves/memory.png.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import curves

ROOT = curves.ROOT
FLOOR = ROOT / "target" / "bench-floor" / "release" / "floor"
LOADGEN = ROOT / "target" / "release" / "loadgen"
SY = ROOT / "target" / "dist" / "switchyard"
PLAIN = ROOT / "bench" / "configs" / "plain.toml"
MEMORY_POINTS = [1000, 10000, 19000]
# BASE_BIN: another switchyard binary, run as server "base" beside the current one (a
# before/after pair measured in the same rounds).
BASE_BIN = os.environ.get("BASE_BIN")
CLK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[conns] {msg}", file=sys.stderr, flush=True)


def sy_peer(server):
    """run.sh's peer for a server name."""
    if server == "floor":
        return "floor"
    peer = curves.sy("plain.toml")
    return peer.replace(str(SY), BASE_BIN) if server == "base" else peer


def run_recorded(kind, server, n, rnd, out, run_opts, loadgen_args):
    """One run.sh `custom` run against `server`, tagged with what it measured."""
    curves.run_custom(run_opts, sy_peer(server), f"{kind}/{n}/{server}", loadgen_args,
                      ("conns", {"kind": kind, "server": server, "n": n, "round": rnd}), out)


def memory_run(server, n, rnd, out):
    run_recorded("memory", server, n, rnd, out, ["--nodes", "1", "--settle", "5"],
                 ["--connect-only", str(n), "--channels", "100", "--hold", "5",
                  "--connect-concurrency", "256"])


def churn_run(server, rnd, out):
    run_recorded("churn", server, 200, rnd, out, ["--nodes", "2"],
                 ["--churn", "200", "--warmup", "2", "--duration", "8"])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, name):
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited before listening")
            time.sleep(0.1)
    raise RuntimeError(f"{name} not listening on {port}")


def ticks(pid):
    """utime + stime of a process, clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def slab_kib():
    """The kernel's slab memory (socket structures live there), KiB."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    return 0


def nstat():
    """The kernel's TCP counters (absolute values)."""
    out = subprocess.run(["nstat", "-az"], stdout=subprocess.PIPE, text=True).stdout
    vals = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            vals[parts[0]] = int(parts[1])
    return vals


def storm_run(server, clients, rnd, out, work, profile=None):
    """One storm round, written to `out`; with `profile` (a path), instead samples node 0's
    stacks with `perf record` over the storm and writes perf's report there (the figures
    of a profiled round are not recorded: sampling costs CPU)."""
    procs = []
    try:
        rport = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no", "--loglevel", "warning"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(redis)
        wait_port(rport, redis, "redis-server")
        nodes, ports = [], []
        for i in range(2):
            port = free_port()
            url = f"redis://127.0.0.1:{rport}"
            if server == "floor":
                p = subprocess.Popen([str(FLOOR)], env=dict(os.environ, PORT=str(port), REDIS_URL=url),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            else:
                p = subprocess.Popen([BASE_BIN if server == "base" else str(SY), "--listen", f"127.0.0.1:{port}", "--redis-url", url,
                                      "--config", str(PLAIN)],
                                     stdout=subprocess.DEVNULL, stderr=open(work / f"node{i}.log", "w"))
            procs.append(p)
            wait_port(port, p, f"node {i}")
            nodes.append(p)
            ports.append(port)
        time.sleep(3)
        base_rss = [rss_kib(p.pid) for p in nodes]
        t0 = [ticks(p.pid) for p in nodes]
        r0 = ticks(redis.pid)
        k0 = nstat()
        s0 = slab_kib()
        perf = None
        if profile:
            # cpu-clock: this machine's virtual CPUs have no hardware cycle counter. dwarf: the
            # release builds keep no frame pointers.
            perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "2000", "--call-graph", "dwarf,16384",
                                     "-o", str(work / "perf.data"), "-p", str(nodes[0].pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(perf)
            time.sleep(1)
        # Each load generator touches a file when all its connections are subscribed.
        gens = []
        for i, port in enumerate(ports):
            ready = work / f"ready{i}"
            ready.unlink(missing_ok=True)
            g = subprocess.Popen(
                [str(LOADGEN), "--targets", f"ws://127.0.0.1:{port}/ws", "--idle", str(clients),
                 "--channels", "100", "--hold", "3", "--connect-concurrency", "4096",
                 "--connect-timeout", "120", "--sources", "4",
                 "--phase-hook", f"sh -c 'test $0 = ready && touch {ready}; true'"],
                stdout=subprocess.PIPE, stderr=open(work / f"loadgen{i}.log", "w"), text=True)
            procs.append(g)
            gens.append((g, ready))
        start = time.monotonic()
        while not all(r.exists() or g.poll() is not None for g, r in gens):
            time.sleep(0.01)
        wall = time.monotonic() - start
        t1 = [ticks(p.pid) for p in nodes]
        if perf:
            # Only the storm: the hold and the disconnects after it are not its cost.
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=60)
        r1 = ticks(redis.pid)
        k1 = nstat()
        s1 = slab_kib()
        held_rss = [rss_kib(p.pid) for p in nodes]
        reports = []
        for g, _ in gens:
            stdout, _ = g.communicate(timeout=300)
            lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
            reports.append(json.loads(lines[-1]) if lines else {})
        connected = sum(r.get("connected", 0) for r in reports)
        if perf:
            node0 = (t1[0] - t0[0]) / CLK
            write_profile(work / "perf.data", Path(profile), f"storm, {server}, node 0 of 2, "
                          f"{connected}/{2 * clients} connected in {wall:.2f} s; node 0 "
                          f"{node0:.2f} s CPU ({node0 * 2e6 / max(connected, 1):.0f} µs per "
                          f"connection, sampled)")
            return
        cpu_s = sum(b - a for a, b in zip(t0, t1)) / CLK
        kern = {k: k1.get(k, 0) - k0.get(k, 0) for k in
                ("TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtTCPSynRetrans",
                 "TcpExtTCPReqQFullDrop", "TcpExtTCPReqQFullDoCookies")}
        rec = {"conns": {"kind": "storm", "server": server, "n": 2 * clients, "round": rnd},
               "connected": connected, "wall_s": round(wall, 3),
               "loadgen_wall_ms": [((r.get("connect") or {}).get("wall_ms")) for r in reports],
               "connect_p99_ms": [((r.get("connect") or {}).get("p99_ms")) for r in reports],
               "server_cpu_s": round(cpu_s, 3),
               "cpu_us_per_conn": round(cpu_s * 1e6 / max(connected, 1), 2),
               "redis_cpu_s": round((r1 - r0) / CLK, 3),
               "rss_kib_per_conn": round(sum(b - a for a, b in zip(base_rss, held_rss)) / max(connected, 1), 3),
               "kernel": kern,
               # Both ends of every loopback connection are on this machine: half is one side's.
               "slab_kib_per_conn_side": round((s1 - s0) / max(2 * connected, 1), 3), "errors": [((r.get("errors") or {}).get("total")) for r in reports]}
        log(f"storm {server}: {connected}/{2 * clients} in {wall:.2f} s, "
            f"{rec['cpu_us_per_conn']} µs/conn, {kern}")
        with open(out, "a") as f:
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def write_profile(data, dest, title):
    """perf's report of `data` to `dest`: self time by module and symbol, then by symbol
    with callers, for a reader to find where a storm's CPU goes."""
    def perf_report(*args):
        return subprocess.run(["perf", "report", "-i", str(data), "--stdio", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    flat = perf_report("--no-children", "--sort", "dso,sym", "-g", "none", "--percent-limit", "0.3")
    by_dso = perf_report("--no-children", "--sort", "dso", "-g", "none")
    tree = perf_report("--children", "--sort", "sym", "-g", "caller,0.5,callee,function,percent",
                       "--percent-limit", "3")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(f"# {title}\n\n## self time by module\n{by_dso}\n## self time by symbol\n"
                    f"{flat}\n## inclusive time, with callees\n{tree}")
    log(f"profile: {dest}")


def report(path):
    mem, storm, churn = {}, {}, {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            c = r["conns"]
            if c["kind"] == "memory":
                idle = r.get("idle") or {}
                mem.setdefault(c["server"], {}).setdefault(c["n"], []).append(
                    (idle.get("rss_per_conn_kib"), (r.get("loadgen") or {}).get("connected")))
            elif c["kind"] == "churn":
                churn.setdefault(c["server"], []).append(r)
            else:
                storm.setdefault(c["server"], []).append(r)
    med = {}
    if mem:
        print("\n## Idle memory per connection, one node (medians of rounds)\n")
        print("| connections | " + " | ".join(f"{s} KiB/conn" for s in sorted(mem)) + " | ratio |")
        print("|---:|" + "---:|" * len(mem) + "---:|")
        for n in sorted({n for s in mem.values() for n in s}):
            row = []
            for s in sorted(mem):
                vals = [v for v, _ in mem[s].get(n, []) if v is not None]
                med.setdefault(s, {})[n] = statistics.median(vals) if vals else None
                row.append(curves.fmt(med[s][n], 3))
            sw, fl = med.get("switchyard", {}).get(n), med.get("floor", {}).get(n)
            print(f"| {n:,} | " + " | ".join(row) + f" | {curves.fmt(sw / fl if sw and fl else None)} |")
        print("\nratio: switchyard / floor.")
    if storm:
        print("\n## Storm: two nodes, all clients connecting at once (medians of rounds)\n")
        print("| server | connected | seconds to all subscribed | CPU µs/conn (× floor) | "
              "RSS KiB/conn | kernel slab KiB/socket | listen overflows / drops | SYN retransmits |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        fl = statistics.median(r["cpu_us_per_conn"] for r in storm.get("floor", [])) if storm.get("floor") else None
        for s, runs in sorted(storm.items()):
            cpu = statistics.median(r["cpu_us_per_conn"] for r in runs)
            print(f"| {s} | {min(r['connected'] for r in runs):,} of {runs[0]['conns']['n']:,} "
                  f"| {statistics.median(r['wall_s'] for r in runs):.2f} "
                  f"| {cpu:.1f} ({curves.fmt(cpu / fl if fl else None)}) "
                  f"| {statistics.median(r['rss_kib_per_conn'] for r in runs):.2f} "
                  f"| {statistics.median(r.get('slab_kib_per_conn_side', 0) for r in runs):.2f} "
                  f"| {max(r['kernel']['TcpExtListenOverflows'] for r in runs)} / "
                  f"{max(r['kernel']['TcpExtListenDrops'] for r in runs)} "
                  f"| {max(r['kernel']['TcpExtTCPSynRetrans'] for r in runs)} |")
            print(f"|  rounds | " + ", ".join(f"{r['wall_s']:.2f} s / {r['cpu_us_per_conn']:.1f} µs"
                                              for r in runs) + " | | | | | | |")
    if churn:
        print("\n## Subscribe churn: two nodes + Redis, 200 connections (medians of rounds)\n")
        print("| server | cycles/s | subscribe p50 / p99 ms | server CPU µs/cycle (× floor) | "
              "Redis CPU µs/cycle | errors |")
        print("|---|---:|---:|---:|---:|---:|")
        rows = {}
        for s, runs in sorted(churn.items()):
            def per(r, who):
                cyc = (r.get("loadgen") or {}).get("cycles")
                cpu = (r.get(who) or {}).get("cpu_s")
                return cpu * 1e6 / cyc if cyc and cpu is not None else None
            lg = [r.get("loadgen") or {} for r in runs]
            srv = [v for v in (per(r, "servers") for r in runs) if v is not None]
            red = [v for v in (per(r, "redis") for r in runs) if v is not None]
            rows[s] = (statistics.median(x.get("subscribes_per_s", 0) for x in lg),
                       statistics.median((x.get("subscribe_ms") or {}).get("p50", 0) for x in lg),
                       statistics.median((x.get("subscribe_ms") or {}).get("p99", 0) for x in lg),
                       statistics.median(srv) if srv else None,
                       statistics.median(red) if red else None,
                       max((x.get("errors") or {}).get("total", 0) for x in lg))
        fl = rows.get("floor", (None,) * 6)[3]
        for s, (cps, p50, p99, srv, red, err) in rows.items():
            print(f"| {s} | {cps:,.0f} | {p50:.3f} / {p99:.3f} "
                  f"| {curves.fmt(srv, 1)} ({curves.fmt(srv / fl if srv and fl else None)}) "
                  f"| {curves.fmt(red, 1)} | {err} |")
    return med


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--storm", action="store_true")
    ap.add_argument("--churn", action="store_true")
    ap.add_argument("--storm-clients", type=int, default=18000)
    ap.add_argument("--report", help="only print the tables of this results file")
    ap.add_argument("--profile", metavar="DIR",
                    help="instead of measuring: one storm per server with node 0 under perf "
                         "record; reports to DIR/storm-<server>.txt")
    a = ap.parse_args()
    if a.report:
        path = Path(a.report)
    else:
        if not a.memory and not a.storm and not a.churn:
            a.memory = a.storm = a.churn = True
        curves.prepare()
        if a.profile:
            with tempfile.TemporaryDirectory(prefix="conns-", dir=curves.RESULTS) as tmp:
                for server in ["switchyard", "floor"] + (["base"] if BASE_BIN else []):
                    storm_run(server, a.storm_clients, 0, None, Path(tmp),
                              profile=Path(a.profile) / f"storm-{server}.txt")
            return
        path = curves.RESULTS / f"conns-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.jsonl"
        log(f"results: {path}")
        with tempfile.TemporaryDirectory(prefix="conns-", dir=curves.RESULTS) as tmp:
            servers = ["switchyard", "floor"] + (["base"] if BASE_BIN else [])
            for rnd in range(1, a.rounds + 1):
                for server in servers:
                    # The base binary's memory is not this comparison's question (one
                    # node's figures move little between versions); its storm and churn are.
                    if a.memory and server != "base":
                        for n in MEMORY_POINTS:
                            memory_run(server, n, rnd, path)
                    if a.storm:
                        storm_run(server, a.storm_clients, rnd, path, Path(tmp))
                    if a.churn:
                        churn_run(server, rnd, path)
    med = report(path)
    if med:
        curves.draw_memory(med, path.stem.removeprefix("conns-"))


if __name__ == "__main__":
    main()
