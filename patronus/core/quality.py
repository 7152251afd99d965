"""Path quality: the probe window, the seed's quality score, and the status rule.

Pure functions and one small value-holding class; no events, no timers (those are in `monitor`).

Score (seed, sprint 13 "Path Monitoring System"), each part in [0, 100]:
  latency  < 50 ms → 100;  50–200 ms → 100 − (latency − 50)/150·50;  > 200 ms → 0
  jitter   < 5 ms  → 100;  5–50 ms   → 100 − (jitter − 5)/45·50;    > 50 ms  → 0
  loss     < 0.1 % → 100;  0.1–10 %  → 100 − loss/10·50;            > 10 %   → 0
  score = 0.4·latency + 0.3·jitter + 0.3·loss
Status: Down when loss ≥ 50 %; else Degraded when score < 50; else Up.
"""

from __future__ import annotations

import math

from patronus.core.model import PathStatus

UP = PathStatus.UP
DEGRADED = PathStatus.DEGRADED
DOWN = PathStatus.DOWN


def latency_score(latency_ms: float) -> float:
    if latency_ms < 50.0:
        return 100.0
    if latency_ms <= 200.0:
        return 100.0 - (latency_ms - 50.0) / 150.0 * 50.0
    return 0.0


def jitter_score(jitter_ms: float) -> float:
    if jitter_ms < 5.0:
        return 100.0
    if jitter_ms <= 50.0:
        return 100.0 - (jitter_ms - 5.0) / 45.0 * 50.0
    return 0.0


def loss_score(loss_pct: float) -> float:
    if loss_pct < 0.1:
        return 100.0
    if loss_pct <= 10.0:
        return 100.0 - loss_pct / 10.0 * 50.0
    return 0.0


def quality_score(latency_ms: float, jitter_ms: float, loss_pct: float) -> float:
    """The seed's composite score, in [0, 100]. NaN inputs are treated as the worst case."""
    if latency_ms != latency_ms or jitter_ms != jitter_ms or loss_pct != loss_pct:  # NaN
        return 0.0
    return 0.4 * latency_score(latency_ms) + 0.3 * jitter_score(jitter_ms) + 0.3 * loss_score(loss_pct)


def status_for(score: float, loss_pct: float) -> PathStatus:
    """Up when score ≥ 50 and loss < 50 %; Degraded when score < 50; Down when loss ≥ 50 %."""
    if loss_pct >= 50.0:
        return DOWN
    if score < 50.0:
        return DEGRADED
    return UP


def _jitter_decayed(j: float, count: int) -> float:
    """The RFC 3550 estimator after `count` more RTTs equal to the last (D = 0: J − J/16 each time),
    stopping once it no longer changes."""
    for _ in range(count):
        nj = j - j / 16.0
        if nj == j:
            break
        j = nj
    return j


class ProbeWindow:
    """The last `size` probe outcomes of one path: an RTT in ms, or `None` for a lost probe.

    Keeps running sums so that mean, standard deviation and loss are O(1); the sums are rebuilt
    from the samples every few thousand updates so rounding cannot drift. Jitter is the population
    standard deviation of the RTT samples (the seed's `variance.sqrt()`); the RFC 3550 interarrival
    estimator (J += (|D| − J)/16 over consecutive RTTs) is kept alongside for callers that want it.
    """

    __slots__ = ("_added", "_buf", "_i", "_n", "_nrecv", "_since_rebuild", "_sum", "_sumsq", "generation",
                 "last_rtt_ms", "rfc3550_jitter_ms", "size", "uniform")

    def __init__(self, size: int = 10) -> None:
        if size < 1:
            raise ValueError("window size must be at least 1")
        self.size = size
        self._buf: list[float | None] = [None] * size
        self._i = 0            # next slot to write
        self._n = 0            # outcomes held (≤ size)
        self._nrecv = 0        # of which received
        self._sum = 0.0
        self._sumsq = 0.0
        self._since_rebuild = 0
        self._added = 0        # outcomes added since the window was (re)started: serial of the next one
        self.generation = 0    # bumped by keep_last, which re-lays the buffer out
        self.uniform: float | None = None   # set by add_run: the RTT of every outcome in the full window
        self.last_rtt_ms: float | None = None
        self.rfc3550_jitter_ms = 0.0

    def __len__(self) -> int:
        return self._n

    def add(self, rtt_ms: float | None) -> None:
        buf = self._buf
        i = self._i
        if self._n == self.size:
            old = buf[i]
            if old is not None:
                self._nrecv -= 1
                self._sum -= old
                self._sumsq -= old * old
        else:
            self._n += 1
        buf[i] = rtt_ms
        if rtt_ms != self.uniform:
            self.uniform = None
        if rtt_ms is not None:
            self._nrecv += 1
            self._sum += rtt_ms
            self._sumsq += rtt_ms * rtt_ms
            last = self.last_rtt_ms
            if last is not None:
                d = rtt_ms - last
                self.rfc3550_jitter_ms += ((d if d >= 0.0 else -d) - self.rfc3550_jitter_ms) / 16.0
            self.last_rtt_ms = rtt_ms
        i += 1
        self._i = 0 if i == self.size else i
        self._added += 1
        self._since_rebuild += 1
        if self._since_rebuild >= 4096:
            self._rebuild()

    def add_run(self, rtt_ms: float, count: int) -> None:
        """`count` received outcomes of `rtt_ms` each: what `count` calls of `add(rtt_ms)` leave, with
        the sums rebuilt exactly when the run fills the window (then in O(size), not O(count))."""
        if rtt_ms == self.uniform:      # the window holds this RTT only: it stays as it is
            self.rfc3550_jitter_ms = _jitter_decayed(self.rfc3550_jitter_ms, count)
            self._added += count
            self._i = self._added % self.size
            return
        if count < self.size:
            for _ in range(count):
                self.add(rtt_ms)
            if self._buf.count(rtt_ms) == self.size:    # now the window holds this RTT only
                self._rebuild()
                self.uniform = rtt_ms
            return
        last = self.last_rtt_ms
        j = self.rfc3550_jitter_ms
        if last is not None:
            d = rtt_ms - last
            j += ((d if d >= 0.0 else -d) - j) / 16.0
        self.rfc3550_jitter_ms = _jitter_decayed(j, count - 1)
        self.last_rtt_ms = rtt_ms
        size = self.size
        self._buf = [rtt_ms] * size
        self._n = size
        self._added += count
        self._i = self._added % size
        self._rebuild()
        self.uniform = rtt_ms

    def steady_at(self, rtt_ms: float, tolerance_ms: float) -> bool:
        """Whether the window is full of received outcomes, each within `tolerance_ms` of `rtt_ms`."""
        return self._n == self.size and self._nrecv == self.size and all(
            x is not None and abs(x - rtt_ms) <= tolerance_ms for x in self._buf)

    @property
    def last_serial(self) -> tuple[int, int]:
        """(generation, serial) of the newest outcome: what `revise` needs to find it again."""
        return self.generation, self._added - 1

    def revise(self, serial: tuple[int, int], rtt_ms: float) -> bool:
        """Turn a lost outcome, still in the window, into a received one with `rtt_ms` (its reply came
        after all). Returns False when that outcome has left the window or was not a loss."""
        gen, k = serial
        if gen != self.generation or k < self._added - self._n or k >= self._added:
            return False
        slot = k % self.size
        if self._buf[slot] is not None:
            return False
        self._buf[slot] = rtt_ms
        self.uniform = None
        self._nrecv += 1
        self._sum += rtt_ms
        self._sumsq += rtt_ms * rtt_ms
        return True

    def _rebuild(self) -> None:
        got = [x for x in self.samples() if x is not None]
        self._nrecv = len(got)
        self._sum = math.fsum(got)
        self._sumsq = math.fsum(x * x for x in got)
        self._since_rebuild = 0

    def samples(self) -> list[float | None]:
        """Outcomes, oldest first."""
        if self._n < self.size:
            return self._buf[: self._n]
        return self._buf[self._i:] + self._buf[: self._i]

    def keep_last(self, k: int) -> None:
        """Forget all but the newest `k` outcomes (used when a dead path comes back)."""
        kept = self.samples()[-k:] if k > 0 else []
        last, jit, gen = self.last_rtt_ms, self.rfc3550_jitter_ms, self.generation
        self.__init__(self.size)  # type: ignore[misc]
        for x in kept:
            self.add(x)
        self.last_rtt_ms, self.rfc3550_jitter_ms = last, jit
        self.generation = gen + 1

    @property
    def received(self) -> int:
        return self._nrecv

    @property
    def mean_ms(self) -> float:
        """Mean RTT of the received samples (0 when none)."""
        return self._sum / self._nrecv if self._nrecv else 0.0

    @property
    def stdev_ms(self) -> float:
        n = self._nrecv
        if n < 2:
            return 0.0
        mean = self._sum / n
        var = self._sumsq / n - mean * mean
        return math.sqrt(var) if var > 0.0 else 0.0

    @property
    def loss_pct(self) -> float:
        """(sent − received) / sent over the window, in percent (0 when empty)."""
        n = self._n
        return (n - self._nrecv) * 100.0 / n if n else 0.0
