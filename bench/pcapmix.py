#!/usr/bin/env python3
"""What one host's download link carries, from a packet capture of its
switch port (`lab.py --pcap HOST` takes one per Pollen run).

Every TCP packet falls in one class, by sender (the seed or a peer) and
payload: pure ACKs (no payload), control messages (1-64 bytes: HAVE,
REQUEST and the like, alone in a packet), mid-sized packets, and data
(a full segment or more: the capture sees GSO packets of many segments).
For each class it prints the packets, the payload bytes and the bytes on
the wire: the payload plus one set of Ethernet, IP and TCP headers per
segment of `--mss` bytes, which is what a capped link has to carry.

    python3 bench/pcapmix.py /tmp/plab-x/pcap-0-a03.pcap --seed-ip 10.77.0.1 --mbit 50

Standard library only.
"""

import argparse
import struct
import sys

ETH_HEADER = 14
SMALL = 64


def packets(path):
    """Yields (seconds, frame bytes) of a classic pcap file (either byte
    order, microsecond or nanosecond stamps). Raises ValueError when it is
    not one, or its link type is not Ethernet."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            raise ValueError(f"{path}: too short for a pcap header")
        magic = head[:4]
        if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            order = "<"
        elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            order = ">"
        else:
            raise ValueError(f"{path}: not a pcap file (magic {magic.hex()})")
        scale = 1e-9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
        linktype = struct.unpack(order + "I", head[20:24])[0]
        if linktype != 1:
            raise ValueError(f"{path}: link type {linktype}, not Ethernet")
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            sec, frac, incl, _orig = struct.unpack(order + "IIII", rec)
            data = f.read(incl)
            if len(data) < incl:
                return  # cut short when the capture was stopped
            yield sec + frac * scale, data


def classify(frame, seed_ip, mss):
    """(class, payload bytes, wire bytes) of one frame, or None when it is
    not IPv4 TCP (or too short to tell)."""
    if len(frame) < ETH_HEADER + 20 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[ETH_HEADER:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != 6 or len(ip) < ihl + 13:
        return None
    total = struct.unpack(">H", ip[2:4])[0]
    doff = (ip[ihl + 12] >> 4) * 4
    payload = max(total - ihl - doff, 0)
    src = ".".join(str(b) for b in ip[12:16])
    who = "seed" if src == seed_ip else "peer"
    if payload == 0:
        kind = "ack"
    elif payload <= SMALL:
        kind = "control"
    elif payload < mss:
        kind = "mid"
    else:
        kind = "data"
    segments = max(1, -(-payload // mss))
    return f"{who} {kind}", payload, payload + segments * (ETH_HEADER + ihl + doff)


def mix(frames, seed_ip, mss=1448):
    """{class: [packets, payload bytes, wire bytes]} over `frames`."""
    out = {}
    for frame in frames:
        c = classify(frame, seed_ip, mss)
        if c is None:
            continue
        row = out.setdefault(c[0], [0, 0, 0])
        row[0] += 1
        row[1] += c[1]
        row[2] += c[2]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pcap")
    ap.add_argument("--seed-ip", default="10.77.0.1", help="the server's address (netns lab: 10.77.0.1)")
    ap.add_argument("--mss", type=int, default=1448, help="payload bytes per segment (1448: 1500 MTU, timestamps)")
    ap.add_argument("--mbit", type=float, help="the link's cap: also print the time it needs for the wire bytes")
    args = ap.parse_args(argv)
    try:
        rows = mix((f for _, f in packets(args.pcap)), args.seed_ip, args.mss)
    except (OSError, ValueError) as e:
        print(f"pcapmix: {e}", file=sys.stderr)
        return 2
    print(f"{'class':14} {'packets':>8} {'payload B':>12} {'wire B':>12}")
    for k in sorted(rows):
        n, pay, wire = rows[k]
        print(f"{k:14} {n:8d} {pay:12d} {wire:12d}")
    n, pay, wire = (sum(r[i] for r in rows.values()) for i in range(3))
    print(f"{'total':14} {n:8d} {pay:12d} {wire:12d}")
    if args.mbit:
        print(f"the wire bytes take {wire * 8 / (args.mbit * 1e6):.3f} s at {args.mbit:g} Mbit/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
