#!/usr/bin/env bash
# Single-stream session throughput (README "Session throughput"): builds SessionBenchmarks in
# release into .build-release and runs it. Arguments go to the benchmark (`--help` lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product SessionBenchmarks --scratch-path .build-release >&2
swift --version 2>/dev/null | head -1
exec .build-release/release/SessionBenchmarks "$@"
