#!/usr/bin/env bash
# Runs every cargo-fuzz target of shared/fuzz for a bounded time (part of the test command,
# scripts/test.sh, when a nightly toolchain is available):
#
#   scripts/fuzz.sh                      # each target for FUZZ_SECONDS (default 30)
#   FUZZ_SECONDS=300 scripts/fuzz.sh rtmp_chunks
#
# Needs a nightly toolchain (libFuzzer and AddressSanitizer); installs cargo-fuzz with
# `cargo install --locked` when it is missing. Each target starts from its seed corpus
# (shared/fuzz/corpus/TARGET, kept in the repository, read only) and writes what it finds to a
# temporary directory. A crash, a leak or a timeout fails the run: the input is kept under
# ${CARGO_TARGET_DIR:-target}/fuzz-artifacts/TARGET/ and its path printed.
# Without nightly it prints "SKIPPED fuzzing: ..." and exits 0 (the issue asks for fuzzing "when
# a nightly toolchain is available").
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SECS="${FUZZ_SECONDS:-30}"
TARGETS=("$@")
if ((${#TARGETS[@]} == 0)); then
    TARGETS=(flv_demux cmcd probe_decode telemetry_frames rtmp_chunks)
fi

log() { printf '==> %s\n' "$*" >&2; }

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    log "SKIPPED fuzzing: no nightly toolchain (rustup toolchain install nightly)"
    exit 0
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz >&2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$ROOT/shared/fuzz"
log "building the fuzz targets (nightly, AddressSanitizer)"
cargo +nightly fuzz build --target-dir "$TARGET_DIR/fuzz" >&2
for t in "${TARGETS[@]}"; do
    artifacts="$TARGET_DIR/fuzz-artifacts/$t"
    mkdir -p "$work/$t" "$artifacts" "corpus/$t"
    log "fuzzing $t for ${SECS} s"
    if ! cargo +nightly fuzz run --target-dir "$TARGET_DIR/fuzz" "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$SECS" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 2>"$work/$t.log"; then
        tail -n 40 "$work/$t.log" >&2
        log "fuzz target $t failed; the input is in $artifacts/"
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^Done [0-9]+ runs' "$work/$t.log" | tail -n 1 >&2 || true
done
log "fuzzing: ${#TARGETS[@]} targets, ${SECS} s each, no crash"
