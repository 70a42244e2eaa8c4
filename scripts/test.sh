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
# The in-process tiers run on HEARTH_TEST_WORKERS pytest-xdist workers (3 keep both cores busy; 6
# were no faster). Meanwhile the real-VM tiers' three images are built in the background at a low
# priority, into the cache the tests' own builds then find by content hash: a fresh machine takes
# ≈ 8 min for them, which the first real-VM tests would otherwise wait for; with the images cached
# this takes seconds. The real-VM tiers then run one test at a time, since a TCG guest needs a
# core. Both tiers must pass. (Run side by side at a low priority, the in-process tests whose races
# are opened by short sleeps lost them to the starving guests: 2026-12-07, 2 of 2625.)
status=0
prebuilt=$(mktemp -d)
(
  for recipe in minimal browser cli; do
    nice -n 10 .venv/bin/python -m hearth image build --recipe "$recipe" --out "$prebuilt/$recipe"
  done
) >artifacts/images-beside.log 2>&1 &
images=$!
.venv/bin/pytest -v -n "${HEARTH_TEST_WORKERS:-3}" --durations=30 \
  --junitxml=artifacts/junit-in-process.xml tests/unit tests/integration || status=$?
if ! wait "$images"; then
  echo "The images' build beside the in-process tiers failed (artifacts/images-beside.log);" \
    "the real-VM tiers' fixtures build them again and say why."
fi
rm -rf "$prebuilt"
.venv/bin/pytest -v --durations=30 \
  --junitxml=artifacts/junit-vm.xml tests --ignore=tests/unit --ignore=tests/integration ||
  status=$?
exit "$status"
