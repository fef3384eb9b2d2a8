#!/usr/bin/env bash
# Gateway benchmarks (BENCHMARKS.md "Gateway"): builds GatewayBenchmarks and ssmgate (the emulator
# runs as `ssmgate local` in its own process) in release into .build-release, prints the toolchain and
# the table. Arguments go to the benchmark: --quick for a smoke run, --limits aws|unlimited, `--help`.
set -euo pipefail
cd "$(dirname "$0")/.."
# The SSH front's library, and socat for row 5's plain-relay reference (installed when missing).
bash scripts/ensure-libssh.sh >&2
if ! command -v socat >/dev/null 2>&1; then
    printf '\n==> %s\n' "installing socat (row 5's reference relay)" >&2
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq socat >&2
fi
swift build -c release --scratch-path .build-release --product ssmgate >&2
swift build -c release --scratch-path .build-release --product GatewayBenchmarks >&2
swift --version 2>/dev/null | head -1
exec .build-release/release/GatewayBenchmarks --ssmgate .build-release/release/ssmgate "$@"
