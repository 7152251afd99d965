"""The sampler: a thread of the runner that polls every agent's API from the host, over the management
links, while the timeline plays: each path's status and metrics four times a second (raw/path_metrics.csv)
and, about once a second, which policy classified which connection in the agent's flow table (run.json's
`flows[].policy`)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from typing import Any

import httpx


class Sampler(threading.Thread):
    """Polls every agent's /paths (and /flows) from the host over the management links."""

    def __init__(self, apis: dict[str, str], token: str, period_s: float = 0.25) -> None:
        super().__init__(daemon=True, name="patronus-lab-sampler")
        self.apis = apis
        self.h = {"Authorization": f"Bearer {token}"}
        self.period_s = period_s
        self.rows: list[list[Any]] = []
        # (site, src_ip, dst_ip, protocol, dst_port) -> policy name -> times seen in the agent's flow table
        self.policies: dict[tuple[str, str, str, int, int], Counter[str]] = {}
        self.stop_event = threading.Event()
        self.client = httpx.Client(headers=self.h, timeout=2.0)

    def run(self) -> None:
        n = 0
        while not self.stop_event.is_set():
            t = time.time()
            if n % max(1, round(1.0 / self.period_s)) == 0:
                self.sample_flows()
            n += 1
            for site, base in self.apis.items():
                try:
                    r = self.client.get(base + "/paths")
                    ps = r.json() if r.status_code == 200 else None
                except (httpx.HTTPError, ValueError):
                    continue
                if not isinstance(ps, list):      # an agent stopping (or not up yet) answers with an error
                    continue
                for p in ps:
                    self.rows.append([site, p["id"], round(t, 4), p["status"], p["latency_ms"], p["jitter_ms"],
                                      p["loss_pct"], p["score"], p["probes_sent"], p["probes_timed_out"]])
            self.stop_event.wait(self.period_s)   # the sampling period, interruptible by stop()

    def sample_flows(self) -> None:
        """Which policy classified which connection, from each agent's flow table (about once a second)."""
        for site, base in self.apis.items():
            try:
                fs = self.client.get(base + "/flows").json()
            except (httpx.HTTPError, ValueError):
                continue
            for f in fs if isinstance(fs, list) else []:
                with contextlib.suppress(KeyError, TypeError):
                    key = (site, f["src_ip"], f["dst_ip"], int(f["protocol"]), int(f["dst_port"]))
                    self.policies.setdefault(key, Counter())[str(f["policy"])] += 1

    def policy_of(self, site: str, src_ip: str, dst_ip: str, protocol: int, dst_port: int) -> str | None:
        seen = self.policies.get((site, src_ip, dst_ip, protocol, dst_port))
        return seen.most_common(1)[0][0] if seen else None

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)
        self.client.close()
