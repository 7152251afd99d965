"""Run inside the lab's core namespace: attack br's probe reflector with scapy.

argv: REFLECTOR_ADDR SPOOFED_PEER_ADDR. Sends forged (bad HMAC), unauthenticated, truncated and
garbage probes with the peer's address as source, then captures one genuine probe on the wire and
replays it. Prints a JSON count of what it sent.
"""

from __future__ import annotations

import json
import os
import sys

from scapy.all import IP, UDP, Raw, send, sniff  # type: ignore[attr-defined]

from patronus.core.probe import Probe, ProbeType, encode


def main() -> int:
    reflector, peer = sys.argv[1], sys.argv[2]
    port = 862
    forged = []
    for seq in range(20):
        forged.append(encode(Probe(ProbeType.REQUEST, 7, seq, 1), key=b"not-the-pair-key-at-all-32-bytes"))
        forged.append(encode(Probe(ProbeType.REQUEST, 7, 1000 + seq, 1)))           # unauthenticated
        forged.append(encode(Probe(ProbeType.REQUEST, 7, 2000 + seq, 1), key=b"k")[:30])   # truncated
        forged.append(os.urandom(48 + seq))                                         # garbage
    for data in forged:
        send(IP(src=peer, dst=reflector) / UDP(sport=50000, dport=port) / Raw(data), verbose=False)
    # capture one real request from the peer to the reflector, and send it again
    # (no libpcap here: filter in Python rather than with a BPF filter string)
    pkts = sniff(lfilter=lambda p: IP in p and UDP in p and p[IP].src == peer and p[IP].dst == reflector
                 and p[UDP].dport == port, count=1, timeout=10)
    replayed = 0
    if pkts:
        p = pkts[0]
        for _ in range(5):
            send(IP(src=p[IP].src, dst=p[IP].dst) / UDP(sport=p[UDP].sport, dport=port) / Raw(bytes(p[UDP].payload)),
                 verbose=False)
            replayed += 1
    print(json.dumps({"forged": len(forged), "replayed": replayed}))
    return 0 if replayed else 1


if __name__ == "__main__":
    sys.exit(main())
