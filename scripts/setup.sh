#!/usr/bin/env bash
# One command on a fresh Debian 12 machine, as root: install everything, build the golden images
# (minimal; cli and browser with the vendor CLIs, for the auth flow),
# start the controller (systemd unit when systemd runs, else a background process), and create a
# first CLI VM through the API, showing how to call it.

# Every exported HEARTH_* variable as a systemd EnvironmentFile, in double quotes with \ " $ `
# escaped (systemd's rules, which are also the shell's). The file is made 0600 before anything is
# written: it may hold HEARTH_MASTER_KEY, HEARTH_ADMIN_KEY, a database password.
write_env_file() {
  local file=$1 name value
  (umask 077 && : >"$file")
  chmod 0600 "$file"
  for name in $(compgen -e | grep '^HEARTH_' | sort); do
    value=${!name}
    if [[ $value == *$'\n'* ]]; then
      echo "$name holds a line break, which a systemd EnvironmentFile cannot keep" >&2
      return 1
    fi
    value=${value//\\/\\\\}
    value=${value//\"/\\\"}
    value=${value//\$/\\\$}
    value=${value//\`/\\\`}
    printf '%s="%s"\n' "$name" "$value"
  done >"$file"
}

# The controller's unit: the settings come from the EnvironmentFile, not from Environment= lines.
render_unit() {
  local repo=$1 env_file=$2
  cat <<UNIT
[Unit]
Description=Hearth controller
After=network-online.target postgresql.service
Wants=network-online.target

[Service]
EnvironmentFile=$env_file
ExecStart=$repo/.venv/bin/hearth serve
UMask=0077
Restart=on-failure
KillMode=process

[Install]
WantedBy=multi-user.target
UNIT
}

# Sourced (by the tests): the functions only.
[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0

set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
state=${HEARTH_STATE_DIR:-/var/lib/hearth}
port=${HEARTH_PORT:-4000}
url="http://127.0.0.1:$port"

bash scripts/install.sh
# The state dir holds the database, the keys and the logs: private from the start, and made
# private when an earlier run (or an image build) left it with the default 0755.
install -d -m 0700 "$state"
chmod 0700 "$state"
# cli and browser first: each build prepares the restore templates of the VM types that boot
# its image, and minimal (kept for tests and as a fallback) then boots none of them.
for recipe in cli browser minimal; do
  .venv/bin/hearth image build --recipe "$recipe"
done

healthy() { .venv/bin/python -c "import httpx,sys; sys.exit(httpx.get('$url/health', timeout=2).status_code != 200)" 2>/dev/null; }

if ! healthy; then
  if [[ -d /run/systemd/system ]]; then
    export HEARTH_STATE_DIR="$state" HEARTH_PORT="$port"
    write_env_file "$state/hearth.env"
    render_unit "$repo" "$state/hearth.env" >/etc/systemd/system/hearth.service
    systemctl daemon-reload
    systemctl enable --now hearth.service
    echo "controller: systemd unit hearth.service (journalctl -u hearth)"
  else
    # Detached into its own session, and holding none of this shell's descriptors: a pipe the
    # caller reads (`setup.sh | tee`, a CI log) would otherwise stay open as long as it runs.
    # umask 077: the log is created 0600 (the controller tightens it too, at every start).
    (umask 077 && HEARTH_STATE_DIR="$state" HEARTH_PORT="$port" .venv/bin/python - "$state/controller.log" \
      .venv/bin/hearth serve >"$state/controller.pid" <<'PY'
import subprocess, sys
with open(sys.argv[1], "ab") as log:
    child = subprocess.Popen(
        sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        close_fds=True, start_new_session=True,
    )
print(child.pid)
PY
    )
    echo "controller: pid $(cat "$state/controller.pid"), log $state/controller.log"
  fi
  for _ in $(seq 1 120); do healthy && break; sleep 0.5; done
  healthy || { echo "the controller did not become healthy; see its log" >&2; exit 1; }
fi

key=${HEARTH_ADMIN_KEY:-$(cat "$state/admin.key")}
export HEARTH_URL=$url HEARTH_API_KEY=$key
# A first CLI VM (the demo user's quota is one; a rerun shows the existing one).
.venv/bin/hearth vm create --user demo || .venv/bin/hearth vm list
cat <<EOT

Hearth is serving on $url (OpenAPI: $url/docs, $url/openapi.json).
  export HEARTH_URL=$url HEARTH_API_KEY=\$(cat $state/admin.key)
  .venv/bin/hearth vm list
  curl -H "Authorization: Bearer \$HEARTH_API_KEY" $url/api/vms
EOT
