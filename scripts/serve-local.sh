#!/usr/bin/env bash
# The main job on a fresh Debian machine: the gateway on its embedded Session Manager emulator.
# Installs libssh-dev when missing, builds, and runs `ssmgate serve --local` (extra flags pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-libssh.sh
command -v swift >/dev/null || { echo "swift is not on PATH: install Swift 6.1 or later (https://swift.org/install)" >&2; exit 1; }
exec swift run ssmgate serve --local "$@"
