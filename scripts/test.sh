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
# 3. runs every fuzz target (`cargo fuzz list`) for FUZZ_SECONDS (default 30)
#    each, through scripts/fuzz.sh;
# 4. prints a summary, and exits 1 if any test or fuzz target failed (a
#    failing stage does not stop the later ones, so one run reports all).
#
# Environment: FUZZ_SECONDS (0 skips fuzzing), FUZZ_SANITIZER (see scripts/fuzz.sh).
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

# --- 3. Fuzzing ------------------------------------------------------------

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

# --- 4. Summary ------------------------------------------------------------

step "Summary"
for line in "${summary[@]}"; do
    echo "  $line"
done
if ((failed)); then
    echo "  FAILED after $(elapsed "$started")"
    exit 1
fi
echo "  all passed in $(elapsed "$started")"
