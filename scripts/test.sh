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
# The two tiers run side by side. The real-VM tiers (the longer ones) run one test at a time at
# normal priority, since a TCG guest needs a core: a CLI VM's test keeps about one of the two cores
# busy (1.04 cores measured), a Browser VM's about 1.7. The in-process tiers run beside them at a
# lower priority on HEARTH_TEST_WORKERS pytest-xdist workers, on the CPU the guests leave idle, so
# that they take little from the guests' deadlines. Their output follows the real-VM tiers'. Both
# must pass. A command put in the background gets SIGINT and SIGQUIT ignored (no job control in a
# script); the tests see what their commands inherit, so the two are set back to their defaults.
status=0
env --default-signal=INT,QUIT nice -n 10 \
  .venv/bin/pytest -v -n "${HEARTH_TEST_WORKERS:-2}" --durations=30 \
  --junitxml=artifacts/junit-in-process.xml tests/unit tests/integration \
  >artifacts/in-process.log 2>&1 &
in_process=$!
.venv/bin/pytest -v --durations=30 \
  --junitxml=artifacts/junit-vm.xml tests --ignore=tests/unit --ignore=tests/integration ||
  status=$?
wait "$in_process" || status=$?
echo "=== the in-process tiers (tests/unit, tests/integration), run beside the real-VM tiers ==="
cat artifacts/in-process.log
exit "$status"
