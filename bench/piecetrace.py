#!/usr/bin/env python3
"""Piece trace of one lab run: how long each piece took to spread.

Run the lab with the agents' piece trace on and keep the run directory:

    RUST_LOG=info,pollen_agent::task_state=debug \\
        python3 bench/lab.py --scenario s1-n8 --skip-http --keep --out x.json
    python3 bench/piecetrace.py /tmp/plab-<runid> [--task ID] [--bucket 0.5] [--seed-rate] [--spread] [--tail K] [--seed-twice] [--store-times]

Every agent logs "piece stored" at debug level when a piece has been
verified and written, which is when it starts to announce it. A piece's
birth is its first such event on any agent; its relay lag on another agent
is the time from the birth to that agent's event. The report gives the lag
by birth time (a lag that grows over the run is a download that falls
behind the seed), and per agent the times at which it held 95 %, 99 % and
all of the pieces, from the server's "task accepted". With --seed-rate it
also prints how many pieces each agent took whole from the seed in each
bucket: a seed flow that TCP starves shows as an agent with a fraction of
the others' count. With --spread it prints the first births and, at fixed
times, the pieces born, the copies held and the copies still missing: how
fast the swarm gets going. With --tail K it prints each agent's last K
pieces: when each arrived, who sent its blocks (the agents log the senders),
and when and at which agent it was born. With --seed-twice it lists the
pieces that more than one agent got blocks of from the seed (the seed's
duplicate egress), with the seed's slow-connection verdicts of the same
time (run the lab with pollen_agent::super_seed=debug as well). With
--store-times it prints the distribution of each piece's hash-check time
and of its hash check and write together, from its last block to its
announcement. Standard library only.
"""

import argparse
import bisect
import glob
import json
import os
import re
import sys

from cluster import parse_time

ANSI = re.compile(r"\x1b\[[0-9;]*m")
FIELD = re.compile(r"\b(task|piece|from_seed|verify_us|total_us)=(\S+)")
SENDERS = re.compile(r"\bsenders=(\S+)")
VERDICT = re.compile(r"^(?P<ts>\S+)\s.*slow connection gives its first copies back.*\bpieces=(?P<n>\d+)")
ACCEPTED = re.compile(r"^(?P<ts>\S+)\s+INFO\s.*task=(?P<task>[^}\s]+).*task accepted")


def stored_events(lines):
    """(time, task, piece, from_seed) of every "piece stored" line."""
    out = []
    for raw in lines:
        line = ANSI.sub("", raw)
        if "piece stored" not in line or " DEBUG " not in line:
            continue
        fields = dict(FIELD.findall(line))
        at = parse_time(line.split()[0])
        try:
            if at is not None:
                out.append((at, fields["task"], int(fields["piece"]), fields.get("from_seed") == "true"))
        except (KeyError, ValueError):
            continue
    return out


def stored_senders(lines):
    """{(task, piece): [sender]} of every "piece stored" line that names its
    senders: "seed", or the address of a peer that sent some of its blocks."""
    out = {}
    for raw in lines:
        line = ANSI.sub("", raw)
        if "piece stored" not in line:
            continue
        fields = dict(FIELD.findall(line))
        m = SENDERS.search(line)
        try:
            if m:
                out[(fields["task"], int(fields["piece"]))] = m.group(1).split("+")
        except (KeyError, ValueError):
            continue
    return out


def store_durations(lines, task):
    """[(verify_us, total_us)] of the "piece stored" lines of `task`: the
    hash check, and the hash check and the write together, from a piece's
    last block to its announcement."""
    out = []
    for raw in lines:
        line = ANSI.sub("", raw)
        if "piece stored" not in line:
            continue
        fields = dict(FIELD.findall(line))
        try:
            if fields.get("task") == task:
                out.append((int(fields["verify_us"]), int(fields["total_us"])))
        except (KeyError, ValueError):
            continue
    return out


def slow_verdicts(lines):
    """[(time, pieces given back)] of the seed's slow-connection verdicts."""
    out = []
    for raw in lines:
        m = VERDICT.match(ANSI.sub("", raw))
        at = parse_time(m.group("ts")) if m else None
        if at is not None:
            out.append((at, int(m.group("n"))))
    return out


def seed_twice(events_by_agent, senders_by_agent, t0):
    """{piece: [(s after t0, agent)], earliest first} of the pieces that more
    than one agent got blocks of from the seed: the seed sent them twice."""
    got = {}
    for agent, events in events_by_agent.items():
        senders = senders_by_agent.get(agent, {})
        for t, piece, _ in events:
            if "seed" in senders.get(piece, []):
                got.setdefault(piece, []).append((t - t0, agent))
    return {p: sorted(v) for p, v in got.items() if len(v) > 1}


def accepted_times(lines):
    """{task: time} of the server's "task accepted" lines."""
    out = {}
    for raw in lines:
        m = ACCEPTED.match(ANSI.sub("", raw))
        at = parse_time(m.group("ts")) if m else None
        if at is not None:
            out.setdefault(m.group("task"), at)
    return out


def quantile(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def summarize(events_by_agent, t0, bucket=0.5):
    """Relay lag by birth bucket and per-agent completion marks.

    events_by_agent: {agent: [(time, piece, from_seed)]} for one task.
    """
    firsts = {}
    for agent, events in events_by_agent.items():
        for t, piece, _ in events:
            if piece not in firsts or t < firsts[piece]:
                firsts[piece] = t
    lags = {}
    for agent, events in events_by_agent.items():
        for t, piece, _ in events:
            if t > firsts[piece]:
                b = int((firsts[piece] - t0) / bucket) * bucket
                lags.setdefault(b, []).append(t - firsts[piece])
    rows = []
    for b in sorted(lags):
        xs = sorted(lags[b])
        rows.append({"born_s": round(b, 3), "copies": len(xs), "lag_p50_s": quantile(xs, 0.5),
                     "lag_p90_s": quantile(xs, 0.9), "lag_max_s": xs[-1]})
    pieces = len(firsts)
    agents = {}
    for agent, events in sorted(events_by_agent.items()):
        ts = sorted(t - t0 for t, _, _ in events)
        if not ts:
            continue
        agents[agent] = {
            "pieces": len(ts),
            "from_seed_only": sum(1 for _, _, s in events if s),
            "t95_s": ts[max(0, -(-pieces * 95 // 100) - 1)] if len(ts) >= pieces else None,
            "t99_s": ts[max(0, -(-pieces * 99 // 100) - 1)] if len(ts) >= pieces else None,
            "t100_s": ts[-1] if len(ts) >= pieces else None,
        }
    last_birth = max(firsts.values()) - t0 if firsts else None
    return {"pieces": pieces, "last_birth_s": last_birth, "lag": rows, "agents": agents}


def seed_timeline(events_by_agent, t0, bucket=1.0):
    """{agent: [pieces it took whole from the seed, per bucket from t0]}: how
    the seed's first copies were shared out over time."""
    counts = {}
    for agent, events in events_by_agent.items():
        bins = counts.setdefault(agent, [])
        for t, _, from_seed in events:
            if not from_seed or t < t0:
                continue
            b = int((t - t0) / bucket)
            bins.extend([0] * (b + 1 - len(bins)))
            bins[b] += 1
    width = max((len(b) for b in counts.values()), default=0)
    return {a: b + [0] * (width - len(b)) for a, b in sorted(counts.items())}


def spread(events_by_agent, t0, marks):
    """How far the swarm had come at each time in `marks` (seconds from t0):
    pieces born anywhere, copies held over all agents, and the copies still
    missing for every agent to hold every born piece. The missing copies are
    the relay backlog; with every link at the seed's rate it never shrinks,
    so what it holds early on is lost for good. Also returns the first
    births (seconds from t0, earliest first, at most as many as agents)."""
    firsts = {}
    copies = []
    for events in events_by_agent.values():
        for t, piece, _ in events:
            copies.append(t - t0)
            if piece not in firsts or t < firsts[piece]:
                firsts[piece] = t
    births = sorted(t - t0 for t in firsts.values())
    copies.sort()
    agents = len(events_by_agent)
    rows = []
    for m in marks:
        born = bisect.bisect_right(births, m)
        held = bisect.bisect_right(copies, m)
        rows.append({"t_s": m, "born": born, "copies": held, "missing": agents * born - held})
    return {"first_births_s": births[:agents], "rows": rows}


def tails(events_by_agent, senders_by_agent, t0, k, names):
    """Each agent's last k pieces, oldest first, as (s after t0, piece,
    senders, s the piece was born, the agent it was born at). Senders are
    named by `names` ({address: agent}), with S for the seed. The pieces an
    agent waited for last, and who held them, show what held it back."""
    births = {}
    for agent, events in events_by_agent.items():
        for t, piece, _ in events:
            if piece not in births or t < births[piece][0]:
                births[piece] = (t, agent)
    out = {}
    for agent, events in sorted(events_by_agent.items()):
        rows = []
        for t, piece, _ in sorted(events)[-k:] if k > 0 else []:
            who = senders_by_agent.get(agent, {}).get(piece, [])
            who = ["S" if w == "seed" else names.get(w, w) for w in who]
            born, at = births[piece]
            rows.append((t - t0, piece, "+".join(who) or "?", born - t0, at))
        out[agent] = rows
    return out


def host_names(workdir):
    """{address: agent} from the agents' configs in a kept run directory."""
    names = {}
    for path in glob.glob(os.path.join(workdir, "pollen", "a*", "agent.yml")):
        try:
            with open(path) as f:
                ip = json.load(f)["net"]["ip"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        names[ip] = os.path.basename(os.path.dirname(path))
    return names


def agent_logs(workdir):
    """[(agent, path of its log)] of a kept run directory, by agent name."""
    return [(os.path.basename(os.path.dirname(path)), path) for path in
            sorted(glob.glob(os.path.join(workdir, "pollen", "a*", "agent.log")))]


def load_senders(workdir, task):
    """{agent: {piece: [sender]}} for one task of a kept run directory."""
    out = {}
    for agent, path in agent_logs(workdir):
        with open(path, errors="replace") as f:
            found = stored_senders(f)
        out[agent] = {p: who for (k, p), who in found.items() if k == task}
    return out


def load_run(workdir, task=None):
    """Reads the server's and agents' logs under a kept lab directory."""
    with open(os.path.join(workdir, "pollen", "srv", "server.log"), errors="replace") as f:
        accepted = accepted_times(f)
    per_agent = {}
    for agent, path in agent_logs(workdir):
        with open(path, errors="replace") as f:
            per_agent[agent] = stored_events(f)
    tasks = sorted({e[1] for evs in per_agent.values() for e in evs})
    if not tasks:
        raise SystemExit("no 'piece stored' events: run the lab with "
                         "RUST_LOG=info,pollen_agent::task_state=debug and --keep")
    task = task or tasks[0]
    if task not in accepted:
        raise SystemExit(f"task {task} has no 'task accepted' line in the server log")
    events = {a: [(t, p, s) for t, k, p, s in evs if k == task] for a, evs in per_agent.items()}
    return task, tasks, events, accepted[task]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", help="a run directory kept with --keep (/tmp/plab-<runid>)")
    ap.add_argument("--task", help="task id (default: the first one traced)")
    ap.add_argument("--bucket", type=float, default=0.5, help="birth-time bucket, seconds")
    ap.add_argument("--seed-rate", action="store_true",
                    help="also print the pieces each agent took from the seed per bucket")
    ap.add_argument("--spread", action="store_true",
                    help="also print the first births, and pieces born, copies held and "
                         "copies missing at fixed times in the first seconds")
    ap.add_argument("--tail", type=int, default=0, metavar="K",
                    help="also print each agent's last K pieces: when, who sent them, "
                         "and when and where each was born")
    ap.add_argument("--seed-twice", action="store_true",
                    help="also list the pieces the seed sent to more than one agent, "
                         "and the seed's slow-connection verdicts")
    ap.add_argument("--store-times", action="store_true",
                    help="also print how long pieces took from their last block to "
                         "their announcement (hash check, then write)")
    args = ap.parse_args(argv)
    task, tasks, events, t0 = load_run(args.workdir, args.task)
    # Read once for the reports that name the senders.
    senders = load_senders(args.workdir, task) if args.tail or args.seed_twice else {}
    s = summarize(events, t0, args.bucket)
    print(f"task {task} ({len(tasks)} traced): {s['pieces']} pieces, "
          f"last birth {s['last_birth_s']:.3f} s after 'task accepted'")
    print("born at s   copies  lag p50 s  p90 s  max s")
    for r in s["lag"]:
        print(f"{r['born_s']:9.1f} {r['copies']:8d} {r['lag_p50_s']:10.3f} "
              f"{r['lag_p90_s']:6.3f} {r['lag_max_s']:6.3f}")
    print("agent  pieces  seed-only  95% s  99% s  100% s")
    for a, r in s["agents"].items():
        marks = " ".join("      –" if r[k] is None else f"{r[k]:7.3f}"
                         for k in ("t95_s", "t99_s", "t100_s"))
        print(f"{a:6} {r['pieces']:7d} {r['from_seed_only']:9d} {marks}")
    if args.seed_rate:
        print(f"pieces from the seed per {args.bucket} s, from 'task accepted'")
        for a, bins in seed_timeline(events, t0, args.bucket).items():
            print(f"{a:6} " + " ".join(f"{n:3d}" for n in bins))
    if args.spread:
        sp = spread(events, t0, [0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0])
        print("first births, s: " + " ".join(f"{t:.3f}" for t in sp["first_births_s"]))
        print("   t s    born  copies  missing")
        for r in sp["rows"]:
            print(f"{r['t_s']:6.2f} {r['born']:7d} {r['copies']:7d} {r['missing']:8d}")
    if args.tail:
        names = host_names(args.workdir)
        print(f"last {args.tail} pieces per agent: s<piece<senders(born s@agent)")
        rows = tails(events, senders, t0, args.tail, names)
        for a, r in rows.items():
            if not r:
                print(f"{a:6} stored no piece")
                continue
            print(f"{a:6} done {r[-1][0]:.3f}: " + "  ".join(
                f"{t:.2f}<{p}<{who}(b{b:.2f}@{at})" for t, p, who, b, at in r))
    if args.seed_twice:
        twice = seed_twice(events, senders, t0)
        print(f"pieces more than one agent got from the seed: {len(twice)}, "
              f"{sum(len(v) - 1 for v in twice.values())} extra copies")
        for p, v in sorted(twice.items(), key=lambda kv: kv[1][-1]):
            print(f"  {p}: " + " ".join(f"{a}@{t:.2f}" for t, a in v))
        end = max((t for evs in events.values() for t, _, _ in evs), default=t0)
        with open(os.path.join(args.workdir, "pollen", "srv", "server.log"), errors="replace") as f:
            verdicts = [(t - t0, n) for t, n in slow_verdicts(f) if t0 <= t <= end]
        print(f"slow-connection verdicts: {len(verdicts)}, {sum(n for _, n in verdicts)} "
              "first copies given back: " + " ".join(f"{t:.2f}({n})" for t, n in verdicts))
    if args.store_times:
        durations = []
        for _, path in agent_logs(args.workdir):
            with open(path, errors="replace") as f:
                durations += store_durations(f, task)
        print(f"last block to announcement, {len(durations)} pieces (us): p50 p90 p99 max mean")
        for name, i in (("hash check", 0), ("with write", 1)):
            xs = sorted(d[i] for d in durations)
            if xs:
                print(f"{name:11} " + " ".join(str(quantile(xs, q)) for q in (0.5, 0.9, 0.99))
                      + f" {xs[-1]} {sum(xs) // len(xs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
