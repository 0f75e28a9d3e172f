"""Test payloads (random bytes, so nothing compresses or dedups) and byte checks."""

import hashlib
import os
import random

from bounds import parse_size


def generate(scn_payload, root, seed=7):
    """Writes the payload under `root`; returns (dispatch path, {relpath: sha256}, total bytes).

    relpaths are relative to `root` and start with the dispatched name, which is
    also where an agent publishes it: `<downdir>/<relpath>`.
    """
    os.makedirs(root, exist_ok=True)
    rng = random.Random(seed)
    if scn_payload["kind"] == "file":
        path = os.path.join(root, "payload.bin")
        write_random(path, parse_size(scn_payload["size"]), rng)
    elif scn_payload["kind"] == "tree":
        path = os.path.join(root, "tree")
        lo, hi = parse_size(scn_payload["min"]), parse_size(scn_payload["max"])
        dirs = nested_dirs(scn_payload.get("depth", 3), scn_payload.get("fanout", 5))
        for i in range(scn_payload["files"]):
            d = os.path.join(path, rng.choice(dirs))
            os.makedirs(d, exist_ok=True)
            write_random(os.path.join(d, f"f{i:05d}.dat"), rng.randint(lo, hi), rng)
    else:
        raise ValueError(f"unknown payload kind {scn_payload['kind']!r}")
    digests = digest_tree(root)
    return path, digests, sum(size for size, _ in digests.values())


def max_bytes(scn_payload):
    """An upper bound on the payload's size, before it is generated."""
    if scn_payload["kind"] == "file":
        return parse_size(scn_payload["size"])
    return scn_payload["files"] * parse_size(scn_payload["max"])


def max_files(scn_payload):
    """How many files the payload has."""
    return 1 if scn_payload["kind"] == "file" else scn_payload["files"]


def nested_dirs(depth, fanout):
    out = [""]
    level = [""]
    for d in range(depth):
        level = [os.path.join(p, f"d{d}{k}") for p in level for k in range(fanout)]
        out += level
    return out


def write_random(path, size, rng):
    chunk = 1 << 20
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(chunk, left)
            f.write(rng.randbytes(n) if n < 65536 else os.urandom(n))
            left -= n


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def digest_tree(root, skip=(".pollen",)):
    """{relpath: (size, sha256)} of every regular file under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = (os.path.getsize(full), file_digest(full))
    return out


def verify(expected, dest_root):
    """Compares every expected file under dest_root; returns a list of problems."""
    problems = []
    for rel, (size, digest) in expected.items():
        full = os.path.join(dest_root, rel)
        if not os.path.isfile(full):
            problems.append(f"{rel}: missing")
        elif os.path.getsize(full) != size:
            problems.append(f"{rel}: {os.path.getsize(full)} bytes, want {size}")
        elif file_digest(full) != digest:
            problems.append(f"{rel}: content differs")
        if len(problems) >= 5:
            problems.append("...")
            break
    return problems
