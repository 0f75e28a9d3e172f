#!/usr/bin/env python3
"""Pollen benchmark lab: Pollen versus a plain HTTP fan-out on emulated links.

    sudo python3 bench/lab.py --scenario s1-n8 --out results.json          # netns + tc
    python3 bench/lab.py --scenario smoke --mode loopback --out smoke.json  # no root

Each scenario (bench/scenarios.json) runs one server and N agents, first with
Pollen, then with the HTTP baseline under the same limits, checks every copy's
bytes, and reports completion times against the Kumar-Ross bound, the seed's
egress, and CPU and peak RSS of every process. See bench/README.md.
"""

import argparse
import datetime
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bounds  # noqa: E402
import pagereport  # noqa: E402
import payload  # noqa: E402
import pcapmix  # noqa: E402
import portrates  # noqa: E402
import stallmon  # noqa: E402
from cluster import AGENT_PORTS, SERVER_PORTS, PollenCluster  # noqa: E402
from fanout import HTTP_PORT, HttpFanout  # noqa: E402
from labnet import LoopbackLab, NetnsLab, Procs, ensure_tools, make_hosts, proc_stats  # noqa: E402
from report import evaluate_targets, markdown_table, summarize  # noqa: E402
from scratchfs import ScratchDisks, image_size, inode_count  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def load_scenarios(path):
    with open(path) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


def machine_info():
    mem = None
    cpu = platform.processor()
    try:
        with open("/proc/meminfo") as f:
            mem = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except (OSError, StopIteration):
        pass
    rev = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "mem_gib": round(mem / 2**20, 1) if mem else None,
            "cpu": cpu, "python": platform.python_version(), "git": rev or None,
            "tcp_cc": read_first("/proc/sys/net/ipv4/tcp_congestion_control")}


def read_first(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def compute_bounds(hosts, size):
    server, agents = hosts[0], hosts[1:]
    out = {
        "t_min_s": bounds.kumar_ross(size, server.up_bps, [a.up_bps for a in agents],
                                     [a.down_bps for a in agents]),
        "http_bound_s": bounds.http_bound(size, server.up_bps, [a.down_bps for a in agents]),
        "groups": {},
    }
    groups = sorted({a.group for a in agents})
    if len(groups) > 1:
        for g in groups:
            members = [a for a in agents if a.group == g]
            out["groups"][g] = {
                "agents": [a.name for a in members],
                "t_min_s": bounds.kumar_ross(size, server.up_bps, [a.up_bps for a in members],
                                             [a.down_bps for a in members]),
            }
    return out


class Lab:
    def __init__(self, args, name, scn, subdir=None):
        """`subdir`: several scenarios share `--workdir`, so each gets its
        own directory in it (with `--keep`, a later scenario would otherwise
        find the earlier one's disks and copies)."""
        self.args = args
        self.name = name
        self.scn = scn
        self.mode = args.mode or scn.get("mode", "loopback")
        self.runid = secrets.token_hex(2)
        self.prefix = f"plab{self.runid}-"
        if args.workdir:
            workdir = os.path.join(args.workdir, subdir) if subdir else args.workdir
        else:
            workdir = f"/tmp/plab-{self.runid}"
        self.workdir = os.path.abspath(workdir)
        self.hosts = make_hosts(scn, self.mode, self.prefix)
        self.procs = Procs()
        self.scratch = None
        if self.mode == "netns":
            self.net = NetnsLab(self.prefix, self.hosts, args.fifo_ms, args.host_sysctl)
        else:
            self.net = LoopbackLab(self.hosts, SERVER_PORTS + AGENT_PORTS + (HTTP_PORT,))

    def log(self, msg):
        print(f"[lab {self.name} {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def settle(self):
        """Writes back every dirty page (the payload just made, the last
        run's copies) before a timed run, so that the kernel's writeback
        does not take CPU from it. Twice: the first pass pushes the scratch
        disks' pages into their image files, the second writes those."""
        t0 = time.monotonic()
        os.sync()
        os.sync()
        self.log(f"wrote back dirty pages in {time.monotonic() - t0:.1f}s")

    def tx_counter(self):
        if self.mode != "netns":
            return None
        return lambda: self.net.tx_bytes(self.hosts[0])

    def run(self):
        args, scn = self.args, self.scn
        if self.mode == "netns" and os.geteuid() != 0:
            raise SystemExit("netns mode needs root (or use --mode loopback)")
        if args.pcap and (self.mode != "netns" or args.pcap not in [h.name for h in self.hosts]):
            raise SystemExit(f"--pcap {args.pcap}: needs netns mode and one of this scenario's hosts")
        if self.mode == "netns":
            ensure_tools(["ip", "tc", "curl"] + (["tcpdump"] if args.pcap else [])
                         + (["sysctl"] if args.host_sysctl else []), self.mode)
        else:
            ensure_tools(["curl"], self.mode)
        os.makedirs(self.workdir, exist_ok=True)
        self.log(f"mode={self.mode} workdir={self.workdir} prefix={self.prefix}")
        runs = args.runs or scn.get("runs", 1)
        if self.mode == "netns" and args.scratch_fs and ScratchDisks.available():
            self.mount_disks(scn["payload"], runs)
        src_root = os.path.join(self.hosts[0].dirs.get("disk", self.workdir), "src")
        dispatch_path, digests, size = payload.generate(scn["payload"], src_root)
        self.log(f"payload {len(digests)} files, {size} bytes")
        timeout = args.timeout or scn.get("timeout_s", 600)
        result = {
            "scenario": self.name, "description": scn.get("description"), "mode": self.mode,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(), "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "size_bytes": size, "files": len(digests), "agents": len(self.hosts) - 1, "runs": runs,
            "hosts": [{"name": h.name, "ip": h.ip, "group": h.group, "up_mbit": h.up_mbit,
                       "down_mbit": h.down_mbit} for h in self.hosts],
            "bounds": compute_bounds(self.hosts, size),
            "fifo_ms": args.fifo_ms if self.mode == "netns" else None,
            "host_sysctls": dict(args.host_sysctl) if self.mode == "netns" else None,
            "server_control": args.server_control,
        }
        result["loadavg_start"] = read_first("/proc/loadavg")
        self.net.setup()
        if args.check_links:
            result["link_check"] = self.check_links(src_root)
        if not args.skip_pollen:
            result["pollen"] = self.run_pollen(dispatch_path, digests, runs, timeout, args.pollen)
        if not args.skip_http:
            result["http"] = self.run_http(src_root, digests, runs, timeout)
        result["loadavg_end"] = read_first("/proc/loadavg")
        hold = getattr(args, "page_reporting_hold", None)
        result["page_reporting"] = hold.record() if hold else None
        for system in ("pollen", "http"):
            if system in result:
                result[system]["summary"] = summarize(result, system)
        result["targets"] = evaluate_targets(result, scn.get("targets", []))
        return result

    def mount_disks(self, spec, runs):
        """A fresh ext4 image per host (see scratchfs.py), room for every run's copies."""
        t0 = time.monotonic()
        self.scratch = ScratchDisks(os.path.join(self.workdir, "disk"))
        copies = runs + 1
        size = image_size(payload.max_bytes(spec), copies)
        inodes = inode_count(payload.max_files(spec), copies)
        for h in self.hosts:
            h.dirs["disk"] = self.scratch.add(h.name, size, inodes)
        self.log(f"{len(self.hosts)} fresh ext4 disks of {size >> 30} GiB (sparse) "
                 f"in {time.monotonic() - t0:.1f}s")

    def run_pollen(self, dispatch_path, digests, runs, timeout, pollen):
        if not os.access(pollen, os.X_OK):
            raise SystemExit(f"{pollen} is not an executable; build with cargo build --release --bin pollen")
        cluster = PollenCluster(pollen, self.hosts, self.procs, self.workdir, self.mode,
                                server_control=self.args.server_control)
        cluster.prepare()
        self.log("starting pollen server and agents")
        cluster.start()
        cpu0 = cluster.cpu_snapshot()
        records = []
        try:
            for k in range(runs):
                self.settle()
                task_id = f"plab-{self.runid}-{self.name}-{k}"
                dest = f"r{k}" if runs > 1 else None
                sampler = self.start_port_sampler(k)
                capture = self.start_capture(k)
                stalls = self.start_stall_monitor(k)
                before = cluster.cpu_snapshot()
                try:
                    rec = cluster.dispatch(task_id, [dispatch_path], timeout,
                                           poll_s=self.scn.get("poll_ms", 50) / 1000,
                                           dest_dir=dest, tx_counter=self.tx_counter(),
                                           piece_length=self.args.piece_length)
                finally:
                    for p in (sampler, capture, stalls):
                        if p:
                            self.procs.stop(p[0])
                rec["host"] = self.host_interference(rec, stalls)
                if sampler:
                    self.add_port_rates(rec, *sampler[1:])
                if capture:
                    self.add_capture(rec, capture[1])
                # Per run as well as per scenario: a later run that costs more
                # CPU than the first shows here.
                rec["procs"] = proc_delta(before, cluster.cpu_snapshot(), self.hosts)
                rec["dest_dir"] = dest
                records.append(rec)
                done = [t for t in rec["times_s"].values() if t is not None]
                self.log(f"pollen run {k}: {len(done)}/{len(rec['times_s'])} done, "
                         f"last {max(done) if done else float('nan'):.2f}s seed {rec['seed_bytes']}")
            cpu1 = cluster.cpu_snapshot()
        finally:
            cluster.stop()
        for rec in records:
            rec["verify"] = {}
            for a in self.hosts[1:]:
                root = os.path.join(a.dirs["down"], rec["dest_dir"] or "")
                rec["verify"][a.name] = payload.verify(digests, root) if rec["times_s"][a.name] is not None \
                    else ["not completed"]
        if not self.args.keep:
            for a in self.hosts[1:]:
                shutil.rmtree(a.dirs["down"], ignore_errors=True)
        return {"runs": records, "procs": proc_delta(cpu0, cpu1, self.hosts)}

    def start_port_sampler(self, k):
        """With --port-rates in netns mode: (process, samples path, {host:
        switch port}) of a counter sampler in the switch namespace."""
        if not self.args.port_rates or self.mode != "netns":
            return None
        ports = {h.name: f"s{i}" for i, h in enumerate(self.hosts)}
        path = os.path.join(self.workdir, f"ports-{k}.jsonl")
        argv = ["ip", "netns", "exec", self.net.switch, sys.executable,
                os.path.join(HERE, "portrates.py"), "sample", "--out", path,
                "--devs", ",".join(ports.values()), "--max-s", str(self.args.timeout or 3600)]
        p = self.start_writer(argv, path, os.path.join(self.workdir, f"ports-{k}.log"))
        return p, path, ports

    def start_stall_monitor(self, k):
        """(process, path, real-time?, steal reading at the start) of the
        stall monitor (see stallmon.py): at real-time priority where `chrt`
        and root allow, else plain. `k` names the run: its number, or
        `http-<number>` for the baseline."""
        path = os.path.join(self.workdir, f"stalls-{k}.jsonl")
        argv = [sys.executable, os.path.join(HERE, "stallmon.py"), "sample", "--out", path,
                "--max-s", str(self.args.timeout or 3600)]
        realtime = os.geteuid() == 0 and shutil.which("chrt") is not None
        if realtime:
            argv = ["chrt", "-f", "20"] + argv
        p = self.start_writer(argv, path, os.path.join(self.workdir, f"stalls-{k}.log"))
        return p, path, realtime, stallmon.read_steal()

    def host_interference(self, rec, stalls):
        """What the machine lost during a run that has just ended: the stall
        monitor's late time from the POST to the last completion, and steal
        per vCPU since the monitor started."""
        done = [t for t in rec["times_s"].values() if t is not None]
        out = {"steal_s": stallmon.steal_seconds(stalls[3], stallmon.read_steal()), "stall_s": None,
               "realtime": stalls[2]}
        if done:
            try:
                rows, steal = stallmon.load(stalls[1])
            except OSError as e:
                self.log(f"stall monitor: {e}")
            else:
                t0, t1 = rec["wall_start"], rec["wall_start"] + max(done)
                out["stall_s"] = stallmon.stalled(rows, t0, t1)
                # each stall in the run, as [seconds after the POST, length],
                # and the steal so far, as [seconds after the POST, seconds per vCPU]
                out["stalls"] = [[round(a + stallmon.TICK - t0, 3), late] for a, late in rows
                                 if late > 0 and t0 <= a + stallmon.TICK <= t1]
                out["steal"] = [[round(t - t0, 3), s] for t, s in steal if t0 <= t <= t1]
        return out

    def start_capture(self, k):
        """With --pcap HOST: (process, pcap path) of a tcpdump of what the
        switch sends HOST (its download), headers only."""
        if not self.args.pcap:
            return None
        i = [h.name for h in self.hosts].index(self.args.pcap)
        path = os.path.join(self.workdir, f"pcap-{k}-{self.args.pcap}.pcap")
        argv = ["ip", "netns", "exec", self.net.switch, "tcpdump", "-U", "-B", "32768", "-i", f"s{i}",
                "-Q", "out", "-s", "128", "-w", path]
        return self.start_writer(argv, path, os.path.join(self.workdir, f"pcap-{k}.log")), path

    def start_writer(self, argv, path, log_path, timeout=5.0):
        """Starts a recorder that writes `path` and waits (up to `timeout`)
        until the file exists, so that the run it records starts after it."""
        p = self.procs.start(argv, log_path)
        deadline = time.monotonic() + timeout
        while not os.path.exists(path) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return p

    def add_capture(self, rec, path):
        host = self.args.pcap
        try:
            rows = pcapmix.mix((f for _, f in pcapmix.packets(path)), self.hosts[0].ip)
        except (OSError, ValueError) as e:
            self.log(f"capture of {host}: {e}")
            return
        wire = sum(r[2] for r in rows.values())
        rec["pcap_mix"] = {"host": host, "classes": {k: {"packets": r[0], "payload_bytes": r[1],
                                                         "wire_bytes": r[2]} for k, r in rows.items()},
                           "wire_bytes": wire}
        rec["pcap"] = path if self.args.keep else None
        self.log(f"capture of {host}'s download: {wire} bytes on the wire, "
                 f"{sum(r[0] for k, r in rows.items() if k.endswith('control'))} control packets, "
                 f"{sum(r[0] for k, r in rows.items() if k.endswith('ack'))} pure ACKs")

    def add_port_rates(self, rec, path, ports):
        rows = portrates.load(path) if os.path.exists(path) else []
        rec["port_devs"] = ports
        rec["port_samples"] = path if self.args.keep else None
        rec["port_rates"] = portrates.summarize_run(rows, rec, ports)
        if rec["port_rates"]:
            agents = [v for h, v in rec["port_rates"]["hosts"].items() if h != self.hosts[0].name]
            self.log("port rates {from_s}-{to_s} s: agents up mean {up:.1f}, down mean {down:.1f} Mbit/s".format(
                up=sum(a["up_mbit"] for a in agents) / len(agents),
                down=sum(a["down_mbit"] for a in agents) / len(agents), **rec["port_rates"]))

    def run_http(self, src_root, digests, runs, timeout):
        fan = HttpFanout(self.hosts, self.procs, self.workdir, self.mode, src_root)
        self.log("starting HTTP baseline")
        fan.start()
        cpu0 = fan.server_stats()
        records = []
        relpaths = sorted(digests)
        try:
            for k in range(runs):
                self.settle()
                stalls = self.start_stall_monitor(f"http-{k}")
                try:
                    rec = fan.run(relpaths, f"r{k}", timeout, tx_counter=self.tx_counter())
                finally:
                    self.procs.stop(stalls[0])
                rec["host"] = self.host_interference(rec, stalls)
                rec["verify"] = {}
                for a in self.hosts[1:]:
                    rec["verify"][a.name] = payload.verify(digests, a.dirs["http"]) \
                        if rec["times_s"][a.name] is not None else ["not completed"]
                    if not self.args.keep:
                        shutil.rmtree(a.dirs["http"], ignore_errors=True)
                records.append(rec)
                done = [t for t in rec["times_s"].values() if t is not None]
                self.log(f"http run {k}: {len(done)}/{len(rec['times_s'])} done, "
                         f"last {max(done) if done else float('nan'):.2f}s")
            cpu1 = fan.server_stats()
        finally:
            fan.stop()
        server = None
        if cpu0 and cpu1:
            server = {"cpu_s": cpu1["cpu_s"] - cpu0["cpu_s"], "peak_rss_kib": cpu1["peak_rss_kib"]}
        agents = {"cpu_s_total": sum(r["agents_proc"]["cpu_s_total"] or 0 for r in records),
                  "peak_rss_kib_max": max((r["agents_proc"]["peak_rss_kib_max"] or 0) for r in records)}
        return {"runs": records, "procs": {"server": server, "agents": agents}}

    def check_links(self, src_root):
        """Times a 4 MiB HTTP transfer in each direction between the server and one agent per group."""
        path = os.path.join(src_root, "..", "linkcheck")
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "probe.bin"), "wb") as f:
            f.write(os.urandom(4 << 20))
        out = []
        seen = set()
        for a in self.hosts[1:]:
            if a.group in seen:
                continue
            seen.add(a.group)
            for src, dst in ((self.hosts[0], a), (a, self.hosts[0])):
                p = self.procs.start(src.cmd(["python3", os.path.join(HERE, "httpseed.py"), "--root", path,
                                              "--bind", src.ip, "--port", "8099"]),
                                     os.path.join(self.workdir, "linkcheck.log"))
                try:
                    time.sleep(0.5)
                    res = subprocess.run(dst.cmd(["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download}",
                                                  f"http://{src.ip}:8099/probe.bin"]),
                                         stdout=subprocess.PIPE, text=True, timeout=60)
                    mbit = float(res.stdout or 0) * 8 / 1e6
                finally:
                    self.procs.stop(p)
                out.append({"from": src.name, "to": dst.name, "mbit_s": round(mbit, 1),
                            "expected_mbit_s": min(x for x in (src.up_mbit, dst.down_mbit, 1e9) if x)})
                self.log(f"link {src.name} -> {dst.name}: {mbit:.1f} Mbit/s")
        return out

    def cleanup(self):
        self.procs.stop_all()
        self.net.teardown()
        if self.scratch:
            note = self.scratch.teardown(keep=self.args.keep)
            if note:
                self.log(note)
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            self.log(f"kept {self.workdir}")


def proc_delta(cpu0, cpu1, hosts):
    def delta(name):
        a, b = (cpu0 or {}).get(name), (cpu1 or {}).get(name)
        if not a or not b:
            return None
        return {"cpu_s": b["cpu_s"] - a["cpu_s"], "peak_rss_kib": b["peak_rss_kib"]}
    agents = [delta(h.name) for h in hosts[1:]]
    agents = [x for x in agents if x]
    return {
        "server": delta(hosts[0].name),
        "agents": {
            "cpu_s_total": sum(x["cpu_s"] for x in agents) if agents else None,
            "cpu_s_mean": sum(x["cpu_s"] for x in agents) / len(agents) if agents else None,
            "peak_rss_kib_max": max(x["peak_rss_kib"] for x in agents) if agents else None,
            "peak_rss_kib_mean": sum(x["peak_rss_kib"] for x in agents) / len(agents) if agents else None,
        },
    }


def host_sysctl_arg(text):
    """`--host-sysctl`: KEY=VALUE, a per-namespace kernel setting."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip() or not key.startswith("net."):
        raise argparse.ArgumentTypeError(f"{text!r}: expected net.KEY=VALUE, e.g. net.ipv4.tcp_tso_rtt_log=0")
    return key.strip(), value.strip()


def server_control_arg(text):
    """`--server-control`: a JSON object of server `control` settings."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"pushConcurrency\": 1}'")
    return value


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", required=True, help="name(s) from the scenarios file, comma-separated")
    ap.add_argument("--mode", choices=["netns", "loopback"], help="default: the scenario's own")
    ap.add_argument("--pollen", default=os.path.join(REPO, "target", "release", "pollen"))
    ap.add_argument("--scenarios", default=os.path.join(HERE, "scenarios.json"))
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--md", help="append the markdown summary table here")
    ap.add_argument("--runs", type=int, help="override the scenario's run count")
    ap.add_argument("--timeout", type=float, help="override the scenario's per-run timeout (s)")
    ap.add_argument("--workdir", help="default /tmp/plab-<runid>, removed at exit unless --keep; "
                                      "with several scenarios, each uses <workdir>/<scenario>")
    ap.add_argument("--keep", action="store_true", help="keep the work dir, logs and copies")
    ap.add_argument("--no-scratch-fs", dest="scratch_fs", action="store_false",
                    help="netns mode: keep every host's files in the work dir, not on a fresh ext4 "
                         "image per host (see bench/scratchfs.py)")
    ap.add_argument("--piece-length", type=int, metavar="BYTES",
                    help="Pollen's piece length (a power of two, 16 KiB to 64 MiB) instead of the "
                         "server's adaptive choice")
    ap.add_argument("--fifo-ms", type=float, default=100,
                    help="netns mode: each capped link's FIFO, in ms of its rate (default 100)")
    ap.add_argument("--host-sysctl", type=host_sysctl_arg, action="append", default=[], metavar="KEY=VALUE",
                    help="netns mode: set this per-namespace kernel setting (net.*) in every host's "
                         "namespace; may be repeated")
    ap.add_argument("--server-control", type=server_control_arg, default={}, metavar="JSON",
                    help='merged into the server config\'s control section, e.g. \'{"pushConcurrency": 1}\'')
    ap.add_argument("--pcap", metavar="HOST",
                    help="netns mode: capture HOST's download (headers only) during each Pollen run and "
                         "store what it carried (see pcapmix.py); installs tcpdump if missing")
    ap.add_argument("--no-page-reporting", action="store_true",
                    help="hold the VM's free page reporting off for the lab's duration, and restore it "
                         "afterwards (root; see pagereport.py)")
    ap.add_argument("--skip-pollen", action="store_true", help="run only the HTTP baseline")
    ap.add_argument("--skip-http", action="store_true", help="run only Pollen")
    ap.add_argument("--check-links", action="store_true", help="measure each link class with curl first")
    ap.add_argument("--strict", action="store_true", help="exit 3 when a target is missed")
    ap.add_argument("--port-rates", action="store_true",
                    help="netns mode: record every switch port's byte counters during Pollen runs "
                         "(see portrates.py)")
    args = ap.parse_args(argv)
    if not args.fifo_ms > 0:
        ap.error("--fifo-ms must be more than 0")
    # The processes run in per-host directories: a relative path would not
    # resolve there.
    args.pollen = os.path.abspath(args.pollen)
    if not args.skip_pollen and not os.access(args.pollen, os.X_OK):
        ap.error(f"--pollen {args.pollen}: not an executable file (cargo build --release --bin pollen)")
    scenarios = load_scenarios(args.scenarios)
    names = [n.strip() for n in args.scenario.split(",") if n.strip()]
    for n in names:
        if n not in scenarios:
            ap.error(f"unknown scenario {n!r}; known: {', '.join(scenarios)}")

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    args.page_reporting_hold = None
    if args.no_page_reporting:
        hold = args.page_reporting_hold = pagereport.PageReportingHold()
        try:
            hold.start()
        except RuntimeError as e:
            ap.error(f"--no-page-reporting: {e}")
        try:
            print(f"[lab] free page reporting held off: {hold.order_path} {hold.before} -> {hold.during} "
                  "until the lab exits", flush=True)
            return run_scenarios(args, names, scenarios)
        finally:
            hold.stop()
    return run_scenarios(args, names, scenarios)


def run_scenarios(args, names, scenarios):
    results, failed, missed = [], False, False
    for i, n in enumerate(names):
        subdir = None
        if len(names) > 1:
            subdir = n if names.count(n) == 1 else f"{n}-{i}"
        lab = Lab(args, n, scenarios[n], subdir=subdir)
        try:
            res = lab.run()
        except Exception as e:  # noqa: BLE001 - report, clean up, go on with the next scenario
            lab.log(f"FAILED: {type(e).__name__}: {e}")
            res = {"scenario": n, "mode": lab.mode, "error": f"{type(e).__name__}: {e}"}
        finally:
            lab.cleanup()
        results.append(res)
        if res.get("error") or any(not res.get(s, {}).get("summary", {}).get("ok", True) for s in ("pollen", "http")):
            failed = True
        if any(t["met"] is False for t in res.get("targets", [])):
            missed = True
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"results": results}, f, indent=1)
    table = markdown_table(results)
    print(table)
    if args.md:
        with open(args.md, "a") as f:
            f.write(table + "\n")
    if failed:
        return 2
    if missed and args.strict:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
