"""The kernel honours the agent's port reservation (`patronus.agent.ports`) in a namespace of its own: a
socket bound to port 0 never takes a reserved (tunnel) port, an explicit bind still does, and the release
gives the pool back. The pool is narrowed to 20 ports so the outcome does not depend on luck: without the
reservation, ten port-0 binds land in the tunnel block with probability 1 - C(10,10)/C(20,10)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

if os.geteuid() != 0:
    pytest.skip("needs root for network namespaces", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import errno, socket, sys
from pathlib import Path
from patronus.agent import ports
Path('/proc/sys/net/ipv4/ip_local_port_range').write_text('39990 40009')
state = Path(sys.argv[1])
res = ports.Reservation.reserve(set(range(40000, 40016)), state) if sys.argv[2] == 'reserve' else None
got, held = [], []
for _ in range(20):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.append(s)
    try:
        s.bind(('127.0.0.1', 0))
    except OSError as e:
        assert e.errno == errno.EADDRINUSE, e
        break
    got.append(s.getsockname()[1])
tunnel = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    tunnel.bind(('0.0.0.0', 40007))          # wireguard's listen port: an explicit bind
    print('tunnel bound')
except OSError as e:
    print(errno.errorcode[e.errno])
print(sorted(got))
print(Path('/proc/sys/net/ipv4/ip_local_reserved_ports').read_text().strip())
if res is not None:
    res.release()
print(Path('/proc/sys/net/ipv4/ip_local_reserved_ports').read_text().strip() or '-')
"""


@pytest.mark.parametrize("mode", ["reserve", "none"])
def test_port_zero_binds_never_take_a_reserved_port(tmp_path: Path, mode: str) -> None:
    ns = f"ptports{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, str(tmp_path), mode],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=30)
        assert r.returncode == 0, r.stderr
        tunnel, got, during, after = r.stdout.splitlines()
        bound = sorted(int(p) for p in got.strip("[]").split(","))
        if mode == "reserve":
            assert bound == list(range(39990, 40000)), bound        # only the 10 free ports, then EADDRINUSE
            assert tunnel == "tunnel bound" and during == "40000-40015" and after == "-"
        else:                   # the collision the reservation prevents: a port-0 socket holds the tunnel's port
            assert len(bound) == 20 and tunnel == "EADDRINUSE" and during == "" and after == "-"
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert Path("/proc/sys/net/ipv4/ip_local_reserved_ports").read_text().strip() == ""   # the host's: untouched
