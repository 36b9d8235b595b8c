#!/usr/bin/env bash
# The one command that runs every corewire test on a fresh machine
# (root, Debian, Rust 1.95 via rustup, nothing else installed by hand):
#
#   scripts/test.sh
#
# 1. installs what the build and the tests need, quickly when already
#    installed (scripts/install-deps.sh tests: Debian packages, and cargo
#    tools into ./.tools);
# 2. cargo test --workspace, then the in-memory device tests again as an
#    unprivileged user (they must need no root);
# 3. runs the concentrator benchmark in its quick mode (debug build, about
#    3 minutes) as a smoke test of its harness: it must finish with a number
#    for every hub, peer count and case (no speed is asserted);
# 4. runs every fuzz target (`cargo fuzz list`) for FUZZ_SECONDS (default 30)
#    each, through scripts/fuzz.sh;
# 5. prints a summary, and exits 1 if any test or fuzz target failed (a
#    failing stage does not stop the later ones, so one run reports all).
#
# Environment: FUZZ_SECONDS (0 skips fuzzing), FUZZ_SANITIZER (see scripts/fuzz.sh),
# CONCENTRATOR_SMOKE=0 skips the benchmark smoke test.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

FUZZ_SECONDS=${FUZZ_SECONDS:-30}
TOOLS="$ROOT/.tools"
export PATH="$TOOLS/bin:$PATH"

started=$(date +%s)
summary=()
failed=0

step() { printf '\n==> %s\n' "$*"; }
note() { summary+=("$*"); }
die() {
    echo "test.sh: $*" >&2
    exit 1
}
elapsed() { echo "$(($(date +%s) - $1))s"; }

# --- 1. Dependencies -------------------------------------------------------

step "Dependencies (scripts/install-deps.sh tests)"
scripts/install-deps.sh tests

echo "toolchain: $(rustc --version)"

# --- 2. Tests --------------------------------------------------------------

step "cargo test --workspace"
t=$(date +%s)
if cargo test --workspace --no-fail-fast; then
    note "cargo test --workspace: passed ($(elapsed "$t"))"
else
    note "cargo test --workspace: FAILED ($(elapsed "$t")); see the output above"
    failed=1
fi

# The in-memory device tests need no privilege: prove it by running them
# again as nobody (the UAPI-configured devices in control's unit tests).
step "In-memory device tests as an unprivileged user (uid 65534)"
t=$(date +%s)
unprivileged() {
    local bin
    bin=$(cargo test -p corewire --lib --no-run --message-format=json 2>/dev/null |
        sed -nE 's/.*"executable":"([^"]+)".*/\1/p' | tail -n 1)
    [[ -n "$bin" ]] || { echo "no test binary found" >&2; return 1; }
    if [[ $(id -u) -ne 0 ]]; then
        "$bin" tests_memnet
        return
    fi
    # A copy in a directory nobody can reach: the checkout may sit under a
    # home directory that uid 65534 cannot enter.
    local dir status=0
    dir=$(mktemp -d)
    chmod 755 "$dir"
    install -m 755 "$bin" "$dir/memnet-tests"
    (cd "$dir" && setpriv --reuid=65534 --regid=65534 --clear-groups -- ./memnet-tests tests_memnet) || status=$?
    rm -rf "$dir"
    return "$status"
}
if unprivileged; then
    note "in-memory devices as uid 65534: passed ($(elapsed "$t"))"
else
    note "in-memory devices as uid 65534: FAILED ($(elapsed "$t")); see the output above"
    failed=1
fi

# --- 3. Benchmark harness smoke test ---------------------------------------

# The concentrator's quick mode: every hub, K in {1, 100, 1000}, short
# phases. It exits non-zero when a measurement failed; here we also check
# that the report has every case and numbers in it. Never a speed.
step "Concentrator benchmark, quick mode (smoke test of the harness)"
t=$(date +%s)
smoke_dir=$(mktemp -d)
concentrator_smoke() {
    cargo build --quiet -p corewire -p corewire-bench --bin concentrator || return 1
    local target=${CARGO_TARGET_DIR:-target}
    "$target/debug/concentrator" --quick --corewire "$target/debug/corewire" --out "$smoke_dir" \
        >"$smoke_dir/stdout.md" || return 1
    local case
    for case in handshake handshake-flood decrypt-64 decrypt-1392 encrypt-64 encrypt-1392 \
        latency-50 latency-90 memory; do
        grep -q "^## $case\$" "$smoke_dir/results.md" || { echo "no $case table" >&2; return 1; }
    done
    grep -Eq '"median": [0-9]' "$smoke_dir/results.json" || { echo "no numbers" >&2; return 1; }
    [[ -s "$smoke_dir/results.svg" ]] || { echo "no chart" >&2; return 1; }
}
if [[ "${CONCENTRATOR_SMOKE:-1}" == 0 ]]; then
    echo "skipped: CONCENTRATOR_SMOKE=0"
    note "concentrator quick mode: skipped (CONCENTRATOR_SMOKE=0)"
elif [[ $(id -u) -ne 0 ]]; then
    echo "skipped: needs root (network namespaces)"
    note "concentrator quick mode: skipped (not root)"
elif concentrator_smoke; then
    note "concentrator quick mode: produced every table ($(elapsed "$t"))"
else
    note "concentrator quick mode: FAILED ($(elapsed "$t")); report in $smoke_dir"
    failed=1
fi

# --- 4. Fuzzing ------------------------------------------------------------

step "Fuzz targets, ${FUZZ_SECONDS}s each"
if [[ "$FUZZ_SECONDS" == 0 ]]; then
    echo "skipped: FUZZ_SECONDS=0"
    note "fuzz: skipped (FUZZ_SECONDS=0)"
elif [[ ! -f fuzz/Cargo.toml ]]; then
    echo "skipped: no fuzz/Cargo.toml, so no fuzz targets yet"
    note "fuzz: skipped (no fuzz targets yet)"
else
    mapfile -t targets < <(scripts/fuzz.sh --list)
    if ((${#targets[@]} == 0)); then
        echo "skipped: \`cargo fuzz list\` shows no fuzz targets yet"
        note "fuzz: skipped (no fuzz targets yet)"
    fi
    for target in "${targets[@]}"; do
        t=$(date +%s)
        # fuzz.sh prints its progress, and on failure the end of the log.
        if scripts/fuzz.sh "$target" "$FUZZ_SECONDS"; then
            runs=$(sed -nE 's/^Done ([0-9]+) runs in ([0-9]+) second.*/\1 runs in \2 s/p' \
                "fuzz/target/fuzz-logs/$target.log" | tail -n 1)
            note "fuzz $target: no crash, ${runs:-?} (${FUZZ_SANITIZER:-address} sanitizer; $(elapsed "$t") with build)"
        else
            note "fuzz $target: FAILED; see fuzz/target/fuzz-logs/$target.log and fuzz/artifacts/$target/"
            failed=1
        fi
    done
fi

# --- 5. Summary ------------------------------------------------------------

step "Summary"
for line in "${summary[@]}"; do
    echo "  $line"
done
if ((failed)); then
    echo "  FAILED after $(elapsed "$started")"
    exit 1
fi
echo "  all passed in $(elapsed "$started")"
