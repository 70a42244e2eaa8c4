#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: installs what the tests need, then lint, types, tests.
# Images are cached under ${HEARTH_CACHE_DIR:-/var/cache/hearth} by content hash.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
mkdir -p artifacts
# The test OAuth server's dependencies (npm oidc-provider, pinned by the lockfile shipped in
# src/hearth/bench/oidc_server), installed with npm ci under the cache dir, outside the source tree.
.venv/bin/python -m hearth.bench.oidc_install
# The store's tests run on SQLite and on this PostgreSQL (started here if it is not running).
HEARTH_TEST_DATABASE_URL=$(bash scripts/postgres.sh)
export HEARTH_TEST_DATABASE_URL
# promtool checks and unit-tests the alert rules in deploy/prometheus (fetched, never installed).
HEARTH_PROMTOOL=$(bash scripts/promtool.sh)
export HEARTH_PROMTOOL
.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
.venv/bin/mypy
if (($#)); then
  # Arguments name what to run: one pytest, one test at a time, as asked.
  exec .venv/bin/pytest -v --durations=30 --junitxml=artifacts/junit.xml "$@"
fi
# The in-process tiers spend most of their time waiting (on agents' sockets, deadlines, the
# databases), so they share the cores among workers (pytest-xdist); the real-VM tiers then run one
# test at a time, since a TCG guest needs a core to itself. Both must pass.
status=0
.venv/bin/pytest -v -n "${HEARTH_TEST_WORKERS:-3}" --durations=30 \
  --junitxml=artifacts/junit-in-process.xml tests/unit tests/integration || status=$?
.venv/bin/pytest -v --durations=30 \
  --junitxml=artifacts/junit-vm.xml tests --ignore=tests/unit --ignore=tests/integration ||
  status=$?
exit "$status"
