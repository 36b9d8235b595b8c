#!/usr/bin/env bash
# Runs one cargo-fuzz (libFuzzer) target for a bounded time on stable Rust.
#
#   scripts/fuzz.sh TARGET [SECONDS]      (SECONDS defaults to $FUZZ_SECONDS or 30)
#   scripts/fuzz.sh --list                (the targets, one per line)
#
# Environment:
#   FUZZ_SANITIZER  address (default) or none. AddressSanitizer needs the
#                   nightly-only flag -Zsanitizer=address, which stable rustc
#                   accepts under RUSTC_BOOTSTRAP=1 (set here, for cargo-fuzz
#                   only). With `none` no unstable flag is used at all.
#   FUZZ_SECONDS    default run time when SECONDS is not given.
#
# Corpus: fuzz/corpus/TARGET (grows, gitignored), plus the committed seeds in
# fuzz/seeds/TARGET if present. Crashes land in fuzz/artifacts/TARGET/.
# The full libFuzzer log is kept in fuzz/target/fuzz-logs/TARGET.log; the last
# line printed is libFuzzer's "Done N runs in S second(s)".
#
# Needs cargo-fuzz in ./.tools/bin (scripts/test.sh installs it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FUZZ_DIR="$ROOT/fuzz"
export PATH="$ROOT/.tools/bin:$PATH"

die() {
    echo "fuzz.sh: $*" >&2
    exit 1
}

usage() {
    echo "usage: scripts/fuzz.sh TARGET [SECONDS] | scripts/fuzz.sh --list" >&2
    exit 2
}

[[ $# -ge 1 && $# -le 2 ]] || usage
[[ -f "$FUZZ_DIR/Cargo.toml" ]] || die "no fuzz/Cargo.toml: there are no fuzz targets yet"
command -v cargo-fuzz >/dev/null ||
    die "cargo-fuzz not found in $ROOT/.tools/bin: run scripts/test.sh, or" \
        "cargo install --root .tools --locked cargo-fuzz"

cd "$ROOT"

# cargo-fuzz passes -Zsanitizer=... (nightly-only) for every sanitizer but
# `none`. RUSTC_BOOTSTRAP=1 makes stable rustc accept it. Set it always, so a
# run with and a run without it never share cargo's rustc probe cache.
export RUSTC_BOOTSTRAP=1

# Cargo caches rustc's answers in target/.rustc_info.json, including failed
# probes, and RUSTC_BOOTSTRAP is not part of the cache key: one `cargo fuzz`
# run without RUSTC_BOOTSTRAP=1 leaves "-Z is only accepted on the nightly
# compiler" cached, and every later run fails with it. Drop such a cache.
rustc_info="$FUZZ_DIR/target/.rustc_info.json"
if [[ -f "$rustc_info" ]] && grep -q 'only accepted on the nightly compiler' "$rustc_info"; then
    echo "fuzz.sh: dropping cargo's cached failed rustc probe ($rustc_info)" >&2
    rm -f "$rustc_info"
fi

if [[ "$1" == "--list" ]]; then
    cargo fuzz list
    exit 0
fi

target=$1
seconds=${2:-${FUZZ_SECONDS:-30}}
sanitizer=${FUZZ_SANITIZER:-address}
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || die "SECONDS must be a positive whole number, got '$seconds'"
# Read the whole list before matching: `grep -q` stops reading at the first
# match, and cargo-fuzz then fails on the closed pipe (which pipefail reports).
targets=$(cargo fuzz list)
grep -qxF -- "$target" <<<"$targets" ||
    die "no fuzz target '$target'; the targets are: $(tr '\n' ' ' <<<"$targets")"

corpus="$FUZZ_DIR/corpus/$target"
seeds="$FUZZ_DIR/seeds/$target"
logs="$FUZZ_DIR/target/fuzz-logs"
log="$logs/$target.log"
mkdir -p "$corpus" "$logs"
corpora=("$corpus")
[[ -d "$seeds" ]] && corpora+=("$seeds")

echo "==> fuzz $target: building (sanitizer: $sanitizer)"
cargo fuzz build --sanitizer "$sanitizer" "$target"

echo "==> fuzz $target: running for ${seconds}s (log: ${log#"$ROOT"/})"
status=0
cargo fuzz run --sanitizer "$sanitizer" "$target" "${corpora[@]}" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?

done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)
if [[ $status -ne 0 || -z "$done_line" ]]; then
    tail -n 60 "$log" >&2
    echo >&2
    die "fuzz target '$target' FAILED (exit $status); full log: $log;" \
        "crash inputs: fuzz/artifacts/$target/ (reproduce with" \
        "PATH=.tools/bin:\$PATH RUSTC_BOOTSTRAP=1 cargo fuzz run $target fuzz/artifacts/$target/<file>)"
fi
echo "$done_line"
