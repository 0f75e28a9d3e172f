"""Unit tests of the lab's arithmetic: python3 -m unittest bench/test_lab.py"""

import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bounds  # noqa: E402
import report  # noqa: E402
import pagereport  # noqa: E402
import payload  # noqa: E402
import piecetrace as piece_trace  # noqa: E402
import portrates  # noqa: E402
import stallmon  # noqa: E402
from labnet import make_hosts  # noqa: E402
from scratchfs import GIB, image_size, inode_count  # noqa: E402

MIB = 1 << 20
SCENARIOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenarios.json")
RATE_SCENARIOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenarios-rates.json")


def load_scenarios(path=SCENARIOS):
    with open(path) as f:
        return json.load(f)


class KumarRoss(unittest.TestCase):
    def test_seed_bound_dominates_for_homogeneous_links(self):
        u = bounds.mbit_to_bytes(50)
        self.assertEqual(u, 6.25e6)
        t = bounds.kumar_ross(64 * MIB, u, [u] * 8, [u] * 8)
        self.assertAlmostEqual(t, 64 * MIB / 6.25e6)  # F/u_s = 10.74 s > 8F/(9u)

    def test_swarm_term(self):
        # slow agent uploads: N F / (u_s + sum u_i) is the largest term
        t = bounds.kumar_ross(100, 10.0, [1.0] * 20, [1000.0] * 20)
        self.assertAlmostEqual(t, 20 * 100 / 30.0)

    def test_download_term(self):
        t = bounds.kumar_ross(100, 100.0, [100.0] * 3, [50.0, 10.0, 100.0])
        self.assertAlmostEqual(t, 10.0)

    def test_heterogeneous_fast_group_bound(self):
        fast, slow, srv = (bounds.mbit_to_bytes(m) for m in (100, 10, 100))
        size = 64 * MIB
        everyone = bounds.kumar_ross(size, srv, [slow] * 4 + [fast] * 8, [slow] * 4 + [fast] * 8)
        self.assertAlmostEqual(everyone, size / slow)
        own = bounds.kumar_ross(size, srv, [fast] * 8, [fast] * 8)
        self.assertAlmostEqual(own, size / fast)

    def test_uncapped(self):
        self.assertIsNone(bounds.kumar_ross(100, None, [None], [None]))
        # an uncapped agent upload removes the swarm term, not the seed term
        self.assertAlmostEqual(bounds.kumar_ross(100, 10.0, [None, 5.0], [None, None]), 10.0)

    def test_http_bound(self):
        self.assertAlmostEqual(bounds.http_bound(100, 10.0, [50.0] * 8), 80.0)

    def test_units(self):
        self.assertAlmostEqual(bounds.mbit_to_mib(50), 6.25e6 / MIB)
        self.assertEqual(bounds.mbit_to_mib(0), 0)
        self.assertEqual(bounds.parse_size("64MiB"), 64 * MIB)
        self.assertEqual(bounds.parse_size("4KiB"), 4096)
        self.assertEqual(bounds.parse_size("1GiB"), 1 << 30)
        self.assertEqual(bounds.parse_size(" 10 kb"), 10000)


class Stats(unittest.TestCase):
    def test_completion_stats(self):
        s = bounds.completion_stats({"a": 3.0, "b": 1.0, "c": 2.0, "d": 4.0}, t_min=2.0)
        self.assertEqual((s["first_s"], s["median_s"], s["last_s"]), (1.0, 2.5, 4.0))
        self.assertEqual((s["ratio_first"], s["ratio_median"], s["ratio_last"]), (0.5, 1.25, 2.0))

    def test_incomplete_has_no_last(self):
        s = bounds.completion_stats({"a": 1.0, "b": None})
        self.assertEqual(s["completed"], 1)
        self.assertIsNone(s["last_s"])
        self.assertIsNone(s["ratio_first"])

    def test_summary_and_targets(self):
        scn = load_scenarios()["s3-hetero"]
        hosts = make_hosts(scn, "loopback", "x-")
        import lab
        size = 64 * MIB
        b = lab.compute_bounds(hosts, size)
        self.assertAlmostEqual(b["t_min_s"], size / 1.25e6)
        self.assertAlmostEqual(b["groups"]["fast"]["t_min_s"], size / 12.5e6)
        times = {h.name: (60.0 if h.group == "slow" else 6.0) for h in hosts[1:]}
        result = {"size_bytes": size, "agents": 12, "bounds": b,
                  "pollen": {"runs": [{"times_s": times, "verify": {k: [] for k in times},
                                       "seed_bytes": size, "iface_tx_bytes": None}],
                             "procs": {}}}
        s = report.summarize(result, "pollen")
        result["pollen"]["summary"] = s
        self.assertTrue(s["ok"])
        self.assertAlmostEqual(s["seed_egress_f"], 1.0)
        self.assertAlmostEqual(s["groups"]["fast"]["ratio_last"], 6.0 / (size / 12.5e6))
        t = report.evaluate_targets(result, scn["targets"])
        self.assertTrue(t[0]["met"])
        self.assertIn("pollen", report.markdown_table([dict(result, scenario="s3-hetero", runs=1)]))


class Scenarios(unittest.TestCase):
    def test_all_scenarios_parse(self):
        for path in (SCENARIOS, RATE_SCENARIOS):
            scns = load_scenarios(path)
            for name, scn in scns.items():
                if name.startswith("_"):
                    continue
                hosts = make_hosts(scn, scn["mode"], "plab0000-")
                self.assertEqual(len(hosts) - 1, sum(g["count"] for g in scn["agents"]))
                self.assertEqual(len({h.ip for h in hosts}), len(hosts))
                for h in hosts:
                    if h.netns:
                        self.assertLessEqual(len(h.netns), 15)
                bounds.parse_size(scn["payload"].get("size", "1"))

    def test_rate_scenarios_share_one_bound_ratio(self):
        # the same fleet at three rates: T_min scales with 1/rate
        scns = load_scenarios(RATE_SCENARIOS)
        import lab
        size = 64 * MIB
        t = {n: lab.compute_bounds(make_hosts(scns[n], "netns", "x-"), size)["t_min_s"]
             for n in ("n16-r50", "n16-r25", "n16-r12.5")}
        self.assertAlmostEqual(t["n16-r50"], size / 6.25e6)
        self.assertAlmostEqual(t["n16-r25"], 2 * t["n16-r50"])
        self.assertAlmostEqual(t["n16-r12.5"], 4 * t["n16-r50"])


class LabOptions(unittest.TestCase):
    def test_fifo_bytes(self):
        from labnet import fifo_bytes
        # the default: 100 ms of the rate, at least 256 KiB
        self.assertEqual(fifo_bytes(50, 100), 625000)
        self.assertEqual(fifo_bytes(10, 100), 256 * 1024)
        # other lengths scale the rate's share and the floor alike
        self.assertEqual(fifo_bytes(50, 25), 156250)
        self.assertEqual(fifo_bytes(50, 200), 1250000)
        self.assertEqual(fifo_bytes(10, 50), 128 * 1024)

    def test_scenarios_sharing_a_workdir_get_their_own(self):
        import argparse
        import lab
        scn = load_scenarios()
        args = argparse.Namespace(mode=None, workdir="/tmp/plab-shared", fifo_ms=100, host_sysctl=[])
        one = lab.Lab(args, "s1-n8", scn["s1-n8"])
        self.assertEqual(one.workdir, "/tmp/plab-shared")
        a = lab.Lab(args, "s1-n8", scn["s1-n8"], subdir="s1-n8")
        b = lab.Lab(args, "s4-small", scn["s4-small"], subdir="s4-small")
        self.assertEqual(a.workdir, "/tmp/plab-shared/s1-n8")
        self.assertEqual(b.workdir, "/tmp/plab-shared/s4-small")
        args.workdir = None
        c = lab.Lab(args, "smoke", scn["smoke"], subdir="smoke")
        self.assertEqual(c.workdir, f"/tmp/plab-{c.runid}")

    def test_host_sysctl_arg(self):
        import argparse
        import lab
        self.assertEqual(lab.host_sysctl_arg("net.ipv4.tcp_tso_rtt_log=0"), ("net.ipv4.tcp_tso_rtt_log", "0"))
        for bad in ("net.ipv4.tcp_tso_rtt_log", "=0", "net.x=", "vm.swappiness=1"):
            with self.assertRaises(argparse.ArgumentTypeError):
                lab.host_sysctl_arg(bad)

    def test_server_control_arg(self):
        import argparse
        import lab
        self.assertEqual(lab.server_control_arg('{"pushConcurrency": 1}'), {"pushConcurrency": 1})
        for bad in ("pushConcurrency=1", "[1]", "3"):
            with self.assertRaises(argparse.ArgumentTypeError):
                lab.server_control_arg(bad)


class PcapMix(unittest.TestCase):
    @staticmethod
    def frame(src, payload, tcp_header=32):
        import struct
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + tcp_header + payload, 0, 0, 64, 6, 0,
                         bytes(int(x) for x in src.split(".")), bytes([10, 77, 0, 13]))
        tcp = bytes(12) + bytes([(tcp_header // 4) << 4]) + bytes(tcp_header - 13)
        return bytes(12) + b"\x08\x00" + ip + tcp + bytes(min(payload, 40))

    def test_classes_and_wire_bytes(self):
        import struct
        import tempfile
        import pcapmix
        frames = [self.frame("10.77.0.12", 0), self.frame("10.77.0.1", 9),
                  self.frame("10.77.0.12", 2896), self.frame("10.77.0.12", 100),
                  bytes(12) + b"\x86\xdd" + bytes(40)]
        with tempfile.NamedTemporaryFile("wb", suffix=".pcap", delete=False) as f:
            f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 128, 1))
            for i, fr in enumerate(frames):
                f.write(struct.pack("<IIII", 1000 + i, 0, len(fr), len(fr)) + fr)
            f.write(b"\x00" * 7)  # a record cut short
        try:
            got = list(pcapmix.packets(f.name))
            self.assertEqual([t for t, _ in got], [1000, 1001, 1002, 1003, 1004])
            rows = pcapmix.mix((fr for _, fr in got), "10.77.0.1")
        finally:
            os.unlink(f.name)
        self.assertEqual(rows["peer ack"], [1, 0, 66])
        self.assertEqual(rows["seed control"], [1, 9, 75])
        self.assertEqual(rows["peer data"], [1, 2896, 2896 + 2 * 66])
        self.assertEqual(rows["peer mid"], [1, 100, 166])
        self.assertEqual(len(rows), 4)
        with tempfile.NamedTemporaryFile("wb", suffix=".pcap", delete=False) as f:
            f.write(b"not a pcap at all, no")
        try:
            with self.assertRaises(ValueError):
                list(pcapmix.packets(f.name))
        finally:
            os.unlink(f.name)


class ScratchImage(unittest.TestCase):
    def test_payload_bound_and_image_size(self):
        self.assertEqual(payload.max_bytes({"kind": "file", "size": "256MiB"}), 256 * MIB)
        tree = {"kind": "tree", "files": 2000, "min": "4KiB", "max": "64KiB"}
        self.assertEqual(payload.max_bytes(tree), 2000 * 64 * 1024)
        self.assertEqual(payload.max_files(tree), 2000)
        self.assertEqual(payload.max_files({"kind": "file", "size": "1GiB"}), 1)
        # 2 copies of 256 MiB, twice over, plus 1 GiB: 2 GiB
        self.assertEqual(image_size(256 * MIB, 2), 2 * GIB)
        self.assertEqual(image_size(1 << 30, 2), 5 * GIB)
        self.assertEqual(inode_count(1, 2), 16384)
        self.assertEqual(inode_count(2000, 21), 168000)


class PieceTrace(unittest.TestCase):
    SRV = ("\x1b[2m2026-11-22T11:43:25.000000Z\x1b[0m \x1b[32m INFO\x1b[0m create{task=t-0}: "
           "pollen_server::task_manager: task accepted dests=2 bytes=131072")

    @staticmethod
    def line(ts, piece, seed):
        return (f"2026-11-22T11:43:{ts}Z DEBUG run_task{{task=t-0 info_hash=ab}}: "
                f"pollen_agent::task_state::pieces: piece stored task=t-0 piece={piece} "
                f"from_seed={seed} verify_us=80 total_us=300")

    def test_lag_and_marks(self):
        self.assertEqual(piece_trace.accepted_times([self.SRV]), {"t-0": 1795347805.0})
        a1 = piece_trace.stored_events([self.line("25.100000", 0, "true"),
                                        self.line("25.400000", 1, "false"),
                                        "2026-11-22T11:43:26Z  INFO something else"])
        a2 = piece_trace.stored_events([self.line("25.200000", 1, "true"),
                                        self.line("25.350000", 0, "false")])
        self.assertEqual([e[2:] for e in a1], [(0, True), (1, False)])
        s = piece_trace.summarize(
            {a: [(t, p, sd) for t, _, p, sd in evs] for a, evs in (("a1", a1), ("a2", a2))},
            1795347805.0, bucket=0.5)
        self.assertEqual(s["pieces"], 2)
        self.assertAlmostEqual(s["last_birth_s"], 0.2, places=5)
        self.assertEqual(len(s["lag"]), 1)
        self.assertEqual(s["lag"][0]["copies"], 2)
        self.assertAlmostEqual(s["lag"][0]["lag_max_s"], 0.25, places=5)
        self.assertAlmostEqual(s["agents"]["a1"]["t100_s"], 0.4, places=5)
        self.assertEqual(s["agents"]["a2"]["from_seed_only"], 1)

    def test_tail_names_the_senders(self):
        t0 = 1000.0
        lines = [self.line("25.100000", 0, "false").replace("verify_us", "senders=10.0.0.3+seed verify_us"),
                 self.line("25.200000", 1, "true").replace("verify_us", "senders=seed verify_us"),
                 "2026-11-22T11:43:26Z  INFO something else"]
        self.assertEqual(piece_trace.stored_senders(lines),
                         {("t-0", 0): ["10.0.0.3", "seed"], ("t-0", 1): ["seed"]})
        events = {"a1": [(t0 + 0.5, 0, False), (t0 + 0.9, 1, True)],
                  "a2": [(t0 + 0.2, 0, True)]}
        senders = {"a1": {0: ["10.0.0.3", "seed"], 1: ["seed"]}, "a2": {}}
        rows = piece_trace.tails(events, senders, t0, 1, {"10.0.0.3": "a2"})
        self.assertEqual([(p, who, at) for _, p, who, _, at in rows["a1"]], [(1, "S", "a1")])
        rows = piece_trace.tails(events, senders, t0, 2, {"10.0.0.3": "a2"})
        (t, p, who, born, at), _ = rows["a1"]
        self.assertEqual((p, who, at), (0, "a2+S", "a2"))
        self.assertAlmostEqual(t, 0.5, places=5)
        self.assertAlmostEqual(born, 0.2, places=5)
        self.assertEqual(rows["a2"][0][2], "?")

    def test_seed_timeline(self):
        t0 = 1000.0
        events = {"a2": [(t0 + 0.2, 0, True), (t0 + 2.5, 1, True), (t0 + 2.6, 2, False)],
                  "a1": [(t0 + 0.1, 3, False), (t0 - 1.0, 4, True)]}
        self.assertEqual(piece_trace.seed_timeline(events, t0, 1.0),
                         {"a1": [0, 0, 0], "a2": [1, 0, 1]})

    def test_spread(self):
        t0 = 1000.0
        events = {"a1": [(t0 + 0.10, 0, True), (t0 + 0.30, 1, False)],
                  "a2": [(t0 + 0.20, 1, True), (t0 + 0.25, 0, False)],
                  "a3": [(t0 + 0.40, 0, False)]}
        s = piece_trace.spread(events, t0, [0.05, 0.22, 0.35, 0.5])
        self.assertEqual([round(t, 3) for t in s["first_births_s"]], [0.1, 0.2])
        self.assertEqual([(r["born"], r["copies"], r["missing"]) for r in s["rows"]],
                         [(0, 0, 0), (2, 2, 4), (2, 4, 2), (2, 5, 1)])


    def test_store_durations_and_seed_twice(self):
        lines = [self.line("25.100000", 0, "true"),
                 self.line("25.200000", 1, "true").replace("verify_us=80 total_us=300",
                                                           "verify_us=5000 total_us=9000"),
                 self.line("25.300000", 2, "true").replace("task=t-0 piece", "task=t-1 piece"),
                 "2026-11-22T11:43:26Z  INFO something else"]
        self.assertEqual(piece_trace.store_durations(lines, "t-0"), [(80, 300), (5000, 9000)])
        srv = ["\x1b[2m2026-11-22T11:43:25.500000Z\x1b[0m \x1b[34mDEBUG\x1b[0m serve{peer=x}: "
               "pollen_agent::super_seed: slow connection gives its first copies back conn=8 "
               "delivery=Some(410.0ms) pieces=5", self.SRV]
        self.assertEqual(piece_trace.slow_verdicts(srv), [(1795347805.5, 5)])
        t0 = 1000.0
        events = {"a1": [(t0 + 0.5, 0, True), (t0 + 0.9, 1, False)],
                  "a2": [(t0 + 0.2, 0, True), (t0 + 0.3, 1, False)],
                  "a3": [(t0 + 0.7, 0, False), (t0 + 0.4, 1, True)]}
        senders = {"a1": {0: ["seed"], 1: ["10.0.0.3"]},
                   "a2": {0: ["10.0.0.4", "seed"], 1: ["seed"]},
                   "a3": {0: ["10.0.0.3"]}}
        twice = piece_trace.seed_twice(events, senders, t0)
        self.assertEqual(list(twice), [0])
        self.assertEqual([a for _, a in twice[0]], ["a2", "a1"])
        self.assertAlmostEqual(twice[0][0][0], 0.2, places=5)


class PortRates(unittest.TestCase):
    # 1 MB/s up and 2 MB/s down on s1 (8 and 16 Mbit/s), the server idle.
    ROWS = [{"t": 100.0 + i * 0.5, "c": {"s0": [0, 0], "s1": [i * 500_000, i * 1_000_000]}}
            for i in range(9)]

    def test_window_and_timeline(self):
        r = portrates.window_rates(self.ROWS, ["s0", "s1"], 101.0, 103.0)
        self.assertAlmostEqual(r["s1"][0], 8.0)
        self.assertAlmostEqual(r["s1"][1], 16.0)
        self.assertEqual(r["s0"], (0.0, 0.0))
        self.assertIsNone(portrates.window_rates(self.ROWS, ["s1"], 101.1, 101.4))
        self.assertIsNone(portrates.window_rates(self.ROWS, ["s9"], 100.0, 104.0))
        tl = portrates.timeline(self.ROWS, ["s1"], 101.0, 1.0)
        self.assertEqual([t for t, _ in tl], [0.0, 1.0, 2.0])
        self.assertAlmostEqual(tl[1][1]["s1"][1], 16.0)

    def test_idle_times(self):
        # s1 downloads 2 MB/s (16 Mbit/s); at a full reading of 32 Mbit/s it
        # idles half the time. A mark counts up to the last sample before it.
        idle = portrates.idle_times(self.ROWS, "s1", 101.0, 32.0, [0.4, 1.0, 2.2, 9.0])
        self.assertEqual([m for m, _ in idle], [0.4, 1.0, 2.2, 9.0])
        for (_, got), want in zip(idle, [0.0, 0.5, 1.0, 1.5]):  # 9.0: the last sample, at 104.0
            self.assertAlmostEqual(got, want)
        self.assertEqual(portrates.idle_times(self.ROWS, "s1", 105.0, 32.0, [1.0]), [])
        self.assertEqual(portrates.marks_arg("2,0.3"), [0.3, 2.0])
        import argparse
        for bad in ("", "0", "a,1"):
            with self.assertRaises(argparse.ArgumentTypeError):
                portrates.marks_arg(bad)

    def test_busy_window_summary(self):
        rec = {"wall_start": 100.0, "times_s": {"a01": 3.5, "a02": None}}
        self.assertEqual(portrates.busy_window(rec, 1.0), (1.0, 3.5))
        s = portrates.summarize_run(self.ROWS, rec, {"srv": "s0", "a01": "s1"}, skip_s=1.0)
        self.assertEqual((s["from_s"], s["to_s"]), (1.0, 3.5))
        self.assertEqual(s["hosts"]["a01"], {"up_mbit": 8.0, "down_mbit": 16.0})
        self.assertIsNone(portrates.summarize_run(self.ROWS, {"wall_start": 100.0, "times_s": {"a01": 0.5}},
                                                  {"a01": "s1"}))

    def test_load_skips_a_cut_line(self):
        import tempfile
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            f.write(json.dumps(self.ROWS[0]) + "\n" + '{"t": 1')
        try:
            self.assertEqual(portrates.load(f.name), [self.ROWS[0]])
        finally:
            os.unlink(f.name)



class StallMonitor(unittest.TestCase):
    def test_stalls_clipped_to_the_run(self):
        # Ticks late by 0.5 s (covering 100.01-100.51) and 1 s (102.01-103.01).
        rows = [(100.0, 0.5), (102.0, 1.0)]
        self.assertAlmostEqual(stallmon.stalled(rows, 99.0, 110.0), 1.5)
        self.assertAlmostEqual(stallmon.stalled(rows, 100.26, 102.51), 0.25 + 0.5)
        self.assertEqual(stallmon.stalled(rows, 104.0, 110.0), 0.0)
        self.assertEqual(stallmon.stalled([], 0.0, 1.0), 0.0)

    def test_steal_from_proc_stat(self):
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "stat")
            with open(path, "w") as f:
                f.write("cpu  10 0 20 300 4 0 5 400 0 0\ncpu0 5 0 10 150 2 0 2 200 0 0\n"
                        "cpu1 5 0 10 150 2 0 3 200 0 0\nintr 1 2 3\n")
            self.assertEqual(stallmon.read_steal(path), (400, 2))
            with open(path, "w") as f:
                f.write("intr 1 2 3\n")
            self.assertIsNone(stallmon.read_steal(path))
        self.assertIsNone(stallmon.read_steal(os.path.join("/nonexistent", "stat")))
        before, after = (400, 2), (400 + 2 * stallmon.USER_HZ, 2)
        self.assertAlmostEqual(stallmon.steal_seconds(before, after), 1.0)
        self.assertIsNone(stallmon.steal_seconds(None, after))

    def test_stalls_within_a_group_and_the_note(self):
        host = {"stalls": [[1.0, 0.5], [5.0, 1.0]], "stall_s": 1.5}
        self.assertAlmostEqual(report.stalled_within(host, 5.5), 1.0)
        self.assertEqual(report.stalled_within(host, 0.5), 0.0)
        self.assertIsNone(report.stalled_within({}, 3.0))
        self.assertIsNone(report.stalled_within(host, None))
        host["steal"] = [[0.05, 0.0], [2.0, 0.1], [4.0, 0.3], [6.0, 0.9]]
        self.assertAlmostEqual(report.stolen_within(host, 5.0), 0.3)
        self.assertIsNone(report.stolen_within(host, 1.0))
        note = report.machine_note({"stall_s": [1.5], "steal_s": [0.2],
                                    "groups": {"fast": {"stall_s": [1.0], "steal_s": [0.3]}}})
        self.assertEqual(note, "machine stalled (stallmon.py) 1.50 s (group `fast`, up to its last "
                               "host: 1.00 s, steal 0.30 s per vCPU); steal 0.20 s per vCPU")
        many = report.machine_note({"stall_s": [0.0] * 19 + [0.4], "steal_s": [None] * 20})
        self.assertIn("max 0.40 s, total 0.40 s over 20 runs", many)
        self.assertIn("steal max – s per vCPU", many)
        plain = report.machine_note({"stall_s": [0.0], "steal_s": [0.0], "realtime": False})
        self.assertIn("plain priority", plain)

    def test_sampler_records_a_late_tick(self):
        import signal
        import subprocess
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "stalls.jsonl")
            p = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                               "stallmon.py"), "sample", "--out", out])
            try:
                deadline = time.monotonic() + 10
                while not os.path.exists(out) and time.monotonic() < deadline:
                    time.sleep(0.01)
                t_stop = time.time()
                p.send_signal(signal.SIGSTOP)  # the machine "stalls" for the sampler
                time.sleep(0.3)
                p.send_signal(signal.SIGCONT)
                while time.monotonic() < deadline:
                    rows, steal = stallmon.load(out)
                    if stallmon.stalled(rows, t_stop - 1, t_stop + 2) > 0.2 and steal:
                        break
                    time.sleep(0.02)
            finally:
                p.terminate()
                p.wait(10)
            rows, steal = stallmon.load(out)
            self.assertEqual(rows[0][1], 0.0)
            self.assertTrue(steal, "no steal readings")
            self.assertGreater(stallmon.stalled(rows, t_stop - 1, t_stop + 2), 0.2)
            self.assertLess(stallmon.stalled(rows, t_stop - 1, t_stop + 2), 1.0)


class SeedShares(unittest.TestCase):
    def test_counts_the_agents_under_half_a_fair_share(self):
        def rec(*mib):
            return {"status": {"dispatchInfos": {f"10.0.0.{i}": {"bytesFromSeed": m * MIB}
                                                 for i, m in enumerate(mib)}}}
        # 64 MiB over 4 agents: a fair share is 16 MiB, half of it 8
        s = report.seed_shares(rec(2, 7.9, 8, 46.1), 64 * MIB)
        self.assertEqual(s, {"min_bytes": 2 * MIB, "max_bytes": 46.1 * MIB, "under_half_fair": 2})
        self.assertIsNone(report.seed_shares(rec(64), 64 * MIB), "one agent has no share to compare")
        self.assertIsNone(report.seed_shares({"status": {"dispatchInfos": {"a": {}, "b": {}}}}, MIB))
        self.assertIsNone(report.seed_shares({}, MIB))
        self.assertEqual(report.seed_share_note([s, None]),
                         "from the seed per agent 2.00–46.10 MiB, 2 under half a fair share; –")
        many = report.seed_share_note([s, None, dict(s, under_half_fair=0), dict(s, under_half_fair=5)])
        self.assertIn("2 of 4 runs had any, at most 5", many)


class PageReportingHold(unittest.TestCase):
    def setUp(self):
        import tempfile
        self.dir = tempfile.mkdtemp()
        self.params = os.path.join(self.dir, "params")
        os.mkdir(self.params)
        self.write("page_reporting_order", "9\n")
        self.write("reported_kib", "1000\n")
        self.pti = os.path.join(self.dir, "pagetypeinfo")
        with open(self.pti, "w") as f:
            f.write("Page block order: 9\nPages per block:  512\n\n"
                    "Free pages count per migrate type at order       0      1      2      3      4      5"
                    "      6      7      8      9     10 \n")

    def tearDown(self):
        import shutil
        shutil.rmtree(self.dir)

    def write(self, name, text):
        with open(os.path.join(self.params, name), "w") as f:
            f.write(text)

    def order(self):
        with open(os.path.join(self.params, "page_reporting_order")) as f:
            return f.read().strip()

    def test_holds_off_and_restores(self):
        self.assertEqual(pagereport.page_orders(self.pti), 11)
        hold = pagereport.PageReportingHold(self.params, self.pti)
        self.assertIsNone(hold.unavailable())
        hold.start()
        try:
            self.assertEqual(self.order(), "11")
            self.write("reported_kib", "1500\n")
            self.assertEqual(hold.record(), {"order_before": 9, "order_during": 11,
                                             "reported_kib_since_start": 500})
        finally:
            hold.stop()
        self.assertEqual(self.order(), "9")
        self.assertIn("order 9 -> 11", report.page_reporting_note(hold.record()))

    def test_restores_after_an_error(self):
        hold = pagereport.PageReportingHold(self.params, self.pti)
        with self.assertRaises(SystemExit):
            hold.start()
            try:
                raise SystemExit(143)
            finally:
                hold.stop()
        self.assertEqual(self.order(), "9")

    def test_falls_back_to_the_largest_order(self):
        class Refusing(pagereport.PageReportingHold):
            def _write(self, order):
                if order > 10:
                    raise OSError(22, "Invalid argument")
                super()._write(order)
        hold = Refusing(self.params, self.pti)
        hold.start()
        try:
            self.assertEqual((hold.before, hold.during), (9, 10))
            self.assertEqual(self.order(), "10")
        finally:
            hold.stop()
        self.assertEqual(self.order(), "9")

    def test_a_refused_write_is_a_clear_error(self):
        class Refusing(pagereport.PageReportingHold):
            def _write(self, order):
                raise OSError(22, "Invalid argument")
        hold = Refusing(self.params, self.pti)
        with self.assertRaisesRegex(RuntimeError, r"writing .* failed \(11: .*; 10: .*\)"):
            hold.start()
        hold.stop()
        self.assertEqual(self.order(), "9")

    def test_unavailable(self):
        missing = pagereport.PageReportingHold(os.path.join(self.dir, "nope"), self.pti)
        self.assertIn("does not exist", missing.unavailable())
        with self.assertRaises(RuntimeError):
            missing.start()
        self.write("page_reporting_order", "x\n")
        self.assertIn("number", pagereport.PageReportingHold(self.params, self.pti).unavailable())
        no_orders = pagereport.PageReportingHold(self.params, os.path.join(self.dir, "none"))
        self.assertIsNone(pagereport.page_orders(os.path.join(self.dir, "none")))
        self.assertIn("page orders", no_orders.unavailable())


if __name__ == "__main__":
    unittest.main()
