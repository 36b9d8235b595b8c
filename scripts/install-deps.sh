#!/usr/bin/env bash
# Installs what corewire needs on a fresh Debian machine (root, Rust 1.95
# from rustup), quickly when everything is already there:
#
#   scripts/install-deps.sh build   # to build: clang and headers for the eBPF programs
#   scripts/install-deps.sh demo    # build + what scripts/demo.sh runs
#   scripts/install-deps.sh tests   # build + what the tests run (apt and ./.tools)
#
# .ci/run calls it with `build` before fmt/clippy (the ebpf crate's build.rs
# runs clang), scripts/test.sh with `tests`, scripts/demo.sh with `demo`.
# Debian packages are installed without recommends (wireguard-tools would
# otherwise pull in a kernel image); cargo tools go into ./.tools with
# `cargo install --locked`, pinned.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# The eBPF programs (ebpf/build.rs): clang-19 -target bpf, libbpf's
# bpf_helpers.h, the kernel's uapi headers (linux/bpf.h, asm/types.h).
BUILD_APT=(clang-19 libbpf-dev linux-libc-dev)
# scripts/demo.sh.
DEMO_APT=(wireguard-tools iperf3 iproute2 iputils-ping)
# The tests. The network-namespace tests (control/tests/netns/, run as
# root) use all of them.
TEST_APT=(
    wireguard-tools # `wg` (keys.rs compares against it byte for byte) and `wg-quick`
    wireguard-go    # reference userspace peer; wg-quick's default userspace fallback
    iperf3          # throughput through the tunnel (`iperf3 -J`)
    iproute2        # `ip netns`, veth pairs, addresses, routes; `ss`
    iputils-ping    # `ping` over IPv4 and IPv6
    python3-prometheus-client # a real Prometheus text parser for the metrics endpoint (control/tests/metrics.rs)
)
# Cargo tools for the tests, as "crate version binary"; "binary --version"
# must print the version (that is how an install is found). Build times on
# a 2-core machine: boringtun-cli ~50 s, gotatun-cli ~2 min 10 s.
CARGO_TOOLS=(
    "cargo-fuzz 0.13.2 cargo-fuzz"
    "boringtun-cli 0.7.1 boringtun-cli" # independent peer (Cloudflare); prints "boringtun 0.7.1"
    "gotatun-cli 0.10.2 gotatun"        # independent peer (Mullvad, boringtun fork)
)
TOOLS="$ROOT/.tools"

die() {
    echo "install-deps.sh: $*" >&2
    exit 1
}

what=${1:-build}
case $what in
build) apt=("${BUILD_APT[@]}") tools=() ;;
demo) apt=("${BUILD_APT[@]}" "${DEMO_APT[@]}") tools=() ;;
tests) apt=("${BUILD_APT[@]}" "${TEST_APT[@]}") tools=("${CARGO_TOOLS[@]}") ;;
*) die "usage: $0 [build|demo|tests]" ;;
esac

echo "Debian packages: ${apt[*]}"
missing=()
for pkg in "${apt[@]}"; do
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
    apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}" >/dev/null
fi
echo "all installed"

((${#tools[@]})) || exit 0
echo "Cargo tools in .tools/bin"
for entry in "${tools[@]}"; do
    read -r crate version bin <<<"$entry"
    if [[ -x "$TOOLS/bin/$bin" ]] && grep -qwF "$version" <<<"$("$TOOLS/bin/$bin" --version 2>/dev/null)"; then
        echo "$crate $version: installed"
    else
        echo "$crate $version: installing (cargo builds it from source: minutes)"
        t=$(date +%s)
        cargo install --quiet --root "$TOOLS" --locked "$crate" --version "=$version"
        echo "$crate $version: installed in $(($(date +%s) - t))s"
    fi
done
