"""HTTP request traffic: a small server and a client that times each request.

    python -m emulation.traffic.http serve --port 8080 --size 20000
    python -m emulation.traffic.http fetch --url http://10.2.0.10:8080/ --interval 1 --duration 30 --out http.csv

The client opens a new connection per request (a new flow each time, as browsers' short requests
are) and records `at,latency_ms,ok,bytes`; a request that fails or takes longer than its timeout
counts as not ok.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

from emulation.traffic.stopflag import StopFlag


def serve(port: int, size: int) -> int:
    body = bytes(size)

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("0.0.0.0", port), H)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    srv.serve_forever()
    return 0


def fetch(url: str, interval: float, duration: float, out: Path, timeout: float = 2.0) -> int:
    u = urlparse(url)
    rows = []
    stop = StopFlag(signal.SIGTERM)
    start = time.monotonic()
    n = 0
    while not stop and time.monotonic() - start < duration:
        due = start + n * interval
        if due > time.monotonic():
            time.sleep(due - time.monotonic())     # pacing to a schedule
        t0 = time.monotonic()
        at = time.time()
        ok, size = False, 0
        try:
            c = http.client.HTTPConnection(u.hostname or "", u.port or 80, timeout=timeout)
            c.request("GET", u.path or "/")
            r = c.getresponse()
            size = len(r.read())
            ok = r.status == 200
            c.close()
        except OSError:
            ok = False
        rows.append((at, round((time.monotonic() - t0) * 1000, 3), int(ok), size))
        n += 1
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["at", "latency_ms", "ok", "bytes"])
        w.writerows(rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emulation.traffic.http")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--size", type=int, default=20000)
    f = sub.add_parser("fetch")
    f.add_argument("--url", required=True)
    f.add_argument("--interval", type=float, default=1.0)
    f.add_argument("--duration", type=float, default=30.0)
    f.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.cmd == "serve":
        return serve(a.port, a.size)
    return fetch(a.url, a.interval, a.duration, a.out)


if __name__ == "__main__":
    sys.exit(main())
