"""The baseline: every agent host fetches the payload over plain HTTP at once.

The server host runs httpseed.py (http.server with sendfile); each agent host
runs one curl that fetches every file of the payload over one keep-alive
connection. In loopback mode curl --limit-rate emulates an agent's download
cap and httpseed's pacer the server's upload cap; in netns mode tc does both.
Curl's CPU time and peak RSS come from wait4(2)'s rusage.
"""

import os
import subprocess
import threading
import time
import urllib.parse

from labnet import proc_stats

HTTP_PORT = 8080


class HttpFanout:
    def __init__(self, hosts, procs, workdir, mode, source_root):
        self.server = hosts[0]
        self.agents = hosts[1:]
        self.procs = procs
        self.workdir = workdir
        self.mode = mode
        self.source_root = source_root
        self.proc = None

    def start(self, timeout=10.0):
        s = self.server
        here = os.path.dirname(os.path.abspath(__file__))
        rate = s.up_bps if (self.mode == "loopback" and s.up_bps) else 0
        logdir = os.path.join(self.workdir, "http")
        os.makedirs(logdir, exist_ok=True)
        self.proc = self.procs.start(
            s.cmd(["python3", os.path.join(here, "httpseed.py"), "--root", self.source_root,
                   "--bind", s.ip, "--port", str(HTTP_PORT), "--rate", str(rate)]),
            os.path.join(logdir, "httpseed.log"))
        deadline = time.monotonic() + timeout
        probe = self.agents[0] if self.agents else s
        while time.monotonic() < deadline:
            res = subprocess.run(probe.cmd(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                            f"http://{s.ip}:{HTTP_PORT}/"]),
                                 stdout=subprocess.PIPE, text=True)
            if res.stdout.strip() == "200":
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("HTTP baseline server did not start; see http/httpseed.log")

    def run(self, relpaths, run_tag, timeout, tx_counter=None):
        """Starts one curl per agent at the same moment; returns the timing record."""
        procs, results = {}, {}
        base = f"http://{self.server.ip}:{HTTP_PORT}/"
        tx0 = tx_counter() if tx_counter else None
        for a in self.agents:
            out_root = os.path.join(a.dirs["disk"], "http", run_tag) if "disk" in a.dirs \
                else os.path.join(self.workdir, "http", a.name, run_tag)
            os.makedirs(out_root, exist_ok=True)
            a.dirs["http"] = out_root
            cfg = os.path.join(self.workdir, "http", f"{a.name}-{run_tag}.curl")
            with open(cfg, "w") as f:
                for rel in relpaths:
                    url = base + urllib.parse.quote(rel)
                    f.write(f'url = "{url}"\noutput = "{os.path.join(out_root, rel)}"\n')
            argv = ["curl", "-sS", "--fail", "--create-dirs", "-K", cfg]
            if self.mode == "loopback":
                argv += ["--interface", a.ip]
                if a.down_bps:
                    argv += ["--limit-rate", str(int(a.down_bps))]
            procs[a.name] = (a, argv)
        wall0, t0 = time.time(), time.monotonic()
        threads, started, reaped = [], [], set()
        for name, (a, argv) in procs.items():
            p = subprocess.Popen(a.cmd(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 start_new_session=True)
            self.procs.live[p.pid] = p
            started.append(p)
            th = threading.Thread(target=reap, args=(p, t0, results, name, reaped), daemon=True)
            th.start()
            threads.append(th)
        deadline = t0 + timeout
        for th in threads:
            th.join(max(0.0, deadline - time.monotonic()))
        for p in started:
            if p.pid not in reaped:
                p.kill()  # still running at the deadline; its reaper thread collects it
        for th in threads:
            th.join(5)
        for p in started:
            self.procs.live.pop(p.pid, None)
        tx1 = tx_counter() if tx_counter else None
        times, problems, cpu, rss = {}, [], [], []
        for a in self.agents:
            r = results.get(a.name)
            if r is None or r["rc"] != 0:
                times[a.name] = None
                problems.append(f"{a.name}: curl " + ("timeout" if r is None else f"rc={r['rc']} {r['err']}"))
            else:
                times[a.name] = r["t"]
            if r is not None:
                cpu.append(r["cpu_s"])
                rss.append(r["peak_rss_kib"])
        return {
            "times_s": times,
            "problems": problems,
            "iface_tx_bytes": (tx1 - tx0) if tx0 is not None and tx1 is not None else None,
            "agents_proc": {"cpu_s_total": sum(cpu) if cpu else None,
                            "peak_rss_kib_max": max(rss) if rss else None,
                            "peak_rss_kib_mean": sum(rss) / len(rss) if rss else None},
            "wall_start": wall0,
        }

    def server_stats(self):
        return proc_stats(self.proc.pid) if self.proc else None

    def stop(self):
        if self.proc:
            self.procs.stop(self.proc)


def reap(p, t0, results, name, reaped):
    _, status, ru = os.wait4(p.pid, 0)
    reaped.add(p.pid)
    t = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace").strip()[:300] if p.stderr else ""
    results[name] = {"t": t, "rc": p.returncode, "err": err, "cpu_s": ru.ru_utime + ru.ru_stime,
                     "peak_rss_kib": ru.ru_maxrss}
