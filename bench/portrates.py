#!/usr/bin/env python3
"""Switch-port byte counters of a netns lab run: every host's upload and
download rate over time.

The lab (`lab.py --port-rates`) runs `portrates.py sample` inside the switch
namespace during each Pollen run. It reads the byte counters of every
switch port every 20 ms; a port's rx bytes are its host's upload and its tx
bytes the host's download, headers included (a full 50 Mbit/s link reads
about 47.8 Mbit/s: the counters leave out the Ethernet preamble and gaps).
The lab stores the per-host means over the run's busy window in the
result JSON (`port_rates`), and with --keep the raw samples stay in the run
directory. `portrates.py report RESULT.json` prints them, with a timeline
when the samples are still there:

    python3 bench/lab.py --scenario s1-n16 --skip-http --port-rates --keep \\
        --workdir /tmp/plab-x --out x.json
    python3 bench/portrates.py report x.json --bucket 0.5 --idle 0.3,1,2,8

`--idle` adds each agent's idle download time by the given times: the
elapsed time less the bytes it downloaded at the full-link reading of its
cap. Where the downloads are no faster than the seed's upload (s1), that
idle time is what a host's completion loses against the bytes it had to
move.

Standard library only.
"""

import argparse
import json
import os
import signal
import sys
import time


def read_counters(devs, root="/sys/class/net"):
    """{dev: [rx_bytes, tx_bytes]} for the devices that exist."""
    out = {}
    for d in devs:
        try:
            with open(os.path.join(root, d, "statistics", "rx_bytes")) as f:
                rx = int(f.read())
            with open(os.path.join(root, d, "statistics", "tx_bytes")) as f:
                tx = int(f.read())
        except (OSError, ValueError):
            continue
        out[d] = [rx, tx]
    return out


def sample(out_path, devs, interval, max_s):
    """Appends one JSON line of counters per interval until SIGTERM or max_s."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    end = time.monotonic() + max_s
    with open(out_path, "w") as out:
        while not stop and time.monotonic() < end:
            row = {"t": time.time(), "c": read_counters(devs)}
            out.write(json.dumps(row) + "\n")
            out.flush()
            time.sleep(interval)


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short when the sampler was stopped
    return rows


def mbit(nbytes, secs):
    return nbytes * 8 / secs / 1e6 if secs > 0 else 0.0


def window_rates(rows, devs, t_from, t_to):
    """{dev: (up, down)} in Mbit/s between the samples nearest t_from and
    t_to (absolute times), or None when the window holds under two samples."""
    inside = [r for r in rows if t_from <= r["t"] <= t_to and all(d in r["c"] for d in devs)]
    if len(inside) < 2:
        return None
    a, b = inside[0], inside[-1]
    dt = b["t"] - a["t"]
    return {d: (mbit(b["c"][d][0] - a["c"][d][0], dt), mbit(b["c"][d][1] - a["c"][d][1], dt))
            for d in devs}


def timeline(rows, devs, t0, bucket):
    """[(start_s, {dev: (up, down)})] per bucket of about `bucket` seconds,
    from the first sample at or after t0."""
    rows = [r for r in rows if all(d in r["c"] for d in devs)]
    out = []
    prev = None
    for r in rows:
        if r["t"] < t0:
            continue
        if prev is None:
            prev = r
            continue
        if r["t"] - prev["t"] >= bucket:
            dt = r["t"] - prev["t"]
            out.append((round(prev["t"] - t0, 3),
                        {d: (mbit(r["c"][d][0] - prev["c"][d][0], dt),
                             mbit(r["c"][d][1] - prev["c"][d][1], dt)) for d in devs}))
            prev = r
    return out


# What a full link's download counter reads, per Mbit/s of its cap: each
# 1,448-byte TCP segment travels in a 1,514-byte frame, and the counters
# count one set of headers per GSO packet, so a full 50 Mbit/s link reads
# about 47.8.
FULL_READING = 1448 / 1514


def idle_times(rows, dev, t0, full_mbit, marks):
    """[(mark_s, idle_s)]: by each mark (seconds after t0), how long host
    `dev`'s download would have been idle had it run at `full_mbit` whenever
    it was not: the elapsed time less the bytes downloaded since t0 at that
    rate. Agents whose download is as fast as the seed's upload never make
    this up, so it adds to their completion time one for one. Marks without
    a sample at or before them are left out."""
    rows = [r for r in rows if dev in r["c"]]
    base = next((r for r in rows if r["t"] >= t0), None)
    if base is None or full_mbit <= 0:
        return []
    out = []
    for m in marks:
        upto = [r for r in rows if base["t"] <= r["t"] <= t0 + m]
        if not upto:
            continue
        r = upto[-1]
        got = r["c"][dev][1] - base["c"][dev][1]
        out.append((m, (r["t"] - t0) - got * 8 / (full_mbit * 1e6)))
    return out


def busy_window(rec, skip_s=2.0):
    """(from, to) in seconds after the POST over which every host is busy:
    from `skip_s` (after the start-up) to the first agent's completion."""
    done = [t for t in rec["times_s"].values() if t is not None]
    if not done or min(done) <= skip_s:
        return None
    return skip_s, min(done)


def summarize_run(rows, rec, ports, skip_s=2.0):
    """The per-host means over the busy window, for the result JSON."""
    win = busy_window(rec, skip_s)
    if win is None:
        return None
    rates = window_rates(rows, list(ports.values()), rec["wall_start"] + win[0], rec["wall_start"] + win[1])
    if rates is None:
        return None
    return {"from_s": win[0], "to_s": round(win[1], 3),
            "hosts": {h: {"up_mbit": round(rates[d][0], 2), "down_mbit": round(rates[d][1], 2)}
                      for h, d in ports.items()}}


def report(result_path, bucket, idle_marks=None):
    with open(result_path) as f:
        doc = json.load(f)
    results = doc["results"] if "results" in doc else [doc]
    for res in results:
        for k, rec in enumerate((res.get("pollen") or {}).get("runs", [])):
            pr = rec.get("port_rates")
            if not pr:
                continue
            hosts = list(pr["hosts"])
            agents = hosts[1:]
            print(f"{res['scenario']} run {k}: means over {pr['from_s']}-{pr['to_s']} s after the POST (Mbit/s)")
            print("host    up     down")
            for h in hosts:
                r = pr["hosts"][h]
                print(f"{h:6} {r['up_mbit']:6.1f} {r['down_mbit']:6.1f}")
            path = rec.get("port_samples")
            if not path or not os.path.exists(path):
                continue
            ports = rec["port_devs"]
            print("t s     seed up | agents down: mean  min | agents up: mean  min")
            for t, rates in timeline(load(path), list(ports.values()), rec["wall_start"], bucket):
                downs = [rates[ports[a]][1] for a in agents]
                ups = [rates[ports[a]][0] for a in agents]
                print(f"{t:6.2f} {rates[ports[hosts[0]]][0]:8.1f} | {sum(downs) / len(downs):17.1f} {min(downs):5.1f}"
                      f" | {sum(ups) / len(ups):15.1f} {min(ups):5.1f}")
            if idle_marks:
                print_idle(load(path), rec, res, agents, idle_marks)


def print_idle(rows, rec, res, agents, marks):
    """Each agent's idle download time by each mark (see `idle_times`)."""
    caps = {h["name"]: h["down_mbit"] for h in res.get("hosts", [])}
    print("idle download time (s) by t s after the POST, at the full-link reading"
          f" ({FULL_READING:.3f} x the cap)")
    print("agent   done s " + " ".join(f"{m:>6g}" for m in marks))
    for a in agents:
        full = (caps.get(a) or 0) * FULL_READING
        idle = dict(idle_times(rows, rec["port_devs"][a], rec["wall_start"], full, marks))
        done = rec["times_s"].get(a)
        cells = " ".join(f"{idle[m]:6.2f}" if m in idle else "     -" for m in marks)
        print(f"{a:6} {done if done is not None else float('nan'):7.2f} {cells}")


def marks_arg(text):
    try:
        marks = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of seconds: {text!r}") from None
    if not marks or any(m <= 0 for m in marks):
        raise argparse.ArgumentTypeError("give positive seconds, e.g. 0.3,1,2,8")
    return sorted(marks)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="record counters (run inside the switch namespace)")
    s.add_argument("--out", required=True)
    s.add_argument("--devs", required=True, help="comma-separated port names")
    s.add_argument("--interval", type=float, default=0.02)
    s.add_argument("--max-s", type=float, default=3600)
    r = sub.add_parser("report", help="print the rates of a lab result JSON")
    r.add_argument("result")
    r.add_argument("--bucket", type=float, default=1.0, help="timeline step, seconds")
    r.add_argument("--idle", metavar="T1,T2,...", type=marks_arg,
                   help="also print each agent's idle download time by these times (s after the POST)")
    args = ap.parse_args(argv)
    if args.cmd == "sample":
        sample(args.out, args.devs.split(","), args.interval, args.max_s)
    else:
        report(args.result, args.bucket, args.idle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
