"""The lab's hosts: network namespaces joined by a bridge, or loopback addresses.

netns mode: one namespace per host (`<prefix>srv`, `<prefix>a01`, ...) and a
switch namespace (`<prefix>sw`) holding a Linux bridge. Each host has one veth
pair, created inside the switch namespace with its peer moved straight into
the host namespace, so the root namespace gets no interface at all. Hosts
have addresses in 10.77.0.0/24 and no default route: no packet can leave the
lab. HTB on the host-side veth (egress) caps the host's upload; HTB on the
switch-side veth (egress towards the host) caps its download. Deleting the
namespaces removes every link; the lab deletes only the names it created.

loopback mode: hosts are 127.77.0.x addresses in the root namespace; caps
are applied by the programs themselves (Pollen's config, curl --limit-rate).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field

from bounds import mbit_to_bytes


@dataclass
class Host:
    name: str
    ip: str
    up_mbit: float
    down_mbit: float
    group: str = "server"
    netns: str | None = None
    dirs: dict = field(default_factory=dict)

    @property
    def up_bps(self):
        return mbit_to_bytes(self.up_mbit)

    @property
    def down_bps(self):
        return mbit_to_bytes(self.down_mbit)

    def cmd(self, argv):
        """argv run on this host (inside its namespace in netns mode)."""
        if self.netns:
            return ["ip", "netns", "exec", self.netns] + list(argv)
        return list(argv)


def run(argv, check=True, capture=True):
    res = subprocess.run(argv, stdout=subprocess.PIPE if capture else None,
                         stderr=subprocess.PIPE if capture else None, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def ensure_tools(names, mode):
    """Installs iproute2 (netns mode), curl and the other tools named with
    apt-get when missing."""
    missing = [n for n in names if shutil.which(n) is None]
    if not missing:
        return
    package = {"ip": "iproute2", "tc": "iproute2", "sysctl": "procps"}
    pkgs = sorted({package.get(n, n) for n in missing})
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"missing {missing}; install {pkgs} ({mode} mode)")
    print(f"[lab] installing {pkgs}", flush=True)
    run(["apt-get", "install", "-y"] + pkgs, capture=False)


def make_hosts(scn, mode, prefix):
    """Server first, then agents in group order, with addresses for `mode`."""
    if mode == "netns":
        def addr(i):
            return f"10.77.0.{1 if i == 0 else 10 + i}"
    else:
        def addr(i):
            return f"127.77.0.{1 + i}"
    hosts = [Host("srv", addr(0), scn["server"]["up"], scn["server"]["down"], "server")]
    for grp in scn["agents"]:
        for _ in range(grp["count"]):
            i = len(hosts)
            hosts.append(Host(f"a{i:02d}", addr(i), grp["up"], grp["down"], grp["group"]))
    if len(hosts) > 200:
        raise ValueError("at most 199 agents")
    if mode == "netns":
        for h in hosts:
            h.netns = prefix + h.name
    return hosts


def fifo_bytes(mbit, fifo_ms):
    """A link's FIFO in bytes: `fifo_ms` of its rate, and never less than
    `fifo_ms` of 256 KiB per 100 ms (so that slow links still hold a few
    dozen packets; at the default 100 ms that floor is 256 KiB)."""
    return int(max(mbit * 1e6 / 8, 256 * 1024 * 10) * fifo_ms / 1000)


class NetnsLab:
    """Namespaces, bridge, veths and HTB for a list of hosts."""

    def __init__(self, prefix, hosts, fifo_ms=100, host_sysctls=()):
        """`host_sysctls`: (key, value) pairs set in every host's namespace
        (per-namespace kernel settings such as net.ipv4.*)."""
        self.prefix = prefix
        self.hosts = hosts
        self.switch = prefix + "sw"
        self.created = []
        self.fifo_ms = fifo_ms
        self.host_sysctls = list(host_sysctls)

    def _ns(self, name):
        run(["ip", "netns", "add", name])
        self.created.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])

    def setup(self):
        self._ns(self.switch)
        run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.switch, "link", "set", "br0", "up"])
        for i, h in enumerate(self.hosts):
            self._ns(h.netns)
            sw_if = f"s{i}"
            run(["ip", "-n", self.switch, "link", "add", sw_if, "type", "veth",
                 "peer", "name", "eth0", "netns", h.netns])
            run(["ip", "-n", self.switch, "link", "set", sw_if, "master", "br0"])
            run(["ip", "-n", self.switch, "link", "set", sw_if, "up"])
            for key, value in self.host_sysctls:
                run(["ip", "netns", "exec", h.netns, "sysctl", "-q", "-w", f"{key}={value}"])
            run(["ip", "-n", h.netns, "addr", "add", f"{h.ip}/24", "dev", "eth0"])
            run(["ip", "-n", h.netns, "link", "set", "eth0", "up"])
            self._shape(h.netns, "eth0", h.up_mbit, self.fifo_ms)
            self._shape(self.switch, sw_if, h.down_mbit, self.fifo_ms)
        self._wait_reachable()

    @staticmethod
    def _shape(ns, dev, mbit, fifo_ms):
        """HTB root with one class at `mbit` and a byte FIFO of `fifo_ms`."""
        if not mbit:
            return
        tc = ["ip", "netns", "exec", ns, "tc"]
        run(tc + ["qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10"])
        run(tc + ["class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb",
                  "rate", f"{mbit}mbit", "ceil", f"{mbit}mbit", "quantum", "1514"])
        limit = fifo_bytes(mbit, fifo_ms)
        run(tc + ["qdisc", "add", "dev", dev, "parent", "1:10", "handle", "10:", "bfifo",
                  "limit", str(limit)])

    def _wait_reachable(self, timeout=10.0):
        srv = self.hosts[0]
        deadline = time.monotonic() + timeout
        for h in self.hosts[1:]:
            while True:
                res = run(h.cmd(["ping", "-c", "1", "-W", "1", srv.ip]), check=False) \
                    if shutil.which("ping") else None
                if res is None or res.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{h.name} cannot reach {srv.ip}")
                time.sleep(0.1)

    def tx_bytes(self, host):
        res = run(["ip", "-n", host.netns, "-s", "-j", "link", "show", "eth0"], check=False)
        if res.returncode != 0:
            return None
        return json.loads(res.stdout)[0]["stats64"]["tx"]["bytes"]

    def teardown(self):
        for name in reversed(self.created):
            run(["ip", "netns", "del", name], check=False)
        self.created.clear()


class LoopbackLab:
    """127.77.0.x in the root namespace; checks the ports are free."""

    def __init__(self, hosts, ports):
        self.hosts = hosts
        self.ports = ports

    def setup(self):
        for h in self.hosts:
            for port in self.ports:
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        s.bind((h.ip, port))
                    except OSError as e:
                        raise RuntimeError(f"{h.ip}:{port} is busy ({e}); another lab running?")

    def tx_bytes(self, host):
        return None

    def teardown(self):
        pass


def proc_stats(pid):
    """CPU seconds (user+system) and peak RSS (VmHWM, KiB) of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
    hwm = None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return {"cpu_s": cpu, "peak_rss_kib": hwm}


class Procs:
    """Every process the lab starts, stopped by PID on every exit path."""

    def __init__(self):
        self.live = {}

    def start(self, argv, log_path, env=None, cwd=None):
        log = open(log_path, "ab")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, cwd=cwd, start_new_session=True)
        log.close()
        self.live[p.pid] = p
        return p

    def stop(self, p, grace=5.0):
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            except ProcessLookupError:
                pass
        self.live.pop(p.pid, None)

    def stop_all(self):
        for p in list(self.live.values()):
            self.stop(p, grace=3.0)
