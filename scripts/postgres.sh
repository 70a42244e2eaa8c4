#!/usr/bin/env bash
# Ensures Debian's PostgreSQL is installed and running, with a `hearth` role and database for
# the test suite. Prints the database URL. Idempotent; used by test.sh.
set -euo pipefail
# Only the URL goes to stdout (the caller captures it); everything the tools print goes to stderr
# (pg_ctlcluster, for one, says "Removed stale pid file." after an unclean shutdown).
exec 3>&1 1>&2
if ! command -v pg_lsclusters >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
cluster=$(pg_lsclusters --no-header | awk 'NR==1 {print $1" "$2}')
if [[ -z "$cluster" ]]; then
  version=$(ls /usr/lib/postgresql | sort -V | tail -1)
  pg_createcluster "$version" main >/dev/null
  cluster="$version main"
fi
read -r version name <<<"$cluster"
if ! pg_lsclusters --no-header | awk -v v="$version" -v n="$name" '$1==v && $2==n {print $4}' | grep -q online; then
  # The server outlives this script: it must not inherit any of our descriptors, or it holds the
  # caller's pipes open (the `$(...)` capturing the URL, CI's log) and the caller never sees EOF.
  python3 - "$version" "$name" <<'PY'
import subprocess, sys
cmd = ["pg_ctlcluster", sys.argv[1], sys.argv[2], "start"]
sys.exit(subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=2, close_fds=True).returncode)
PY
fi
port=$(pg_lsclusters --no-header | awk -v v="$version" -v n="$name" '$1==v && $2==n {print $3}')
password=hearth-test
runuser -u postgres -- psql -q -p "$port" -v ON_ERROR_STOP=1 <<SQL >/dev/null
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hearth') THEN
    CREATE ROLE hearth LOGIN PASSWORD '$password' CREATEDB;
  END IF;
END \$\$;
SQL
if ! runuser -u postgres -- psql -p "$port" -tAc "SELECT 1 FROM pg_database WHERE datname='hearth_test'" | grep -q 1; then
  runuser -u postgres -- createdb -p "$port" -O hearth hearth_test
fi
echo "postgresql+psycopg://hearth:$password@127.0.0.1:$port/hearth_test" >&3
