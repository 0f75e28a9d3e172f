"""The HTTP baseline's file server: http.server with keep-alive and an upload cap.

Without a cap it answers with sendfile(2). With `--rate` (bytes/s) all
responses share one pacer, which emulates the server host's upload link in
loopback mode (in netns mode tc does that and the rate is 0).
"""

import argparse
import functools
import http.server
import threading
import time


class Pacer:
    def __init__(self, rate):
        self.rate = rate
        self.lock = threading.Lock()
        self.next_free = time.monotonic()

    def take(self, n):
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_free)
            self.next_free = start + n / self.rate
        if start > now:
            time.sleep(start - now)


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes; with Nagle on, each small
    # response would wait for the client's delayed ACK (40 ms)
    disable_nagle_algorithm = True
    pacer = None

    def log_message(self, format, *args):
        pass

    def copyfile(self, source, outputfile):
        if self.pacer is None:
            self.wfile.flush()
            self.connection.sendfile(source)
            return
        while True:
            chunk = source.read(16384)
            if not chunk:
                return
            self.pacer.take(len(chunk))
            outputfile.write(chunk)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--bind", required=True)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--rate", type=float, default=0.0, help="upload cap in bytes/s, 0 = none")
    args = ap.parse_args()
    if args.rate > 0:
        Handler.pacer = Pacer(args.rate)
    handler = functools.partial(Handler, directory=args.root)
    http.server.ThreadingHTTPServer.daemon_threads = True
    with http.server.ThreadingHTTPServer((args.bind, args.port), handler) as srv:
        print(f"serving {args.root} on {args.bind}:{args.port}", flush=True)
        srv.serve_forever()


if __name__ == "__main__":
    main()
