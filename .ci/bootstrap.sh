#!/usr/bin/env bash
# Installs what `make test`, `make demo` and `make bench` need, idempotently:
#   1. Debian packages (apt-get, --no-install-recommends), only those missing;
#   2. a virtualenv in .venv made from Debian's /usr/bin/python3;
#   3. the pinned Python packages of .ci/constraints.txt and Patronus itself (editable).
# On a machine where it cannot do that (not root and packages missing, no apt-get), it stops and says
# what to do. Re-running it when nothing changed takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=/usr/bin/python3
say() { printf 'patronus setup: %s\n' "$*" >&2; }

# --- 1. system packages --------------------------------------------------------------------------
missing=()
[ -x "$PY" ] || missing+=(python3)
if [ -x "$PY" ]; then
  "$PY" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
fi
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# the agent: WireGuard in userspace where the kernel has no module, its configuration tool, nftables
# (libnftables is loaded by the agent), and iperf3 for bandwidth figures in tests and benchmarks
command -v wireguard-go >/dev/null 2>&1 || missing+=(wireguard-go)
command -v wg >/dev/null 2>&1 || missing+=(wireguard-tools)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v iperf3 >/dev/null 2>&1 || missing+=(iperf3)
# the test-bed: Mininet (Debian's, without Open vSwitch: sites are joined by direct links)
[ -d /usr/lib/python3/dist-packages/mininet ] && command -v mnexec >/dev/null 2>&1 || missing+=(mininet)
# ethtool: the test-bed turns veth offloads off on impaired links (the relay must see wire packets)
command -v ethtool >/dev/null 2>&1 || missing+=(ethtool)

if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null 2>&1; then
    say "missing: ${missing[*]} and there is no apt-get here."
    say "Patronus' setup targets Debian/Ubuntu. Elsewhere install Python >= 3.11 with venv and the"
    say "equivalents of: ${missing[*]}; then run 'make test' again."
    exit 2
  fi
  if [ "$(id -u)" != 0 ]; then
    say "missing Debian packages: ${missing[*]}"
    say "run as root ('sudo make test'), or install them first:"
    say "  sudo apt-get install --no-install-recommends ${missing[*]}"
    exit 2
  fi
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  say "$PY is $("$PY" -V 2>&1); Patronus needs Python >= 3.11 (Debian 12 or newer)."
  exit 2
}

# --- 2 and 3. virtualenv and pinned Python packages -----------------------------------------------
# Debian's own Python modules the venv needs (Mininet; later bcc) are exposed one by one through a
# .pth file, not with --system-site-packages, so no other Debian package can shadow a pinned one.
link_debian_modules() {
  local extras="$VENV/debian-modules" site
  mkdir -p "$extras"
  for m in mininet; do
    [ -e "/usr/lib/python3/dist-packages/$m" ] && ln -sfn "/usr/lib/python3/dist-packages/$m" "$extras/$m"
  done
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$(cd "$extras" && pwd)" > "$site/patronus-debian-modules.pth"
}
want=$(cat .ci/constraints.txt pyproject.toml | sha256sum | cut -c1-16)
stamp="$VENV/.patronus-setup"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  link_debian_modules
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv $VENV from $PY"
  "$PY" -m venv "$VENV"
fi
say "installing pinned Python packages into $VENV"
if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
      -c .ci/constraints.txt -e '.[test]' 2> "$VENV/pip-error.log"; then
  cat "$VENV/pip-error.log" >&2
  say "pip could not install the pinned packages (above). Check network access to PyPI."
  exit 2
fi
link_debian_modules
echo "$want" > "$stamp"
say "ready"
