"""HTTP requests on behalf of lab.py, run inside a host's network namespace.

netns mode gives the root namespace no route into the lab, so lab.py starts
this helper with `ip netns exec <server ns> python3 nsrpc.py` and speaks one
JSON object per line over stdin/stdout:

  in:  {"method", "host", "port", "path", "body" (str|null), "auth" ("user:pw"|null), "timeout"}
  out: {"status": int|null, "body": str, "error": str|null}

Connections are kept alive per (host, port).
"""

import base64
import http.client
import json
import sys


def main():
    conns = {}
    for line in sys.stdin:
        req = json.loads(line)
        print(json.dumps(request(conns, req)), flush=True)


def request(conns, req):
    key = (req["host"], req["port"])
    headers = {"Content-Type": "application/json"}
    if req.get("auth"):
        headers["Authorization"] = "Basic " + base64.b64encode(req["auth"].encode()).decode()
    body = req.get("body")
    for attempt in range(2):
        conn = conns.get(key)
        if conn is None:
            conn = http.client.HTTPConnection(req["host"], req["port"], timeout=req.get("timeout", 10))
            conns[key] = conn
        try:
            conn.request(req["method"], req["path"], body=body.encode() if body is not None else None,
                         headers=headers)
            resp = conn.getresponse()
            data = resp.read().decode(errors="replace")
            return {"status": resp.status, "body": data, "error": None}
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            conns.pop(key, None)
            if attempt == 1:
                return {"status": None, "body": "", "error": f"{type(e).__name__}: {e}"}
    return {"status": None, "body": "", "error": "unreachable"}


if __name__ == "__main__":
    main()
