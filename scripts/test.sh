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
    "ssh openssh-client"
    "scp openssh-client"
    "ssh-keygen openssh-client"
    "/usr/sbin/sshd openssh-server"
    "rsync rsync"
    "curl curl"
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

# The real awscli (and botocore, which the SigV4 tests compare against), from PyPI.
ensure_awscli() {
    if command -v aws >/dev/null 2>&1 && python3 -c 'import botocore' >/dev/null 2>&1; then
        return 0
    fi
    local need=()
    command -v python3 >/dev/null 2>&1 || need+=(python3)
    python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
    python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
    if [ ${#need[@]} -gt 0 ]; then
        log "installing ${need[*]}"
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
    fi
    log "installing awscli from PyPI"
    if ! python3 -m pip install --quiet awscli 2>/dev/null; then
        # Debian's system Python refuses global installs (PEP 668): use a virtualenv of our own.
        python3 -m venv .build-venv
        .build-venv/bin/pip install --quiet awscli
    fi
}

ensure_packages
ensure_awscli
[ -x .build-venv/bin/aws ] && export PATH="$PWD/.build-venv/bin:$PATH"
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
