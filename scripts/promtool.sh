#!/usr/bin/env bash
# Prints the path of a promtool binary, for checking and unit-testing the alert rules in
# deploy/prometheus. Idempotent and quick once fetched; used by test.sh.
#
# A promtool on PATH wins. Otherwise promtool comes from Debian 12's `prometheus` package (the only
# Debian package that ships it), downloaded and unpacked under the cache dir, never installed:
# installing it would install a Prometheus server too, and start it where systemd runs.
set -euo pipefail
# Only the path goes to stdout (the caller captures it); everything the tools print goes to stderr.
exec 3>&1 1>&2

if path=$(command -v promtool); then
  echo "$path" >&3
  exit 0
fi

candidate() { apt-cache policy prometheus | awk '/Candidate:/ {print $2}'; }
version=$(candidate)
if [[ -z $version || $version == "(none)" ]]; then
  apt-get update -qq
  version=$(candidate)
fi
if [[ -z $version || $version == "(none)" ]]; then
  echo "promtool.sh: apt knows no 'prometheus' package (is this Debian 12 with main enabled?)"
  exit 1
fi

# One directory per package version (an epoch's ':' kept out of the path), so a point release
# of the package is fetched once and an older one stays usable by whoever still names it.
root="${HEARTH_CACHE_DIR:-/var/cache/hearth}/promtool"
dir="$root/${version//:/_}"
bin="$dir/usr/bin/promtool"
if [[ ! -x $bin ]]; then
  echo "promtool.sh: fetching promtool from Debian's prometheus $version"
  mkdir -p "$root"
  staging=$(mktemp -d "$root/.staging.XXXXXX")
  trap 'rm -rf "$staging"' EXIT
  # apt-get download checks the .deb against the signed package lists. Run as root it would hand
  # the download to the `_apt` user, who cannot write into this 0700 staging dir; apt then falls
  # back to root with a warning, which we ask for up front instead.
  (cd "$staging" && apt-get download -qq -o APT::Sandbox::User=root "prometheus=$version")
  dpkg-deb -x "$staging"/prometheus_*.deb "$staging/tree"
  "$staging/tree/usr/bin/promtool" --version >/dev/null
  # Moved into place whole, so a caller never sees half an unpacked tree; a concurrent run that
  # got there first is as good as ours.
  if ! mv -T "$staging/tree" "$dir" 2>/dev/null && [[ ! -x $bin ]]; then
    echo "promtool.sh: $dir exists without usr/bin/promtool; remove it and run again"
    exit 1
  fi
fi
echo "$bin" >&3
