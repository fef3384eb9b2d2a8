#!/usr/bin/env bash
# Gateway benchmarks (BENCHMARKS.md "Gateway"): builds GatewayBenchmarks and ssmgate (the emulator
# runs as `ssmgate local` in its own process) in release into .build-release, prints the toolchain and
# the table. Arguments go to the benchmark: --quick for a smoke run, --limits aws|unlimited, `--help`.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --scratch-path .build-release --product ssmgate >&2
swift build -c release --scratch-path .build-release --product GatewayBenchmarks >&2
swift --version 2>/dev/null | head -1
exec .build-release/release/GatewayBenchmarks --ssmgate .build-release/release/ssmgate "$@"
