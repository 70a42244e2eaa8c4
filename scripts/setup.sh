#!/usr/bin/env bash
# One command on a fresh Debian 12 machine, as root: install everything, build the golden image,
# and run the main job: start a VM from it and show its agent healthy (Ctrl-C destroys it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/hearth image build --recipe minimal
.venv/bin/hearth vm run --recipe minimal "$@"
