"""Who owns which run: a record per run (`/run/patronus-lab/runs/<id>.json`), so that a run killed
with kill -9 never blocks the next, and `patronus-lab clean` removes only what is dead.

Every Mininet run and netns lab claims a run id here before it creates anything: an id that no
record, namespace (`pt<id>-*`) or management link (`pt<id>m*`) uses, recorded with the owner's pid
and start time. The owner releases it when it has removed what it created. A record whose owner no
longer runs (killed, crashed, or a network kept with `--keep`) marks its run's namespaces, links,
relays and processes as leftovers: a new run removes them before it builds (the agents' interface
names and WireGuard control sockets are the same from run to run), and so does `patronus-lab clean`.
A live owner's run is never touched unless asked by id (`--run`) or for everything (`--all`).

The directory lives on /run (tmpfs): a reboot clears it together with the namespaces it describes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from patronus.agent.procs import alive, start_ticks

RUN_ID_RE = re.compile(r"^[0-9a-f]{4}$")


def runs_dir() -> Path:
    env = os.environ.get("PATRONUS_RUNS_DIR")
    for d in ([Path(env)] if env else [Path("/run/patronus-lab/runs"),
                                       Path(tempfile.gettempdir()) / f"patronus-lab-runs-{os.getuid()}"]):
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:
            continue
        if os.access(d, os.W_OK):
            return d
    raise OSError("no writable directory for the run records (/run/patronus-lab/runs)")


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    kind: str                 # "run" (patronus-lab run), "kept" (its network kept up), "lab" (a netns lab), "test"
    pid: int
    ticks: int | None         # the owner's start time (clock ticks since boot): a reused pid is not it
    started_at: float
    out: str = ""

    def owner_alive(self) -> bool:
        return alive(self.pid, self.ticks)


def records() -> list[RunRecord]:
    out = []
    for f in sorted(runs_dir().glob("*.json")):
        try:
            d = json.loads(f.read_text())
            rec = RunRecord(str(d["run_id"]), str(d["kind"]), int(d["pid"]),
                            None if d.get("ticks") is None else int(d["ticks"]), float(d["started_at"]),
                            str(d.get("out", "")))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if RUN_ID_RE.match(rec.run_id) and f.stem == rec.run_id:
            out.append(rec)
    return out


def _ids_in_use() -> set[str]:
    used = {r.run_id for r in records()}
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for word in [*names, *re.findall(r"^\d+: ([^:@]+)", links, re.M)]:
        m = re.match(r"^pt([0-9a-f]{4})(?:-|m\d)", word)
        if m:
            used.add(m.group(1))
    return used


def claim(kind: str, out: str = "", want: str | None = None) -> str:
    """A run id no run uses (`want`, if given, or OSError), recorded as this process's."""
    used = _ids_in_use()
    for _ in range(1 if want else 1000):
        run_id = want or secrets.token_hex(2)
        if run_id in used:
            continue
        path = runs_dir() / f"{run_id}.json"
        rec = {"run_id": run_id, "kind": kind, "pid": os.getpid(), "ticks": start_ticks(os.getpid()),
               "started_at": time.time(), "out": out}
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(rec, fh)
        return run_id
    raise OSError(f"run id {want} is in use" if want else "no free run id (65,536 in use?)")


def release(run_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (runs_dir() / f"{run_id}.json").unlink()


def dead() -> list[RunRecord]:
    """Runs whose owner no longer runs: their leftovers are free to remove."""
    return [r for r in records() if not r.owner_alive()]


def remove_dead(clean: Callable[[str], list[str]], *, kept_too: bool) -> list[str]:
    """Remove what every run whose owner no longer runs left (`clean(run_id)` removes a run's
    leftovers), then forget it; a network kept for inspection (`--keep`) only if `kept_too`."""
    removed: list[str] = []
    for rec in dead():
        if rec.kind == "kept" and not kept_too:
            continue
        removed += clean(rec.run_id)
        release(rec.run_id)
    return removed


def mark_kept(run_id: str) -> None:
    """The run's network stays up after its owner exits (`--keep`): a later run leaves it alone, and
    `patronus-lab clean` removes it."""
    path = runs_dir() / f"{run_id}.json"
    with contextlib.suppress(OSError, ValueError):
        d = json.loads(path.read_text())
        d["kind"] = "kept"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(d))
        os.replace(tmp, path)


def unowned_ids() -> set[str]:
    """Run ids with namespaces or links but no record (left by a version that kept none, or by
    someone else): `clean` leaves them unless told `--all`."""
    recorded = {r.run_id for r in records()}
    return {i for i in _ids_in_use() if i not in recorded}
