#!/usr/bin/env python3
"""Markdown tables from bench/compare.sh results (run.sh JSON lines plus a "server" field).

usage: python3 bench/table.py RESULTS.jsonl

For every scenario and server: delivered/s, lost, p50/p99 latency (ms), server CPU µs per
delivery and, for the idle scenario, server RSS KiB per connection. With several rounds
(compare.sh ROUNDS) each figure is its median over the server's accepted runs, except lost,
duplicates, reordered and errors (the largest: "nothing lost" must hold in every run) and
connected (the smallest). Each figure is followed by its ratio to floor and to seed-ws from
the same file. Then the targets of bench/README.md, each with PASS / FAIL / n/a, and each
round's CPU ratios, so the spread behind a median is visible.
"""

import json
import statistics
import sys

ORDER = ["embedded", "base-embedded", "embedded-history", "redis", "base-redis", "history",
         "cluster", "allow-all", "allow-all-js", "allow-all-py", "base-allow-all", "allow-all-shadow", "redact",
         "floor", "nchan", "nchan:nostore", "seed-ws"]
NAMES = {
    "embedded": "switchyard embedded (1 node)",
    "redis": "switchyard + Redis (2 nodes)",
    "allow-all": "switchyard + Redis + allow-all",
    "allow-all-js": "switchyard + Redis + allow-all in JS",
    "allow-all-py": "switchyard + Redis + allow-all in Python",
    "history": "switchyard + Redis, history on",
    "embedded-history": "switchyard embedded, history on",
    "base-embedded": "base: embedded (1 node)",
    "base-redis": "base: + Redis (2 nodes)",
    "base-allow-all": "base: + Redis + allow-all",
    "floor": "floor (2 nodes)",
    "seed-ws": "seed-ws (2 nodes)",
    "redact": "switchyard + Redis + redact",
    "allow-all-shadow": "switchyard + Redis + allow-all, shadowed",
    "nchan": "nchan (2 nodes, Redis distributed)",
    "nchan:nostore": "nchan (2 nodes, Redis nostore)",
}
SCENARIOS = ["fanout-light", "fanout", "throughput", "idle"]
OFFERED = {"fanout-light": "20,000/s offered", "fanout": "200,000/s offered", "throughput": "max, window-bounded"}


def load(path):
    """Accepted runs per (scenario, server), in file order."""
    runs = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            c = r.get("compare", {})
            if not c.get("accepted", True):
                continue
            runs.setdefault((r.get("scenario"), r.get("server", r.get("peer"))), []).append(r)
    return runs


# How the figures of several runs combine into one: worst case for counts that must be zero
# (or complete), the median for everything else.
WORST_HIGH = {"lost", "errors", "dups", "reordered"}
WORST_LOW = {"connected"}


def combine(figures):
    """One set of figures from the figures of several runs."""
    out = {}
    for key in figures[0]:
        values = [f[key] for f in figures if f[key] is not None]
        if not values:
            out[key] = None
        elif not all(isinstance(v, (int, float)) for v in values):
            out[key] = values[-1]
        elif key in WORST_HIGH:
            out[key] = max(values)
        elif key in WORST_LOW:
            out[key] = min(values)
        else:
            out[key] = statistics.median(values)
    return out


def get(r, *path):
    v = r
    for k in path:
        if not isinstance(v, dict):
            return None
        v = v.get(k)
    return v


def metrics(r):
    """The figures of one run (None when absent)."""
    lg = r.get("loadgen") or {}
    lat = lg.get("latency_ms") or {}
    if not lat and isinstance(lg.get("latency_us"), dict):  # the shared loadgen's field
        lat = {k: v / 1000.0 for k, v in lg["latency_us"].items() if isinstance(v, (int, float))}
    return {
        "delivered_per_s": lg.get("delivered_per_s"),
        "lost": lg.get("lost"),
        "expected": lg.get("expected"),
        "p50": lat.get("p50"),
        "p99": lat.get("p99"),
        "cpu_us": get(r, "servers", "cpu_us_per_delivery"),
        # Servers and Redis together: what the whole deployment spends per delivery.
        "allin_us": ((get(r, "servers", "cpu_s") + get(r, "redis", "cpu_s")) * 1e6
                     / (lg["delivered_per_s"] * r["window_s"])
                     if get(r, "servers", "cpu_s") is not None and get(r, "redis", "cpu_s") is not None
                     and lg.get("delivered_per_s") and r.get("window_s") else None),
        "rss_per_conn": get(r, "idle", "rss_per_conn_kib"),
        "connected": lg.get("connected", get(lg, "connect", "ok")),
        "connect_p50": get(lg, "connect", "p50_ms"),
        "connect_p99": get(lg, "connect", "p99_ms"),
        "foreign": get(r, "machine", "foreign_pct"),
        "bottleneck": r.get("bottleneck"),
        "errors": get(lg, "errors", "total"),
        "dups": lg.get("duplicates"),
        "reordered": lg.get("reordered"),
        "redis_us_per_pub": (get(r, "redis", "cpu_s") * 1e6 / lg["published_measured"]
                             if get(r, "redis", "cpu_s") is not None and lg.get("published_measured")
                             else None),
    }


def num(x, digits=2):
    if x is None:
        return "–"
    if isinstance(x, (int, float)) and abs(x) >= 1000:
        return f"{x:,.0f}"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def ratio(a, b):
    if a is None or b is None:
        return None
    if b == 0:
        return 1.0 if a == 0 else None
    return a / b


def rtxt(x):
    return "–" if x is None else f"{x:.2f}"


def cell(v, fl, ws, digits=2):
    return f"{num(v, digits)} ({rtxt(ratio(v, fl))} / {rtxt(ratio(v, ws))})"


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    runs = load(sys.argv[1])
    rounds = max(len(v) for v in runs.values()) if runs else 0
    servers = [s for s in ORDER if any(k[1] == s for k in runs)]
    servers += sorted({k[1] for k in runs} - set(ORDER))
    scenarios = [s for s in SCENARIOS if any(k[0] == s for k in runs)]
    stamp = next((get(r, "compare", "stamp") for v in runs.values() for r in v
                  if get(r, "compare", "stamp")), "?")
    print(f"# Switchyard vs floor vs seed-ws ({stamp}, {sys.argv[1]})\n")
    print("Cells: value (ratio to floor / ratio to seed-ws), same invocation. "
          "Latency in ms, server CPU in µs per delivery (all server nodes, from /proc).")
    if rounds > 1:
        print(f"Up to {rounds} runs per server (rounds): medians; lost, duplicates, reordered "
              "and errors are the largest of any run.")
    print()

    m = {k: combine([metrics(r) for r in v]) for k, v in runs.items()}
    for scen in scenarios:
        fl = m.get((scen, "floor"), {})
        ws = m.get((scen, "seed-ws"), {})

        def rel(x, key, *digits, fl=fl, ws=ws):
            """A figure with its ratios to floor and seed-ws from the same run."""
            return cell(x[key], fl.get(key), ws.get(key), *digits)
        if scen == "idle":
            print("## idle (10,000 connections held)\n")
            print("| server | connected | RSS KiB/conn | connect p50 ms | connect p99 ms | foreign CPU % |")
            print("|---|---:|---:|---:|---:|---:|")
            for s in servers:
                x = m.get((scen, s))
                if x is None:
                    continue
                print(f"| {NAMES.get(s, s)} | {num(x['connected'])} "
                      f"| {rel(x, 'rss_per_conn')} "
                      f"| {rel(x, 'connect_p50')} "
                      f"| {rel(x, 'connect_p99')} "
                      f"| {num(x['foreign'], 1)} |")
            print()
            continue
        print(f"## {scen} ({OFFERED.get(scen, '')})\n")
        print("| server | delivered/s | lost | p50 ms | p99 ms | server CPU µs/delivery | all-in (servers + Redis) µs/delivery | dup / reord / errors | bottleneck | foreign CPU % |")
        print("|---|---:|---:|---:|---:|---:|---:|---|---|---:|")
        for s in servers:
            x = m.get((scen, s))
            if x is None:
                continue
            print(f"| {NAMES.get(s, s)} "
                  f"| {rel(x, 'delivered_per_s')} "
                  f"| {rel(x, 'lost')} "
                  f"| {rel(x, 'p50', 3)} "
                  f"| {rel(x, 'p99', 3)} "
                  f"| {rel(x, 'cpu_us')} "
                  f"| {rel(x, 'allin_us')} "
                  f"| {num(x['dups'])} / {num(x['reordered'])} / {num(x['errors'])} "
                  f"| {x['bottleneck'] or '–'} | {num(x['foreign'], 1)} |")
        print()

    # Targets (bench/README.md).
    rows = []

    def check(what, server, scen, value, limit, ok):
        rows.append((what, NAMES.get(server, server), scen, value, limit,
                     "n/a" if ok is None else ("PASS" if ok else "FAIL")))

    for scen in [s for s in scenarios if s != "idle"]:
        fl = m.get((scen, "floor"), {})
        # Round 2's targets (issue 27): no plugin 1.1x, allow-all 1.2x, redact 1.5x floor.
        for s, lim in (("embedded", 1.1), ("redis", 1.1), ("allow-all", 1.2), ("redact", 1.5)):
            x = m.get((scen, s))
            if x is None:
                continue
            r = ratio(x["cpu_us"], fl.get("cpu_us"))
            check("server CPU per delivery vs floor", s, scen, rtxt(r) + "×", f"≤ {lim}×",
                  None if r is None else r <= lim)
        # All-in (servers + Redis) CPU per delivery ahead of nchan (both storage modes if run).
        for peer in ("nchan", "nchan:nostore"):
            nc = m.get((scen, peer))
            if nc is None:
                continue
            for s in ("redis", "allow-all", "redact"):
                x = m.get((scen, s))
                if x is None:
                    continue
                r = ratio(x["allin_us"], nc.get("allin_us"))
                check(f"all-in CPU per delivery vs {NAMES[peer]}", s, scen, rtxt(r) + "×", "< 1×",
                      None if r is None else r < 1)
    if "fanout" in scenarios:
        for s in ("embedded", "redis", "allow-all"):
            x = m.get(("fanout", s))
            if x is None:
                continue
            check("nothing lost at 200k offered deliveries/s", s, "fanout", num(x["lost"]), "0",
                  None if x["lost"] is None else x["lost"] == 0)
    if "fanout-light" in scenarios:
        fl = m.get(("fanout-light", "floor"), {})
        for s in ("embedded", "redis", "allow-all"):
            x = m.get(("fanout-light", s))
            if x is None:
                continue
            r = ratio(x["p99"], fl.get("p99"))
            check("p99 latency at 20k deliveries/s vs floor", s, "fanout-light", rtxt(r) + "×", "≤ 1.5×",
                  None if r is None else r <= 1.5)
    if "idle" in scenarios:
        fl = m.get(("idle", "floor"), {})
        for s in ("embedded", "redis", "allow-all"):
            x = m.get(("idle", s))
            if x is None:
                continue
            r = ratio(x["rss_per_conn"], fl.get("rss_per_conn"))
            check("idle RSS per connection (10k) vs floor", s, "idle", rtxt(r) + "×", "≤ 1.2×",
                  None if r is None else r <= 1.2)
    for scen in ("fanout-light", "throughput"):
        for on, off in PAIRS[:2]:
            x, y = m.get((scen, on)), m.get((scen, off))
            if x is None or y is None:
                continue
            r = ratio(x["cpu_us"], y["cpu_us"])
            check(f"server CPU per delivery, history on vs off ({NAMES.get(off, off)})", on, scen,
                  rtxt(r) + "×", "≤ 1.3×", None if r is None else r <= 1.3)
            r = ratio(x["p99"], y["p99"])
            check(f"p99 latency, history on vs off ({NAMES.get(off, off)})", on, scen,
                  rtxt(r) + "×", "≤ 1.5×", None if r is None else r <= 1.5)
    if rows:
        print("## Targets\n")
        print("| target | server | scenario | measured | limit | |")
        print("|---|---|---|---:|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()
        print("The embedded row compares 1 node (no Redis hop) with 2 floor nodes behind Redis.")
    if rounds > 1:
        print_rounds(runs, m, servers, scenarios)
    print_pairs(runs, m, scenarios)


# (measured, baseline): what history costs, and what a change costs against the base binary.
PAIRS = [("history", "redis"), ("embedded-history", "embedded"), ("embedded", "base-embedded"),
         ("redis", "base-redis"), ("allow-all", "base-allow-all"),
         ("allow-all-js", "allow-all"), ("allow-all-py", "allow-all")]


def print_pairs(runs, m, scenarios):
    """Each pair's ratios: medians, and round by round (the pair ran back to back)."""
    present = [(a, b) for a, b in PAIRS
               if any((sc, a) in runs and (sc, b) in runs for sc in scenarios)]
    if not present:
        return
    print()
    print("## Pairs (measured / baseline, same invocation)\n")
    print("| scenario | pair | CPU/delivery (median; per round) | p99 (median; per round) "
          "| Redis µs/publish (measured / baseline) |")
    print("|---|---|---|---|---|")
    for scen in [s for s in scenarios if s != "idle"]:
        for a, b in present:
            if (scen, a) not in runs or (scen, b) not in runs:
                continue
            by_round = {get(r, "compare", "round"): metrics(r) for r in runs[(scen, b)]}
            cpu = [ratio(metrics(r)["cpu_us"], (by_round.get(get(r, "compare", "round")) or {}).get("cpu_us"))
                   for r in runs[(scen, a)]]
            p99 = [ratio(metrics(r)["p99"], (by_round.get(get(r, "compare", "round")) or {}).get("p99"))
                   for r in runs[(scen, a)]]
            x, y = m[(scen, a)], m[(scen, b)]
            print(f"| {scen} | {a} / {b} "
                  f"| {rtxt(ratio(x['cpu_us'], y['cpu_us']))}; {', '.join(rtxt(v) for v in cpu)} "
                  f"| {rtxt(ratio(x['p99'], y['p99']))}; {', '.join(rtxt(v) for v in p99)} "
                  f"| {num(x['redis_us_per_pub'])} / {num(y['redis_us_per_pub'])} |")


def print_rounds(runs, m, servers, scenarios):
    """Each round's server CPU per delivery as a ratio to that round's floor, beside the
    ratio of the medians (`m`, the combined figures) that the targets use."""
    print()
    print("## Server CPU per delivery vs floor, round by round\n")
    print("| scenario | server | ratio per round | median of figures |")
    print("|---|---|---|---:|")
    for scen in [s for s in scenarios if s != "idle"]:
        floors = {get(r, "compare", "round"): metrics(r)["cpu_us"] for r in runs.get((scen, "floor"), [])}
        fl = m.get((scen, "floor"), {}).get("cpu_us")
        for s in servers:
            if s in ("floor", "seed-ws") or (scen, s) not in runs:
                continue
            per = [ratio(metrics(r)["cpu_us"], floors.get(get(r, "compare", "round")))
                   for r in runs[(scen, s)]]
            print(f"| {scen} | {NAMES.get(s, s)} | {', '.join(rtxt(x) for x in per)} "
                  f"| {rtxt(ratio(m[(scen, s)]['cpu_us'], fl))} |")

if __name__ == "__main__":
    main()
