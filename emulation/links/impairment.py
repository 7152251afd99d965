"""What a link does to the packets that cross it, and a sans-IO model that does it.

`Impairment` is the description (frozen, validated, units in the names); `ImpairmentModel` is the
behaviour, shared by the userspace relay and the tests: feed it each packet with the current time,
it answers when the packet (and a possible duplicate) should leave and whether to corrupt it, or
that it is dropped and why. It never reads a clock, sleeps or touches a socket, so the unit tests
drive it in virtual time.

The semantics follow Linux netem, so a scenario means the same on both backends:

- **order of decisions** per packet (netem's `netem_enqueue`): `cut` → duplicate? → one loss event
  (random or Gilbert–Elliott) that removes one copy → for each surviving copy: reorder pick
  (released at once, jumping the queue) or rate queue (drop if full) → delay + jitter → corruption.
  A duplicate goes through its own loss event, as netem re-enqueues the clone through the qdisc.
- **rate**: a FIFO in front of a serializer, `departure = max(now, previous departure) +
  size·8/rate_bps`; a packet is dropped (`queue_full`) when `queue_limit` packets are already
  waiting or being serialized. With netem's own `rate` this is the same recurrence (netem computes
  from the previous packet's send time).
- **delay and jitter**: `release = departure + delay_s + J`, J drawn from `jitter_distribution`
  scaled by `jitter_s`, never before the departure. `normal`, `pareto` and `paretonormal` use the
  very tables iproute2 ships (`normal.dist`, ...; regenerated here by the same formulas, so
  `jitter_s` is the standard deviation for `normal`, and values are clipped at 4σ by the tables'
  16-bit range); `uniform` is netem's default, uniform on [-jitter_s, +jitter_s].
- **order**: a packet never leaves before the previous one (release = max(release, previous
  release)), except a reorder pick; jitter alone does not reorder. (netem orders this way when
  `rate` is set; the netem backend sets a rate that never limits when there is jitter without a
  rate, see `emulation.links.netem`.) The clamp makes the mean delay a little larger than
  `delay_s` when packets are closer together than the jitter.
- **reorder**: with probability `reorder` a packet skips delay and rate queue and leaves at once
  (netem's `reorder P` with `gap 1`); it needs a delay to jump (netem refuses it too).
- **Gilbert–Elliott**: two states; in Good a packet is lost with probability `k`, in Bad with `h`;
  after each packet Good→Bad with probability `p`, Bad→Good with `r` (netem's `loss gemodel p r
  1-h 1-k`: there the third and fourth numbers are these `h` and `k`). With h=1, k=0 the mean burst
  of losses is 1/r packets and the loss ratio p/(p+r).
- **corrupt**: the relay flips one random bit of one random byte past the IP header (netem flips a
  bit anywhere in the linear data).

Counters satisfy `packets_in == delivered + sum(dropped.values())`; `duplicated` counts extra
copies sent, so copies sent = delivered + duplicated. Randomness: one generator per feature, each
seeded from the model's seed, so the same seed gives the same decisions and changing, say, the
jitter does not shift the loss pattern.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, fields
from enum import IntEnum
from functools import cache
from statistics import NormalDist
from typing import Any, Literal, get_args

from patronus.core.errors import ConfigError

JitterDistribution = Literal["normal", "uniform", "pareto", "paretonormal"]
DISTRIBUTIONS: tuple[str, ...] = get_args(JitterDistribution)
DROP_REASONS = ("loss", "ge_loss", "queue_full", "cut")

# netem's distribution tables: 4096 signed 16-bit values, value/NETEM_DIST_SCALE in units of sigma
NETEM_DIST_SCALE = 8192
DIST_TABLE_SIZE = 4096


class Action(IntEnum):
    """What to do with one copy of a packet at its release time (bit 0: corrupt, bit 1: duplicate)."""

    DELIVER = 0
    DELIVER_CORRUPTED = 1
    DUPLICATE = 2
    DUPLICATE_CORRUPTED = 3


def _ratio_error(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"expected a number between 0 and 1, got {value!r}"
    if not 0.0 <= value <= 1.0:
        return f"expected a ratio between 0 and 1, got {value!r}"
    return None


def _nonneg_error(value: object, what: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"expected {what}, got {value!r}"
    if value < 0:
        return f"expected {what} (not negative), got {value!r}"
    return None


@dataclass(frozen=True)
class GilbertElliott:
    """Two-state burst loss: p = P(Good→Bad), r = P(Bad→Good), h = P(loss | Bad), k = P(loss | Good)."""

    p: float
    r: float
    h: float = 1.0
    k: float = 0.0

    def __post_init__(self) -> None:
        errors = self.errors("loss_model")
        if errors:
            raise ConfigError(errors)

    def errors(self, path: str) -> list[tuple[str, str]]:
        out = []
        for name in ("p", "r", "h", "k"):
            err = _ratio_error(getattr(self, name))
            if err:
                out.append((f"{path}.{name}", err))
        return out

    @property
    def loss_ratio(self) -> float:
        """Stationary loss ratio."""
        if self.p + self.r == 0:
            return self.k
        bad = self.p / (self.p + self.r)
        return bad * self.h + (1 - bad) * self.k

    def to_dict(self) -> dict[str, float]:
        return {"p": self.p, "r": self.r, "h": self.h, "k": self.k}


@dataclass(frozen=True)
class Impairment:
    """One direction of a link. Zero everywhere (the default) is a perfect wire."""

    delay_s: float = 0.0
    jitter_s: float = 0.0
    jitter_distribution: JitterDistribution = "normal"
    loss: float = 0.0
    loss_model: GilbertElliott | None = None
    rate_bps: float = 0.0                    # 0 = unlimited
    queue_limit: int = 1000                  # packets waiting for the rate limiter
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    cut: bool = False

    def __post_init__(self) -> None:
        errors = self.errors()
        if errors:
            raise ConfigError(errors)

    def errors(self, path: str = "") -> list[tuple[str, str]]:
        """Every problem, as (field path, reason)."""
        pre = f"{path}." if path else ""
        out: list[tuple[str, str]] = []
        for name, what in (("delay_s", "a duration in seconds"), ("jitter_s", "a duration in seconds"),
                           ("rate_bps", "a rate in bits per second (0 = unlimited)")):
            err = _nonneg_error(getattr(self, name), what)
            if err:
                out.append((pre + name, err))
        for name in ("loss", "duplicate", "reorder", "corrupt"):
            err = _ratio_error(getattr(self, name))
            if err:
                out.append((pre + name, err))
        if self.jitter_distribution not in DISTRIBUTIONS:
            out.append((pre + "jitter_distribution",
                        f"expected one of {', '.join(DISTRIBUTIONS)}, got {self.jitter_distribution!r}"))
        if self.loss_model is not None and not isinstance(self.loss_model, GilbertElliott):
            out.append((pre + "loss_model", f"expected a GilbertElliott or None, got {self.loss_model!r}"))
        elif (self.loss_model is not None and not isinstance(self.loss, bool) and isinstance(self.loss, int | float)
              and self.loss > 0):
            out.append((pre + "loss", "random loss and a Gilbert-Elliott loss_model are exclusive (netem has one "
                                      "loss generator): put the loss in the model's k, or drop one"))
        if (isinstance(self.queue_limit, bool) or not isinstance(self.queue_limit, int)
                or not 1 <= self.queue_limit <= 2**31):
            out.append((pre + "queue_limit", f"expected a whole number of packets ≥ 1, got {self.queue_limit!r}"))
        if not isinstance(self.cut, bool):
            out.append((pre + "cut", f"expected true or false, got {self.cut!r}"))
        reorder_ok = not _ratio_error(self.reorder) and not _nonneg_error(self.delay_s, "")
        if reorder_ok and self.reorder > 0 and self.delay_s == 0:
            out.append((pre + "reorder", "reordering needs a delay for packets to jump (set delay_s > 0)"))
        return out

    @property
    def is_identity(self) -> bool:
        """A perfect wire: nothing to do to any packet."""
        return (not self.cut and self.delay_s == 0 and self.jitter_s == 0 and self.loss == 0
                and self.loss_model is None and self.rate_bps == 0 and self.duplicate == 0
                and self.reorder == 0 and self.corrupt == 0)

    @property
    def is_deterministic(self) -> bool:
        """Only delay, rate and a queue: nothing random happens to a packet (what it gets is a
        function of when it arrives and of the packets before it)."""
        return (not self.cut and not self.jitter_s and not self.loss and self.loss_model is None
                and not self.duplicate and not self.reorder and not self.corrupt)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        d["loss_model"] = self.loss_model.to_dict() if self.loss_model else None
        return d

    @classmethod
    def from_dict(cls, data: object, path: str = "impairment") -> Impairment:
        """The inverse of `to_dict` (missing fields take their defaults); every error names its field."""
        if not isinstance(data, dict):
            raise ConfigError([(path, f"expected a mapping of impairment fields, got {data!r}")])
        known = {f.name for f in fields(cls)}
        errors = [(f"{path}.{k}", f"unknown field (known: {', '.join(sorted(known))})") for k in data if k not in known]
        kwargs = {k: v for k, v in data.items() if k in known}
        lm = kwargs.get("loss_model")
        if isinstance(lm, dict):
            unknown = [k for k in lm if k not in ("p", "r", "h", "k")]
            errors += [(f"{path}.loss_model.{k}", "unknown field (known: h, k, p, r)") for k in unknown]
            missing = [k for k in ("p", "r") if k not in lm]
            errors += [(f"{path}.loss_model.{k}", "required") for k in missing]
            if not unknown and not missing:
                try:
                    kwargs["loss_model"] = GilbertElliott(**lm)
                except ConfigError as exc:
                    errors += [(f"{path}.{f}", r) for f, r in exc.errors]
                    kwargs["loss_model"] = None
            else:
                kwargs["loss_model"] = None
        elif lm is not None:
            errors.append((f"{path}.loss_model", f"expected a mapping with p, r[, h, k] or null, got {lm!r}"))
            kwargs["loss_model"] = None
        # collect field errors without raising half-way
        probe = object.__new__(cls)
        for f in fields(cls):
            object.__setattr__(probe, f.name, kwargs.get(f.name, f.default))
        errors += probe.errors(path)
        if errors:
            raise ConfigError(errors)
        return cls(**kwargs)


# -- netem's distribution tables -------------------------------------------------------------------

def _clamp16(v: int) -> int:
    return max(-32768, min(32767, v))


def _normal_points() -> list[int]:
    # iproute2 normal.c: table[i] is the largest x with rint(16384·Φ(x)) == i, i.e. Φ⁻¹((i + ½)/16384)
    nd = NormalDist()
    return [round(nd.inv_cdf((i + 0.5) / 16384) * NETEM_DIST_SCALE) for i in range(0, 16384, 4)]


def _pareto_point(i: int) -> int:
    # iproute2 pareto.c / paretonormal.c: Pareto(α=3) shifted to mean 0, scaled by 4/3
    d: float = ((i / 65536) ** (-1.0 / 3.0) - 1.5) * (4.0 / 3.0) * NETEM_DIST_SCALE
    return min(32767, round(d))


@cache
def dist_table(name: str) -> tuple[int, ...]:
    """The 4096-entry table netem samples for `name` (as iproute2 generates it), in 1/8192 sigma."""
    if name == "normal":
        return tuple(_clamp16(v) for v in _normal_points())
    if name == "pareto":
        return tuple(_clamp16(_pareto_point(i)) for i in range(65536, 0, -16))
    if name == "paretonormal":
        normal = _normal_points()
        return tuple(_clamp16(int((n + 3 * _pareto_point(65536 - 4 * i)) / 4))
                     for n, i in zip(normal, range(0, 16384, 4), strict=True))
    raise ValueError(f"no table for distribution {name!r}")


# -- the model -------------------------------------------------------------------------------------

class ImpairmentModel:
    """Per-direction impairment state machine. Not thread-safe; one per direction.

    What may change state: `on_packet` (queues, GE state, counters) and `set` (the impairment).
    What it must not know: sockets, clocks, frames — it sees a time and a size only.
    """

    def __init__(self, impairment: Impairment, seed: int | str = 0) -> None:
        if not isinstance(impairment, Impairment):
            raise TypeError(f"expected an Impairment, got {impairment!r}")
        self.seed = seed
        self._rng_loss = random.Random(f"{seed}/loss")
        self._rng_delay = random.Random(f"{seed}/delay")
        self._rng_dup = random.Random(f"{seed}/duplicate")
        self._rng_reorder = random.Random(f"{seed}/reorder")
        self._rng_corrupt = random.Random(f"{seed}/corrupt")
        self._rate_queue: deque[float] = deque()
        self._last_departure = -math.inf
        self._last_release = -math.inf
        self._ge_bad = False
        self.packets_in = 0
        self.delivered = 0
        self.duplicated = 0
        self.corrupted = 0
        self.reordered = 0
        self.queue_high_water = 0
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._imp = impairment
        self._identity = impairment.is_identity
        self._table: tuple[int, ...] | None = None
        self.set(impairment)

    @property
    def impairment(self) -> Impairment:
        return self._imp

    def set(self, impairment: Impairment) -> None:
        """Use `impairment` from the next packet on. Packets already scheduled keep their times (as
        netem keeps its queue on a change); the Gilbert–Elliott state restarts in Good when the loss
        model changes (as netem's does)."""
        if not isinstance(impairment, Impairment):
            raise TypeError(f"expected an Impairment, got {impairment!r}")
        if impairment.loss_model != self._imp.loss_model:
            self._ge_bad = False
        self._imp = impairment
        self._identity = impairment.is_identity
        self.deterministic = impairment.is_deterministic
        dist = impairment.jitter_distribution
        self._table = dist_table(dist) if dist != "uniform" else None

    def passthrough(self, now_s: float) -> bool:
        """Fast path: if the impairment does nothing and nothing is held back, count the packet as
        delivered now and return True (the caller sends it at once); otherwise return False and the
        caller must use `on_packet`."""
        if self._identity and self._last_release <= now_s:
            self.packets_in += 1
            self.delivered += 1
            return True
        return False

    def on_packet(self, now_s: float, size_bytes: int) -> list[tuple[float, Action]]:
        """One packet arrives at `now_s`: when to release which copies (empty = dropped)."""
        self.packets_in += 1
        imp = self._imp
        if imp.cut:
            self.dropped["cut"] += 1
            return []
        if self._identity and self._last_release <= now_s:
            self.delivered += 1
            return [(now_s, Action.DELIVER)]
        copies = 2 if imp.duplicate and self._rng_dup.random() < imp.duplicate else 1
        reason = self._loss_event()
        if reason is not None:
            copies -= 1
            if copies == 0:
                self.dropped[reason] += 1
                return []
        out: list[tuple[float, Action]] = []
        first = self._schedule(now_s, size_bytes)
        if first is None:
            self.dropped["queue_full"] += 1
            return out
        self.delivered += 1
        if self._corrupt_now():
            out.append((first, Action.DELIVER_CORRUPTED))
        else:
            out.append((first, Action.DELIVER))
        if copies == 2 and self._loss_event() is None:     # the clone meets the loss generator again
            second = self._schedule(now_s, size_bytes)
            if second is not None:
                self.duplicated += 1
                out.append((second, Action.DUPLICATE_CORRUPTED if self._corrupt_now() else Action.DUPLICATE))
        return out

    def pick_corruption(self, span: int) -> tuple[int, int]:
        """Which byte (0 ≤ index < span) and bit (mask) to flip in a corrupted copy."""
        rng = self._rng_corrupt
        return int(rng.random() * span) if span > 0 else 0, 1 << int(rng.random() * 8)

    def counters(self) -> dict[str, Any]:
        return {"packets_in": self.packets_in, "delivered": self.delivered, "dropped": dict(self.dropped),
                "duplicated": self.duplicated, "corrupted": self.corrupted, "reordered": self.reordered,
                "queue_high_water": self.queue_high_water, "queue_len": len(self._rate_queue)}

    # -- the pieces -----------------------------------------------------------------------------

    def _loss_event(self) -> str | None:
        imp = self._imp
        ge = imp.loss_model
        if ge is not None:
            rng = self._rng_loss
            if self._ge_bad:
                lost = ge.h >= 1.0 or (ge.h > 0 and rng.random() < ge.h)
                if ge.r > 0 and rng.random() < ge.r:
                    self._ge_bad = False
            else:
                lost = ge.k > 0 and rng.random() < ge.k
                if ge.p > 0 and rng.random() < ge.p:
                    self._ge_bad = True
            return "ge_loss" if lost else None
        if imp.loss and self._rng_loss.random() < imp.loss:
            return "loss"
        return None

    def _corrupt_now(self) -> bool:
        c = self._imp.corrupt
        if c and self._rng_corrupt.random() < c:
            self.corrupted += 1
            return True
        return False

    def _schedule(self, now: float, size: int) -> float | None:
        """Release time of one copy, or None if the rate queue is full."""
        imp = self._imp
        if imp.reorder and self._rng_reorder.random() < imp.reorder:
            if self._last_release > now:
                self.reordered += 1
            return now
        departure = now
        if imp.rate_bps > 0:
            q = self._rate_queue
            while q and q[0] <= now:
                q.popleft()
            if len(q) >= imp.queue_limit:
                return None
            departure = max(now, self._last_departure) + size * 8.0 / imp.rate_bps
            self._last_departure = departure
            q.append(departure)
            if len(q) > self.queue_high_water:
                self.queue_high_water = len(q)
        release = departure + imp.delay_s
        if imp.jitter_s:
            release += self._jitter(imp.jitter_s)
            if release < departure:
                release = departure
        if release < self._last_release:
            release = self._last_release
        self._last_release = release
        return release

    def _jitter(self, sigma: float) -> float:
        table = self._table
        rng = self._rng_delay
        if table is None:                                   # netem's default: uniform ±sigma
            return (rng.random() * 2.0 - 1.0) * sigma
        return table[int(rng.random() * DIST_TABLE_SIZE)] * sigma / NETEM_DIST_SCALE
