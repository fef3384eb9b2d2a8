#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what the tests need when it is
# missing, builds, runs `swift test`, then a bounded libFuzzer run of the wire decoders.
# Exits non-zero on any failure. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# Debian packages the tests use, as "command package" pairs; installed only when the command is missing.
REQUIRED=(
    "git git"
)

ensure_packages() {
    local missing=() entry
    for entry in "${REQUIRED[@]}"; do
        set -- $entry
        command -v "$1" >/dev/null 2>&1 || missing+=("$2")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
}

ensure_packages
command -v swift >/dev/null || { echo "swift is not on PATH: install Swift 6.1 or later (https://swift.org/install)" >&2; exit 1; }

log "swift build (debug, tests included)"
swift build --build-tests

log "swift test"
swift test --skip-build

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
if [ "$FUZZ_SECONDS" -gt 0 ]; then
    log "fuzzing the AgentMessage and smux decoders for ${FUZZ_SECONDS} s"
    bash scripts/fuzz.sh "$FUZZ_SECONDS"
fi

log "all tests passed"
