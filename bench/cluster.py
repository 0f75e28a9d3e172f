"""Drives a Pollen server and its agents: configs, start/stop, dispatch and timing."""

import datetime
import http.client
import base64
import json
import os
import subprocess
import time

from bounds import mbit_to_mib
from labnet import proc_stats

# Below Linux's default range of local ports for outgoing connections
# (32768-60999). In loopback mode, every agent's outgoing connections come
# from its own 127.77.0.x address; Pollen's default ports (45000-45011) are
# inside that range, so a socket left over from one lab run (FIN_WAIT2
# lasts up to a minute) could hold one of them on the next run's address.
SERVER_PORTS = (25000, 25001)
AGENT_PORTS = (25010, 25011)
USER, PASSWORD = "pollen", "pollen-lab-pw"
FINAL = ("COMPLETED", "FAILED", "CANCELED", "FILE_NOT_EXISTED")


class Rest:
    """HTTP client; in netns mode requests go through nsrpc.py inside a namespace."""

    def __init__(self, host=None):
        self.helper = None
        self.conns = {}
        if host is not None and host.netns:
            here = os.path.dirname(os.path.abspath(__file__))
            self.helper = subprocess.Popen(host.cmd(["python3", "-u", os.path.join(here, "nsrpc.py")]),
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                           start_new_session=True)

    def request(self, method, host, port, path, body=None, auth=None, timeout=10):
        if self.helper is not None:
            req = {"method": method, "host": host, "port": port, "path": path,
                   "body": body, "auth": auth, "timeout": timeout}
            self.helper.stdin.write(json.dumps(req) + "\n")
            self.helper.stdin.flush()
            line = self.helper.stdout.readline()
            if not line:
                raise RuntimeError("nsrpc helper died")
            res = json.loads(line)
            return res["status"], res["body"]
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        for attempt in range(2):
            conn = self.conns.get((host, port)) or http.client.HTTPConnection(host, port, timeout=timeout)
            self.conns[(host, port)] = conn
            try:
                conn.request(method, path, body=body.encode() if body is not None else None, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read().decode(errors="replace")
            except (OSError, http.client.HTTPException):
                conn.close()
                self.conns.pop((host, port), None)
                if attempt == 1:
                    return None, ""
        return None, ""

    def close(self):
        if self.helper is not None:
            self.helper.stdin.close()
            try:
                self.helper.wait(3)
            except subprocess.TimeoutExpired:
                self.helper.kill()
                self.helper.wait()
            self.helper = None


def parse_time(text):
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class PollenCluster:
    """One server (hosts[0]) and agents (hosts[1:]) with per-host work directories."""

    def __init__(self, pollen, hosts, procs, workdir, mode, server_control=None):
        self.pollen = pollen
        self.hosts = hosts
        self.server = hosts[0]
        self.agents = hosts[1:]
        self.procs = procs
        self.workdir = workdir
        self.mode = mode
        self.rest = None
        self.started = {}
        self.server_control = dict(server_control or {})

    def prepare(self):
        key, pub = os.path.join(self.workdir, "server.key"), os.path.join(self.workdir, "server.pub")
        subprocess.run([self.pollen, "keygen", "--private", key, "--public", pub], check=True,
                       stdout=subprocess.DEVNULL)
        hashed = subprocess.run([self.pollen, "passwd"], input=PASSWORD, text=True, check=True,
                                stdout=subprocess.PIPE).stdout.strip().splitlines()[-1].strip()
        loop = self.mode == "loopback"
        s = self.server
        s.dirs["pollen"] = os.path.join(self.workdir, "pollen", s.name)
        os.makedirs(s.dirs["pollen"], exist_ok=True)
        server_cfg = {
            "name": "lab-server",
            "datadir": os.path.join(s.dirs["pollen"], "data"),
            "net": {"ip": s.ip, "mgntPort": SERVER_PORTS[0], "dataPort": SERVER_PORTS[1],
                    "agentMgntPort": AGENT_PORTS[0], "agentDataPort": AGENT_PORTS[1]},
            "auth": {"username": USER, "password": hashed, "privateKey": key},
            "control": {"speed": mbit_to_mib(s.up_mbit) if loop else 0, "cacheSize": 64, "maxActive": 10,
                        **self.server_control},
        }
        s.dirs["config"] = write_cfg(s.dirs["pollen"], "server.yml", server_cfg)
        for a in self.agents:
            a.dirs["pollen"] = os.path.join(self.workdir, "pollen", a.name)
            a.dirs["down"] = os.path.join(a.dirs.get("disk") or a.dirs["pollen"], "down")
            os.makedirs(a.dirs["pollen"], exist_ok=True)
            os.makedirs(a.dirs["down"], exist_ok=True)
            cfg = {
                "name": f"lab-{a.name}",
                "downdir": a.dirs["down"],
                "net": {"ip": a.ip, "mgntPort": AGENT_PORTS[0], "dataPort": AGENT_PORTS[1]},
                "server": {"addr": f"{s.ip}:{SERVER_PORTS[0]}", "publicKey": pub},
                "control": {"uploadSpeed": mbit_to_mib(a.up_mbit) if loop else 0,
                            "downloadSpeed": mbit_to_mib(a.down_mbit) if loop else 0,
                            "cacheSize": 16},
            }
            a.dirs["config"] = write_cfg(a.dirs["pollen"], "agent.yml", cfg)

    def start(self, timeout=30.0):
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        s = self.server
        self.started[s.name] = self.procs.start(
            s.cmd([self.pollen, "server", "--config", s.dirs["config"]]),
            os.path.join(s.dirs["pollen"], "server.log"), env=env, cwd=s.dirs["pollen"])
        self.rest = Rest(s)
        self._wait_health(s, SERVER_PORTS[0], timeout)
        for a in self.agents:
            self.started[a.name] = self.procs.start(
                a.cmd([self.pollen, "agent", "--config", a.dirs["config"]]),
                os.path.join(a.dirs["pollen"], "agent.log"), env=env, cwd=a.dirs["pollen"])
        for a in self.agents:
            self._wait_health(a, AGENT_PORTS[0], timeout)
        # One authenticated request before any timed run: the server checks
        # a password with argon2 once (about 40 ms here) and then caches the
        # verified credentials for its lifetime, so only the first request
        # after a start pays it. Without this, the first run of every series
        # would time that check and the others would not.
        status, data = self.api("GET", "/api/v1/server/tasks")
        if status != 200:
            raise RuntimeError(f"authenticated GET /api/v1/server/tasks -> {status}: {data}")

    def _wait_health(self, host, port, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = self.started[host.name]
            if p.poll() is not None:
                raise RuntimeError(f"pollen on {host.name} exited with {p.returncode}; "
                                   f"see {host.dirs['pollen']}")
            status, _ = self.rest.request("GET", host.ip, port, "/healthz", timeout=2)
            if status == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"pollen on {host.name} not healthy after {timeout}s")

    def api(self, method, path, body=None, timeout=10):
        status, text = self.rest.request(method, self.server.ip, SERVER_PORTS[0], path,
                                         body=json.dumps(body) if body is not None else None,
                                         auth=f"{USER}:{PASSWORD}", timeout=timeout)
        try:
            data = json.loads(text) if text else None
        except json.JSONDecodeError:
            data = {"raw": text}
        return status, data

    def cpu_snapshot(self):
        return {name: proc_stats(p.pid) for name, p in self.started.items()}

    def dispatch(self, task_id, paths, timeout, poll_s=0.05, dest_dir=None, tx_counter=None,
                 piece_length=None):
        """POSTs a task and polls it until every destination is final.

        Returns the timing record: per-host seconds from the POST (from the
        host's `finishedAt` when the server reports it, else when the poller
        first saw COMPLETED), the final status document and a 1 s timeline.
        `piece_length` (bytes) overrides the server's adaptive choice.
        """
        body = {"id": task_id, "dispatchFiles": paths, "destIPs": [a.ip for a in self.agents]}
        if dest_dir:
            body["destDir"] = dest_dir
        if piece_length:
            body["pieceLength"] = piece_length
        tx0 = tx_counter() if tx_counter else None
        wall0, mono0 = time.time(), time.monotonic()
        status, data = self.api("POST", "/api/v1/server/tasks", body)
        if status != 202:
            raise RuntimeError(f"POST task -> {status}: {data}")
        seen, timeline, last_sample, doc = {}, [], -1.0, None
        deadline = mono0 + timeout
        while True:
            now = time.monotonic()
            status, doc = self.api("GET", f"/api/v1/server/tasks/{task_id}")
            get_s = time.monotonic() - now
            if status == 200 and doc:
                infos = doc.get("dispatchInfos") or {}
                for ip, info in infos.items():
                    if ip not in seen and info.get("status") in FINAL:
                        seen[ip] = (info.get("status"), now - mono0)
                if now - mono0 - last_sample >= 1.0:
                    last_sample = now - mono0
                    timeline.append(sample(now - mono0, doc))
                if len(seen) == len(self.agents) or doc.get("status") in FINAL and len(seen) == len(infos):
                    break
            for name, p in self.started.items():
                if p.poll() is not None:
                    raise RuntimeError(f"pollen on {name} exited with {p.returncode} during the task")
            if now > deadline:
                break
            # a big status (thousands of files) costs the server real CPU: keep the
            # poller's share small; finishedAt keeps the timing exact anyway
            time.sleep(max(poll_s, 4 * get_s))
        end_mono = time.monotonic()
        tx1 = tx_counter() if tx_counter else None
        timeline.append(sample(end_mono - mono0, doc or {}))
        infos = (doc or {}).get("dispatchInfos") or {}
        times, observed, problems = {}, {}, []
        for a in self.agents:
            st, t_seen = seen.get(a.ip, (None, None))
            info = infos.get(a.ip, {})
            observed[a.name] = t_seen
            fin = parse_time(info.get("finishedAt"))
            if st != "COMPLETED":
                times[a.name] = None
                problems.append(f"{a.name} {a.ip}: {st or 'timeout'} {info.get('error') or ''}".strip())
                continue
            times[a.name] = (fin - wall0) if fin is not None and fin >= wall0 else t_seen
        return {
            "task_id": task_id,
            "times_s": times,
            "observed_s": observed,
            "task_finished_s": (parse_time((doc or {}).get("finishedAt")) or wall0) - wall0
            if (doc or {}).get("finishedAt") else None,
            "seed_bytes": (doc or {}).get("seedBytes"),
            "iface_tx_bytes": (tx1 - tx0) if tx0 is not None and tx1 is not None else None,
            "problems": problems,
            "status": doc,
            "timeline": timeline,
            "wall_start": wall0,
        }

    def stop(self):
        for p in self.started.values():
            self.procs.stop(p)
        if self.rest:
            self.rest.close()


def sample(t, doc):
    infos = doc.get("dispatchInfos") or {}
    return {"t": round(t, 3), "seedBytes": doc.get("seedBytes"),
            "hosts": {ip: [i.get("bytesDone"), i.get("bytesFromSeed"), i.get("bytesFromPeers")]
                      for ip, i in infos.items()}}


def write_cfg(directory, name, cfg):
    """YAML is a superset of JSON, so the config is written as JSON."""
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    return path
