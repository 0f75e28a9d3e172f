"""Turns raw run records into the figures the lab reports, checks targets, prints tables."""

from bounds import MIB, completion_stats, fmt_num, median_or_none
from cluster import parse_time
import stallmon


def summarize(result, system):
    """Summary of one system ('pollen' or 'http') over all its runs."""
    data = result[system]
    size, n = result["size_bytes"], result["agents"]
    t_min = result["bounds"]["t_min_s"]
    groups = result["bounds"].get("groups", {})
    per_run = []
    for rec in data["runs"]:
        st = completion_stats(rec["times_s"], t_min)
        st["verified"] = all(not v for v in rec["verify"].values())
        st["groups"] = {g: completion_stats({a: rec["times_s"][a] for a in info["agents"]}, info["t_min_s"])
                        for g, info in groups.items()}
        if system == "pollen":
            st["seed_bytes"] = rec.get("seed_bytes")
            st["seed_egress_f"] = rec["seed_bytes"] / size if rec.get("seed_bytes") is not None else None
            st["transfer_s"] = transfer_window(rec)
            st["seed_share"] = seed_shares(rec, size)
        st["iface_tx_f"] = rec["iface_tx_bytes"] / size if rec.get("iface_tx_bytes") is not None else None
        per_run.append(st)
        rec["stats"] = st
    out = {
        "ok": all(s["completed"] == s["hosts"] and s["verified"] for s in per_run),
        "verified": all(s["verified"] for s in per_run),
        "t_min_s": t_min,
    }
    for key in ("first_s", "median_s", "last_s", "ratio_first", "ratio_median", "ratio_last",
                "seed_egress_f", "iface_tx_f", "transfer_s"):
        out[key] = median_or_none([s.get(key) for s in per_run])
    if system == "http" and out["seed_egress_f"] is None:
        # every byte of every copy comes from the server in a plain fan-out
        out["seed_egress_f"] = out["iface_tx_f"] if out["iface_tx_f"] is not None else float(n)
    if len(per_run) > 1:
        lasts = [s["last_s"] for s in per_run if s["last_s"] is not None]
        out["last_s_median_ms"] = out["last_s"] * 1000 if out["last_s"] is not None else None
        out["last_s_min"] = min(lasts) if lasts else None
        out["last_s_max"] = max(lasts) if lasts else None
    out["groups"] = {g: {k: median_or_none([s["groups"][g][k] for s in per_run])
                         for k in ("first_s", "median_s", "last_s", "ratio_first", "ratio_median", "ratio_last")}
                     | {"t_min_s": info["t_min_s"]}
                     for g, info in groups.items()}
    hosts = [rec.get("host") or {} for rec in data["runs"]]
    if any(h.get("stall_s") is not None or h.get("steal_s") is not None for h in hosts):
        # per run: what the machine itself lost (bench/stallmon.py)
        out["machine"] = {k: [h.get(k) for h in hosts] for k in ("stall_s", "steal_s")}
        out["machine"]["realtime"] = all(h.get("realtime") is not False for h in hosts)
        # ... and within each group's run, up to its last host
        out["machine"]["groups"] = {
            g: {"stall_s": [stalled_within(h, s["groups"][g]["last_s"]) for h, s in zip(hosts, per_run)],
                "steal_s": [stolen_within(h, s["groups"][g]["last_s"]) for h, s in zip(hosts, per_run)]}
            for g in groups}
    shares = [s.get("seed_share") for s in per_run]
    if any(shares):
        out["seed_shares"] = shares
    if out["last_s"]:
        out["gb_per_s"] = size / 1e9 / out["last_s"]
    if out.get("transfer_s"):
        out["gb_per_s_transfer"] = size / 1e9 / out["transfer_s"]
    delivered_gb = size * n * len(per_run) / 1e9
    procs = data.get("procs") or {}
    srv, ag = procs.get("server") or {}, procs.get("agents") or {}
    out["server_cpu_s"] = srv.get("cpu_s")
    out["server_peak_rss_mib"] = srv["peak_rss_kib"] / 1024 if srv.get("peak_rss_kib") else None
    out["agents_cpu_s"] = ag.get("cpu_s_total")
    out["agent_peak_rss_mib"] = ag["peak_rss_kib_max"] / 1024 if ag.get("peak_rss_kib_max") else None
    if delivered_gb > 0:
        out["server_cpu_s_per_gb"] = srv["cpu_s"] / delivered_gb if srv.get("cpu_s") is not None else None
        out["agents_cpu_s_per_gb"] = ag["cpu_s_total"] / delivered_gb if ag.get("cpu_s_total") is not None else None
    return out


def seed_shares(rec, size):
    """What the seed sent each agent in one run (the task status's
    `bytesFromSeed`): the least and the most, and how many agents took less
    than half a fair share (size / agents). In an even fleet such an agent
    is starved: it has few first copies to relay, so its upload idles
    (docs/benchmarks.md, twenty-first run); in a mixed one, slow agents take
    less by design. None for a single agent or a status without the
    figures."""
    infos = ((rec.get("status") or {}).get("dispatchInfos") or {}).values()
    got = [i.get("bytesFromSeed") for i in infos]
    if len(got) < 2 or None in got:
        return None
    fair = size / len(got)
    return {"min_bytes": min(got), "max_bytes": max(got),
            "under_half_fair": sum(1 for b in got if b < fair / 2)}


def seed_share_note(shares):
    """One line on the seed's shares per agent, by run (a count past 3 runs)."""
    if len(shares) <= 3:
        parts = [f"{fmt_num(s['min_bytes'] / MIB)}–{fmt_num(s['max_bytes'] / MIB)} MiB, "
                 f"{s['under_half_fair']} under half a fair share"
                 if s else "–" for s in shares]
        return "from the seed per agent " + "; ".join(parts)
    counts = [s["under_half_fair"] for s in shares if s]
    return (f"agents under half a fair share from the seed: "
            f"{sum(1 for n in counts if n)} of {len(shares)} runs had any, at most {max(counts, default=0)}")


def stalled_within(host, end_s):
    """Seconds of a run's recorded stalls (bench/stallmon.py) that fall in
    its first `end_s` seconds after the POST."""
    if host.get("stalls") is None or end_s is None:
        return None
    return stallmon.overlap(host["stalls"], 0.0, end_s)


def stolen_within(host, end_s):
    """Steal per vCPU in a run's first `end_s` seconds after the POST, from
    the stall monitor's readings."""
    if not host.get("steal") or end_s is None:
        return None
    return stallmon.steal_within(host["steal"], 0.0, end_s)


def page_reporting_note(p):
    """One line on `--no-page-reporting` (bench/pagereport.py)."""
    text = (f"free page reporting held off (order {p.get('order_before')} -> {p.get('order_during')}, "
            "restored when the lab exits)")
    if p.get("reported_kib_since_start") is not None:
        text += f"; {p['reported_kib_since_start']} KiB reported since the lab started"
    return text


def machine_note(m):
    """One line on what the machine lost, by run (a summary past 3 runs)."""
    def series(values, unit):
        if len(values) <= 3:
            return ", ".join(fmt_num(v) for v in values) + f" {unit}"
        known = [v for v in values if v is not None]
        top = fmt_num(max(known) if known else None)
        return f"max {top} {unit}, total {fmt_num(sum(known))} {unit} over {len(values)} runs"
    text = f"machine stalled (stallmon.py) {series(m['stall_s'], 's')}"
    if m.get("realtime") is False:
        text += " (ticker at plain priority: this counts waits for a core too)"
    for g, v in (m.get("groups") or {}).items():
        text += (f" (group `{g}`, up to its last host: {series(v['stall_s'], 's')}, "
                 f"steal {series(v['steal_s'], 's per vCPU')})")
    return text + f"; steal {series(m['steal_s'], 's per vCPU')}"


def transfer_window(rec):
    """Seconds from the first destination's startedAt to the last one's finishedAt."""
    infos = ((rec.get("status") or {}).get("dispatchInfos") or {}).values()
    starts = [parse_time(i.get("startedAt")) for i in infos]
    ends = [parse_time(i.get("finishedAt")) for i in infos]
    if not starts or None in starts or None in ends:
        return None
    return max(ends) - min(starts)


def lookup(result, path):
    cur = result
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def evaluate_targets(result, targets):
    out = []
    for t in targets:
        value = lookup(result, t["metric"])
        if value is None:
            met = None
        elif "max" in t:
            met = value <= t["max"]
        else:
            met = value >= t["min"]
        out.append({"metric": t["metric"], "limit": ("≤ " + str(t["max"])) if "max" in t else ("≥ " + str(t["min"])),
                    "value": value, "met": met})
    return out


COLUMNS = [
    ("first s", "first_s"), ("median s", "median_s"), ("last s", "last_s"),
    ("first/T", "ratio_first"), ("median/T", "ratio_median"), ("last/T", "ratio_last"),
    ("seed egress /F", "seed_egress_f"), ("srv tx /F", "iface_tx_f"),
    ("server CPU s", "server_cpu_s"), ("server RSS MiB", "server_peak_rss_mib"),
    ("agents CPU s", "agents_cpu_s"), ("agent RSS MiB", "agent_peak_rss_mib"), ("bytes ok", "verified"),
]


def markdown_table(results):
    lines = ["| scenario | system | T_min s | " + " | ".join(c for c, _ in COLUMNS) + " |",
             "|" + " --- |" * (len(COLUMNS) + 3)]
    notes = []
    for res in results:
        if res.get("error"):
            notes.append(f"- {res['scenario']}: ERROR {res['error']}")
            continue
        for system in ("pollen", "http"):
            s = (res.get(system) or {}).get("summary")
            if not s:
                continue
            row = [res["scenario"], system, fmt_num(res["bounds"]["t_min_s"])]
            row += [fmt_num(s.get(k)) for _, k in COLUMNS]
            lines.append("| " + " | ".join(row) + " |")
            for g, gs in s.get("groups", {}).items():
                notes.append(f"- {res['scenario']} {system} group `{g}`: own T_min {fmt_num(gs['t_min_s'])} s, "
                             f"first/median/last {fmt_num(gs['first_s'])}/{fmt_num(gs['median_s'])}/"
                             f"{fmt_num(gs['last_s'])} s = {fmt_num(gs['ratio_first'])}/"
                             f"{fmt_num(gs['ratio_median'])}/{fmt_num(gs['ratio_last'])}× own T_min")
            if s.get("last_s_median_ms") is not None:
                notes.append(f"- {res['scenario']} {system}: last host, median of {res['runs']} runs "
                             f"{fmt_num(s['last_s_median_ms'], 0)} ms (min {fmt_num(s['last_s_min'] * 1000, 0)}, "
                             f"max {fmt_num(s['last_s_max'] * 1000, 0)})")
            if s.get("machine"):
                notes.append(f"- {res['scenario']} {system}: " + machine_note(s["machine"]))
            if s.get("seed_shares"):
                notes.append(f"- {res['scenario']} {system}: " + seed_share_note(s["seed_shares"]))
            if s.get("gb_per_s") is not None and res["agents"] == 1:
                notes.append(f"- {res['scenario']} {system}: {fmt_num(s['gb_per_s'])} GB/s from POST"
                             + (f", {fmt_num(s['gb_per_s_transfer'])} GB/s startedAt→finishedAt"
                                if s.get("gb_per_s_transfer") else "")
                             + f"; CPU s/GB server {fmt_num(s.get('server_cpu_s_per_gb'))}, "
                             f"agent {fmt_num(s.get('agents_cpu_s_per_gb'))}")
        if res.get("page_reporting"):
            notes.append(f"- {res['scenario']}: " + page_reporting_note(res["page_reporting"]))
        for t in res.get("targets", []):
            mark = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
            notes.append(f"- {res['scenario']} target `{t['metric']}` {t['limit']}: {fmt_num(t['value'])} ({mark})")
    return "\n".join(lines + [""] + notes)
