"""Lower bounds, unit conversions and completion statistics.

Kept free of I/O so that `test_lab.py` can check the arithmetic directly.

Kumar and Ross (2006) give the minimum time to distribute a file of F bytes
from one server with upload u_s to N peers with uploads u_i and downloads d_i:

    T_min = max(F / u_s, F / d_min, N * F / (u_s + sum(u_i)))

An uncapped link (rate 0 or None) contributes no term; when no term is left
the bound is None (the lab then reports no ratio).
"""

import math
import statistics

MIB = 1 << 20


def mbit_to_bytes(mbit):
    """Mbit/s (10^6 bit) to bytes/s; 0 or None (uncapped) stays None."""
    if not mbit:
        return None
    return mbit * 1e6 / 8


def mbit_to_mib(mbit):
    """Mbit/s to MiB/s, the unit of Pollen's `control.*Speed` keys; 0 = uncapped."""
    if not mbit:
        return 0
    return mbit * 1e6 / 8 / MIB


def kumar_ross(size, seed_up, uploads, downloads):
    """T_min in seconds for `size` bytes; rates in bytes/s, None = uncapped.

    `uploads` and `downloads` list the N destinations' rates.
    """
    if not uploads:
        return None
    terms = []
    if seed_up:
        terms.append(size / seed_up)
    capped_down = [d for d in downloads if d]
    if capped_down:
        terms.append(size / min(capped_down))
    if seed_up and all(uploads):
        terms.append(len(uploads) * size / (seed_up + sum(uploads)))
    terms = [t for t in terms if t > 0]
    return max(terms) if terms else None


def http_bound(size, seed_up, downloads):
    """Lower bound of a plain fan-out, where the seed sends every copy itself."""
    terms = []
    if seed_up:
        terms.append(len(downloads) * size / seed_up)
    capped_down = [d for d in downloads if d]
    if capped_down:
        terms.append(size / min(capped_down))
    return max(terms) if terms else None


def completion_stats(times, t_min=None):
    """first/median/last of per-host completion times (s), with ratios to t_min.

    `times` maps host -> seconds; a host with None (never completed) makes
    `last` None and `complete` False.
    """
    done = sorted(t for t in times.values() if t is not None)
    complete = len(done) == len(times) and bool(times)
    out = {
        "hosts": len(times),
        "completed": len(done),
        "first_s": done[0] if done else None,
        "median_s": statistics.median(done) if complete else None,
        "last_s": done[-1] if complete else None,
    }
    for key in ("first", "median", "last"):
        value = out[key + "_s"]
        out["ratio_" + key] = (value / t_min) if (value is not None and t_min) else None
    return out


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_num(value, digits=2):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def parse_size(text):
    """'64MiB', '4KiB', '1GiB', '1000' -> bytes (binary units; KB/MB/GB are decimal)."""
    if isinstance(text, (int, float)):
        return int(text)
    s = text.strip()
    units = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30,
             "kb": 10**3, "mb": 10**6, "gb": 10**9, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    i = len(s)
    while i > 0 and not (s[i - 1].isdigit() or s[i - 1] == "."):
        i -= 1
    number, unit = s[:i], s[i:].strip().lower()
    if unit not in units or not number:
        raise ValueError(f"bad size {text!r}")
    return int(float(number) * units[unit])
