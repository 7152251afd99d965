"""The loaders against mutated files: every shipped scenario and the annotated site file, mutated
byte by byte and value by value. Every input must give a value or a `ConfigError` whose every problem
names its field (anything else is a crash), within 1 s and 200 MB.

- loader_fuzz_crashes: crashes over N inputs per loader (N = 100,000 here; the suite runs a few
  thousand through the same mutator, tests/unit/test_loader_fuzz.py). Goal 0.
- details: inputs slower than 1 s (goal 0), the slowest input, peak memory (ru_maxrss, goal
  < 200 MB), inputs per outcome.

`mutants(seed_text, rng)` and `outcome(parse, data)` are what the test uses too.
"""

from __future__ import annotations

import random
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import write
from patronus.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
N_PER_LOADER = 100_000

# values a careless user or an attacker writes where a setting goes
ODD_VALUES: list[Any] = [
    None, True, -1, 0, 2**63, 10**400, 1e309, -1e309, float("nan"), "", " ", "1" + "0" * 309, "1e300h",
    "8_470", "٣٣", "a\0b", "\u202e", "x" * 5000, [], [None], {}, {"a": [1]}, ["fast"],
    {"profile": ["fast"]}, "10ms", "-5s", "150%", "0.5", "1.5.5.5", "::1", "10.0.0.0/33", "*", "${HOME}",
]
ODD_TEXT = [b"[", b"]", b"{", b"&a ", b"*a", b"<<: ", b"!!python/object:os.system ", b"\x00", b"\x1b",
            b"\xff\xfe", b"\t", b"\r", b"'", b'"', b"- ", b": ", b"? ", b"|", b"9" * 5000, b"[" * 500, b"#",
            b"%YAML 1.1\n", b"---\n"]


def seeds() -> dict[str, tuple[Callable[[bytes], Any], list[bytes]]]:
    """Each loader with the files it is fuzzed from (the site file's secret path points to a real
    file, so that a mutant is judged on what it changed)."""
    from emulation.scenario import parse as parse_scenario
    from patronus.agent.config import parse as parse_site

    secret = Path(tempfile.gettempdir()) / "patronus-fuzz-probe.secret"
    secret.write_text("a shared secret of enough length\n")
    site = (ROOT / "patronus" / "deploy" / "site.example.yaml").read_bytes()
    site = site.replace(b"/etc/patronus/probe.secret", str(secret).encode())
    scenarios = [p.read_bytes() for p in sorted((ROOT / "scenarios").glob("*.yaml"))]

    def scenario(data: bytes) -> Any:
        return parse_scenario(_text(data))

    def site_file(data: bytes) -> Any:
        return parse_site(_text(data))

    return {"scenario": (scenario, scenarios), "site_file": (site_file, [site])}


def _text(data: bytes) -> str:
    # what the file loaders do: a file that is not UTF-8 is a ConfigError (patronus.safeyaml)
    from patronus import safeyaml

    if len(data) > safeyaml.MAX_BYTES:
        raise ConfigError(f"larger than {safeyaml.MAX_BYTES} bytes", "file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", "file") from None


def _leaves(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield (*path, k)
            yield from _leaves(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield (*path, i)
            yield from _leaves(v, (*path, i))


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for k in path[:-1]:
        doc = doc[k]
    doc[path[-1]] = value


def mutants(seed: bytes, rng: random.Random) -> Iterator[bytes]:
    """Endless mutants of `seed`: byte-level edits, and documents with one value replaced."""
    doc = yaml.safe_load(seed)
    leaves = list(_leaves(doc))
    while True:
        kind = rng.random()
        if kind < 0.45:
            data = bytearray(seed)
            for _ in range(rng.choice((1, 1, 2, 4))):
                at = rng.randrange(len(data) + 1)
                op = rng.random()
                if op < 0.3 and data:
                    del data[at:at + rng.randint(1, 40)]
                elif op < 0.6:
                    data[at:at] = rng.choice(ODD_TEXT)
                elif op < 0.8 and data:
                    end = min(len(data), at + rng.randint(1, 80))
                    data[at:at] = data[at:end] * rng.randint(1, 3)
                elif data:
                    data[min(at, len(data) - 1)] = rng.randrange(256)
            yield bytes(data)
        else:
            mutant = yaml.safe_load(seed)
            path = rng.choice(leaves)
            try:
                _set(mutant, path, rng.choice(ODD_VALUES))
                text = yaml.safe_dump(mutant, allow_unicode=True, sort_keys=False, width=10**6)
            except (yaml.YAMLError, ValueError, TypeError, OverflowError, KeyError, IndexError):
                continue
            yield text.encode("utf-8")


def outcome(parse: Callable[[bytes], Any], data: bytes) -> str:
    """'ok' or 'config_error'; raises AssertionError (with the input) on a crash or an error that
    names no field."""
    try:
        parse(data)
    except ConfigError as exc:
        unnamed = [reason for where, reason in exc.errors if not where]
        assert exc.errors and not unnamed, f"ConfigError without a field {unnamed[:3]} for {data[:300]!r}"
        assert len(str(exc)) < 100_000, f"a message of {len(str(exc))} characters for {data[:300]!r}"
        return "config_error"
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__}: {str(exc)[:200]} for {data[:300]!r}") from exc
    return "ok"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """`python -m benchmarks bench_loader_fuzz [N]`: N inputs per loader (default 100,000: about half
    an hour on one core, so `make bench` leaves it out)."""
    n = int(argv[0]) if argv else N_PER_LOADER
    records = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    for name, (parse, files) in seeds().items():
        rng = random.Random(20261207)
        streams = [mutants(f, rng) for f in files]
        counts: Counter[str] = Counter()
        crashes: list[str] = []
        slow = 0
        slowest = 0.0
        for i in range(n):
            data = next(streams[i % len(streams)])
            t0 = time.perf_counter()
            try:
                counts[outcome(parse, data)] += 1
            except AssertionError as exc:
                counts["crash"] += 1
                if len(crashes) < 5:
                    crashes.append(str(exc)[:400])
            dt = time.perf_counter() - t0
            slowest = max(slowest, dt)
            slow += dt > 1.0
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        records.append(write(f"loader_fuzz_{name}", counts["crash"], "crashes", 0, higher_is_better=False,
                             ok=counts["crash"] == 0 and slow == 0 and peak_mb < 200, inputs=n,
                             outcomes=dict(counts), over_1s=slow, slowest_s=round(slowest, 4),
                             peak_rss_mb=round(peak_mb, 1), first_crashes=crashes))
    return records


if __name__ == "__main__":
    for rec in main(sys.argv[1:]):
        print(rec)
