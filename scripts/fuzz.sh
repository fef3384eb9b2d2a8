#!/usr/bin/env bash
# Builds the libFuzzer target for the wire decoders (AgentMessage, smux, JSON payloads) with
# AddressSanitizer and runs it for a bounded time. Usage: scripts/fuzz.sh [SECONDS]  (default 60)
# A crash or a failed property check exits non-zero and leaves the input in fuzz-artifacts/;
# replay it with `swift run SSMProtocolFuzz fuzz-artifacts/crash-…`.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
scratch=.build-fuzz
work="$scratch/corpus"
mkdir -p "$work" fuzz-artifacts
cp -n Fuzz/corpus/* "$work"/ 2>/dev/null || true

echo "building SSMProtocolFuzz with -sanitize=fuzzer,address (first build takes several minutes)"
swift build -c release --product SSMProtocolFuzz --scratch-path "$scratch" \
    --sanitize fuzzer --sanitize address -Xswiftc -DFUZZING

# SWIFT_BACKTRACE off: Swift's backtracer confuses ASan's report of a real crash.
log="$scratch/fuzz.log"
set +e
SWIFT_BACKTRACE=enable=no "$scratch/release/SSMProtocolFuzz" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=70000 \
    -artifact_prefix=fuzz-artifacts/ -print_final_stats=1 \
    "$work" >"$log" 2>&1
status=$?
set -e
if [ "$status" -ne 0 ]; then
    tail -n 60 "$log" >&2
    echo "fuzzer failed (exit $status); the input is in fuzz-artifacts/:" >&2
    ls -l fuzz-artifacts/ >&2 || true
    exit 1
fi
grep -E '^stat::(number_of_executed_units|peak_rss_mb)|^#[0-9]+ +DONE' "$log" || true
echo "fuzzing: no crash or failed check in ${seconds} s"
