"""An organisation on disk for the test-bed's discovering sites (issue 14): what an operator makes with
`patronus ca init`, `patronus keys signing` and `patronus ca sign-site`, made through the same functions.

    org = Org.create(directory, "lab")
    files = org.site("hq", 12, wg_public_key, ["10.1.1.0/24"])    # certificate, signing key (0600)
    org.revoke("br")                                               # a new revocations.crl
    site_file_settings = {"mesh": org.mesh_section("hq", seeds=["10.0.0.1:51900"])}

Real runs (Mininet, the namespace tests) use it; the simulator makes its org in memory
(`emulation.backends.sim.meshdrive.SimOrg`), deterministic from the scenario's seed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patronus.agent import ca
from patronus.agent import keys as keymod


@dataclass
class SiteFiles:
    certificate: Path
    signing_key: Path
    serial: int


@dataclass
class Org:
    directory: Path
    sites: dict[str, SiteFiles] = field(default_factory=dict)

    @classmethod
    def create(cls, directory: Path, name: str = "lab") -> Org:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca.init_ca(directory / "ca", name, (), 30, int(time.time()))
        return cls(directory)

    @property
    def root(self) -> Path:
        return self.directory / "ca" / ca.ROOT_FILE

    @property
    def revocations(self) -> Path:
        return self.directory / "ca" / ca.REVOCATIONS_FILE

    def site(self, name: str, site_id: int, wg_public_key: str, prefixes: Sequence[str]) -> SiteFiles:
        """A site's signing key (0600) and its certificate, signed for its WireGuard key and prefixes (a site
        given a second certificate, after a revocation say, gets new files beside the old ones)."""
        stem = name
        k = 1
        while (self.directory / f"{stem}.crt").exists():
            k += 1
            stem = f"{name}-{k}"
        key = self.directory / f"{stem}.signing.pem"
        public = keymod.write_signing_key(key)
        out = self.directory / f"{stem}.crt"
        cert = ca.sign_site(self.directory / "ca", site_id=site_id, name=name, wg_public_key=wg_public_key,
                            signing_public_key=keymod.key_text(public), prefixes=prefixes, days=7, out=out,
                            now=int(time.time()))
        self.sites[name] = files = SiteFiles(out, key, cert.serial)
        return files

    def revoke(self, name: str) -> None:
        ca.revoke(self.directory / "ca", f"{self.sites[name].serial:032x}", force=False, now=int(time.time()))

    def mesh_section(self, name: str, *, seeds: Sequence[str] = (), revocations: bool = False,
                     extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The site file's `mesh:` section of site `name` (`revocations`: start from the CA's current list)."""
        f = self.sites[name]
        d: dict[str, Any] = {"certificate": str(f.certificate), "signing_key": str(f.signing_key),
                             "root": str(self.root), "seeds": list(seeds)}
        if revocations:
            d["revocations"] = str(self.revocations)
        d.update(extra or {})
        return d
