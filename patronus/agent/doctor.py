"""`patronus doctor`: what this host can and cannot do for the agent and the test-bed, and why.

Decisions:

* Every check *tries the thing* rather than inferring it from versions or config files: loading
  libnftables and listing tables, dumping conntrack, adding a netem qdisc, creating a bpf map. A check never
  raises; any failure becomes `ok=False` with the reason in `detail`.
* Probes that create kernel objects (the netem qdisc, the throwaway wireguard link) run inside a temporary
  network namespace named `ptdoctor-<pid>-<random>`, which is removed in a `finally`, so the doctor never
  changes the host's own namespace and leaves nothing behind even when a probe fails. Its `lo` carries the
  qdisc (some kernels, like this VM's, have no `dummy` module either).
* `needed_for` says who needs each capability; `agent_ready()` is the one place that decides which checks the
  agent cannot run without (root, nftables, and one of the two WireGuard backends).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import importlib.util
import json
import os
import platform
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from patronus.agent.wireguard import INSTALL_HINT, userspace_available

__all__ = ["NETNS_PREFIX", "Check", "agent_ready", "as_json", "render", "run_checks"]

NETNS_PREFIX: Final = "ptdoctor-"

AGENT: Final = "agent"
WG_KERNEL: Final = "wireguard-kernel"
WG_USERSPACE: Final = "wireguard-userspace"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    needed_for: str


# ------------------------------------------------------------------------------------------------- checks


def _check_root() -> Check:
    euid = os.geteuid()
    return Check("root", euid == 0, f"euid {euid}" + ("" if euid == 0 else ": run as root"),
                 "agent (netlink, nftables, WireGuard), emulation")


def _check_wireguard_kernel(ns: str | None, ns_error: str) -> Check:
    needed = "WireGuard kernel backend (optional: wireguard-go is the fallback)"
    if Path("/sys/module/wireguard").exists():
        return Check(WG_KERNEL, True, "module loaded (/sys/module/wireguard)", needed)
    if ns is None:
        return Check(WG_KERNEL, False, f"module not loaded; could not probe further: {ns_error}", needed)
    try:
        with IPRoute(netns=ns) as ipr:
            ipr.link("add", ifname="ptwgprobe", kind="wireguard")
    except NetlinkError as e:
        if e.code == errno.EOPNOTSUPP:
            return Check(WG_KERNEL, False, "kernel lacks the wireguard module (unknown link kind)", needed)
        return Check(WG_KERNEL, False, f"creating a wireguard link failed: {os.strerror(e.code)}", needed)
    return Check(WG_KERNEL, True, "wireguard links can be created (module loaded on demand)", needed)


def _check_wireguard_userspace() -> Check:
    ok, why = userspace_available()
    detail = why if ok else f"{why}; install: {INSTALL_HINT}"
    return Check(WG_USERSPACE, ok, detail, "WireGuard userspace backend (used when the kernel module is missing)")


def _check_nftables() -> Check:
    needed = "agent (steering marks, firewall)"
    problems: list[str] = []
    try:
        ctypes.CDLL("libnftables.so.1")
        lib = "libnftables.so.1 loads"
    except OSError as e:
        lib = ""
        problems.append(f"libnftables.so.1 does not load ({e}); apt-get install libnftables1")
    nft = shutil.which("nft")
    if nft is None:
        problems.append("nft not on PATH; apt-get install nftables")
    else:
        try:
            res = subprocess.run([nft, "list", "tables"], capture_output=True, text=True, timeout=10, check=False)
        except subprocess.TimeoutExpired:
            problems.append("`nft list tables` did not finish in 10s")
        else:
            if res.returncode != 0:
                problems.append(f"`nft list tables` exited {res.returncode}: {res.stderr.strip()}")
    if problems:
        return Check("nftables", False, "; ".join(problems), needed)
    return Check("nftables", True, f"{lib}; `nft list tables` works", needed)


def _check_conntrack() -> Check:
    needed = "agent (flow tracking for steering)"
    try:
        from pyroute2 import Conntrack

        with Conntrack() as ct:
            n = sum(1 for _ in ct.dump_entries())
    except Exception as e:  # any failure of the probe is the answer
        return Check("conntrack", False, f"conntrack netlink dump failed: {e}", needed)
    return Check("conntrack", True, f"conntrack netlink dump works ({n} entries)", needed)


def _check_netem(ns: str | None, ns_error: str) -> Check:
    needed = "emulation link impairment (optional: the userspace relay is the fallback)"
    if ns is None:
        return Check("tc-netem", False, f"could not probe: {ns_error}", needed)
    try:
        with IPRoute(netns=ns) as ipr:
            idx = ipr.link_lookup(ifname="lo")[0]
            ipr.link("set", index=idx, state="up")
            ipr.tc("add", "netem", index=idx, handle="1:", delay=1000)
    except NetlinkError as e:
        if e.code == errno.ENOENT:
            return Check("tc-netem", False, "kernel lacks sch_netem (tc: unknown qdisc kind)", needed)
        return Check("tc-netem", False, f"adding a netem qdisc failed: {os.strerror(e.code)}", needed)
    except Exception as e:
        return Check("tc-netem", False, f"netem probe failed: {e}", needed)
    return Check("tc-netem", True, "a netem qdisc can be added", needed)


# bpf(2) syscall numbers by machine; BPF_MAP_CREATE of a tiny array map is the cheapest real use of it.
_SYS_BPF: Final = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "riscv64": 280, "ppc64le": 361, "s390x": 351}
_BPF_MAP_CREATE: Final = 0
_BPF_MAP_TYPE_ARRAY: Final = 2


def _bpf_map_create() -> str:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        return f"not tried on {platform.machine()}"
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    attr = (ctypes.c_uint32 * 32)()  # zeroed union bpf_attr; map_type, key_size, value_size, max_entries first
    attr[0], attr[1], attr[2], attr[3] = _BPF_MAP_TYPE_ARRAY, 4, 4, 1
    fd = libc.syscall(nr, _BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(BPF_MAP_CREATE) failed: {os.strerror(err)}")
    os.close(fd)
    return "bpf(BPF_MAP_CREATE) works"


def _check_bpf() -> Check:
    needed = "dataplane (XDP/tc classifiers; optional)"
    try:
        flag = Path("/proc/sys/kernel/unprivileged_bpf_disabled").read_text().strip()
    except OSError as e:
        return Check("bpf", False, f"/proc/sys/kernel/unprivileged_bpf_disabled unreadable ({e.strerror}): "
                     "kernel without the bpf syscall?", needed)
    try:
        how = _bpf_map_create()
    except OSError as e:
        return Check("bpf", False, f"unprivileged_bpf_disabled={flag}; {e.strerror}", needed)
    return Check("bpf", True, f"bpf syscall available (unprivileged_bpf_disabled={flag}); {how}", needed)


def _check_bcc() -> Check:
    needed = "dataplane (loading the programs in bpf/; optional)"
    if importlib.util.find_spec("bcc") is not None:
        return Check("bcc", True, "python module bcc importable", needed)
    return Check("bcc", False, "python module bcc not importable: apt-get install python3-bpfcc and use a venv "
                 "with --system-site-packages (plus kernel headers, see DESIGN.md)", needed)


def _check_iperf3() -> Check:
    path = shutil.which("iperf3")
    return Check("iperf3", path is not None, f"at {path}" if path else "not on PATH; apt-get install iperf3",
                 "emulation traffic and benchmarks")


def _check_policy_routing() -> Check:
    needed = "agent (per-path routing tables)"
    try:
        with IPRoute() as ipr:
            rules = list(ipr.get_rules())
    except Exception as e:
        return Check("policy-routing", False, f"listing ip rules failed: {e}", needed)
    return Check("policy-routing", True, f"ip rules readable ({len(rules)} rules)", needed)


def _guard(name: str, needed_for: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as e:  # a check must report, never crash the doctor
        return Check(name, False, f"check crashed: {type(e).__name__}: {e}", needed_for)


def run_checks() -> list[Check]:
    """Run every check; never raises. Leaves no namespace, link or qdisc behind."""
    ns: str | None = None
    ns_error = ""
    if os.geteuid() != 0:
        # Not even tried: pyroute2's netns.create leaks its control sockets when it fails.
        ns_error = "not root (a temporary network namespace needs CAP_SYS_ADMIN)"
    else:
        name = f"{NETNS_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        try:
            netns.create(name)
            ns = name
        except Exception as e:
            ns_error = f"creating a temporary network namespace failed: {e}"
    try:
        checks = [
            _guard("root", "agent", _check_root),
            _guard(WG_KERNEL, "WireGuard kernel backend", lambda: _check_wireguard_kernel(ns, ns_error)),
            _guard(WG_USERSPACE, "WireGuard userspace backend", _check_wireguard_userspace),
            _guard("nftables", "agent", _check_nftables),
            _guard("conntrack", "agent", _check_conntrack),
            _guard("tc-netem", "emulation", lambda: _check_netem(ns, ns_error)),
            _guard("bpf", "dataplane", _check_bpf),
            _guard("bcc", "dataplane", _check_bcc),
            _guard("iperf3", "emulation", _check_iperf3),
            _guard("policy-routing", "agent", _check_policy_routing),
        ]
    finally:
        if ns is not None:
            netns.remove(ns)
    return checks


def agent_ready(checks: Iterable[Check]) -> bool:
    """True if the agent can run: root, nftables, and at least one WireGuard backend."""
    ok = {c.name: c.ok for c in checks}
    return ok.get("root", False) and ok.get("nftables", False) and (
        ok.get(WG_KERNEL, False) or ok.get(WG_USERSPACE, False)
    )


# ----------------------------------------------------------------------------------------------- output


def render(checks: Sequence[Check]) -> str:
    """A plain-text table, one line per check: status, check, needed for, detail (whitespace flattened)."""
    rows = [("", "check", "needed for", "detail")] + [
        ("ok" if c.ok else "FAIL", c.name, c.needed_for, " ".join(c.detail.split())) for c in checks
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows]
    verdict = "agent can run here" if agent_ready(checks) else "agent cannot run here (see FAIL rows for root, " \
        "nftables, WireGuard)"
    return "\n".join([*lines, "", verdict])


def as_json(checks: Sequence[Check]) -> str:
    """`{"agent_ready": bool, "checks": [{name, ok, detail, needed_for}, ...]}` as JSON text."""
    return json.dumps({"agent_ready": agent_ready(checks), "checks": [asdict(c) for c in checks]}, indent=2)
