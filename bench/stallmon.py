#!/usr/bin/env python3
"""How much of a run the lab's machine itself lost: stalls and steal.

Every emulated host shares one virtual machine, and its emulated links run
in that machine's kernel. When the hypervisor does not run the machine's
vCPUs (another tenant, the host's own I/O work), nothing moves on any
emulated link, and a run's completion times grow by the stall, however
well the swarm does. The guest kernel counts that time as *steal*.

The lab records two figures per Pollen run (`host` in each run record):

- `stall_s`: wall time lost by a 10 ms ticker that runs at real-time
  priority (`chrt -f`, root only): the sum of every tick's lateness beyond
  20 ms, within the run (from the POST to the last completion). At that
  priority no process of the run can delay it; only the machine not running
  (or the kernel's own interrupt work) can.
- `steal_s`: the guest's steal time over the same run, from `/proc/stat`,
  in seconds per vCPU. The monitor also reads it every 100 ms, so that the
  report can give both figures for any part of a run (a group's hosts).

The lab runs `stallmon.py sample` during each Pollen run, as it does
`portrates.py`. Standard library only.
"""

import argparse
import json
import os
import signal
import time

TICK = 0.01
LATE = 0.02
USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


STEAL_EVERY = 10


def sample(out_path, max_s, stat_path="/proc/stat"):
    """Writes one JSON line `[wall start, seconds late]` per late tick, and
    `["steal", wall, steal seconds per vCPU so far]` every [`STEAL_EVERY`]
    ticks, until SIGTERM or `max_s`; a first line marks the start."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    end = time.monotonic() + max_s
    first = read_steal(stat_path)
    with open(out_path, "w") as out:
        out.write(json.dumps([time.time(), 0.0]) + "\n")
        out.flush()
        last, ticks = time.monotonic(), 0
        while not stop and last < end:
            time.sleep(TICK)
            now = time.monotonic()
            late = now - last - TICK
            if late > LATE:
                out.write(json.dumps([time.time() - (now - last), round(late, 4)]) + "\n")
            ticks += 1
            if ticks % STEAL_EVERY == 0:
                stolen = steal_seconds(first, read_steal(stat_path))
                if stolen is not None:
                    out.write(json.dumps(["steal", time.time(), round(stolen, 3)]) + "\n")
            out.flush()
            last = now


def load(path):
    """(late ticks as (wall start, seconds late), steal readings as (wall,
    cumulative seconds per vCPU)) from a sampler's file."""
    rows, steal = [], []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
                if row[0] == "steal":
                    steal.append((float(row[1]), float(row[2])))
                else:
                    rows.append((float(row[0]), float(row[1])))
            except (ValueError, IndexError, TypeError):
                continue  # the sampler was stopped mid-line
    return rows, steal


def steal_within(steal, t0, t1):
    """Steal per vCPU between the readings nearest inside [t0, t1], or None
    when fewer than two readings fall in it."""
    inside = [s for t, s in steal if t0 <= t <= t1]
    return inside[-1] - inside[0] if len(inside) >= 2 else None


def overlap(spans, t0, t1):
    """Seconds of the spans `(start, length)` that fall inside [t0, t1]."""
    return sum((max(0.0, min(a + n, t1) - max(a, t0)) for a, n in spans), 0.0)


def stalled(rows, t0, t1):
    """Seconds of the late ticks in `rows` that fall inside wall window
    [t0, t1]. A late tick covers [start + TICK, start + TICK + late]."""
    return overlap(((start + TICK, late) for start, late in rows), t0, t1)


def read_steal(path="/proc/stat"):
    """(steal ticks, vCPUs) from the kernel's aggregate CPU line, or None."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    fields = lines[0].split() if lines else []
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    cpus = sum(1 for line in lines[1:] if line.startswith("cpu") and line[3:4].isdigit())
    return int(fields[8]), max(cpus, 1)


def steal_seconds(before, after):
    """Steal per vCPU, in seconds, between two `read_steal` readings."""
    if before is None or after is None:
        return None
    return (after[0] - before[0]) / USER_HZ / after[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="record late ticks (run it with chrt -f)")
    s.add_argument("--out", required=True)
    s.add_argument("--max-s", type=float, default=3600)
    args = ap.parse_args()
    if args.cmd == "sample":
        sample(args.out, args.max_s)


if __name__ == "__main__":
    main()
