#!/usr/bin/env bash
# The one command that runs every corewire test on a fresh machine
# (root, Debian, Rust 1.95 via rustup, nothing else installed by hand):
#
#   scripts/test.sh
#
# 1. installs what the tests need, quickly when already installed:
#    Debian packages (APT_PACKAGES) and cargo tools into ./.tools (CARGO_TOOLS);
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

# Debian packages the tests need. Add to this list as tests grow. Installed
# without recommends: wireguard-tools would otherwise pull in a kernel image.
# The network-namespace tests (control/tests/netns/, run as root) use all of them.
APT_PACKAGES=(
    wireguard-tools # `wg` (keys.rs compares against it byte for byte) and `wg-quick`
    wireguard-go    # reference userspace peer; wg-quick's default userspace fallback
    iperf3          # throughput through the tunnel (`iperf3 -J`)
    iproute2        # `ip netns`, veth pairs, addresses, routes; `ss`
    iputils-ping    # `ping` over IPv4 and IPv6
)

# Cargo tools installed into ./.tools with `cargo install --locked`, as
# "crate version binary". Pinned so that every machine runs the same tool;
# "binary --version" must print the version (that is how an install is found).
# Build times on a 2-core machine: boringtun-cli ~50 s, gotatun-cli ~2 min 10 s.
CARGO_TOOLS=(
    "cargo-fuzz 0.13.2 cargo-fuzz"
    "boringtun-cli 0.7.1 boringtun-cli" # independent peer (Cloudflare); prints "boringtun 0.7.1"
    "gotatun-cli 0.10.2 gotatun"        # independent peer (Mullvad, boringtun fork)
)

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

step "Debian packages: ${APT_PACKAGES[*]}"
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! grep -q 'install ok installed' <<<"$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || die "missing Debian packages: ${missing[*]}; run as root," \
        "or install them with: sudo apt-get install --no-install-recommends ${missing[*]}"
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # No recommends: wireguard-tools would otherwise pull in a kernel image.
    apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}"
else
    echo "all installed"
fi

step "Cargo tools in .tools/bin"
for entry in "${CARGO_TOOLS[@]}"; do
    read -r crate version bin <<<"$entry"
    if [[ -x "$TOOLS/bin/$bin" ]] && grep -qwF "$version" <<<"$("$TOOLS/bin/$bin" --version 2>/dev/null)"; then
        echo "$crate $version: installed"
    else
        echo "$crate $version: installing (cargo builds it from source: minutes)"
        t=$(date +%s)
        cargo install --quiet --root "$TOOLS" --locked "$crate" --version "=$version"
        echo "$crate $version: installed in $(elapsed "$t")"
    fi
done

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
