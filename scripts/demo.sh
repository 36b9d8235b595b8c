#!/usr/bin/env bash
# corewire demo: a hub-and-spoke WireGuard network in network namespaces,
# brought up by the real `wg-quick` with corewire as the userspace
# implementation, measured, and torn down again.
#
#   scripts/demo.sh            # build, run, print the results, clean up
#   scripts/demo.sh --keep     # leave the network running (explore with
#                              #   ip netns exec cwdemo-hub wg show)
#   scripts/demo.sh --clean    # remove what --keep (or a killed run) left
#
# Needs root on Linux (Debian) with Rust from rustup; installs what it needs
# with apt when missing (scripts/install-deps.sh demo: clang-19, libbpf-dev
# and linux-libc-dev for the eBPF programs, wireguard-tools, iperf3,
# iproute2, iputils-ping). Everything lives in
# namespaces named cwdemo-*, interfaces cwdemo-*, sockets
# /var/run/wireguard/cwdemo-*.sock and configs in /run/cwdemo (all removed at
# the end; /run/cwdemo.lock, empty, keeps two runs apart); nothing is sent to
# any address outside those namespaces.
#
#                     "internet": bridge in cwdemo-inet, 203.0.113.0/24
#        +---------------+-----------------+-----------------+
#        | .1            | .2              | .3              | .4
#   +----+-------+  +----+-------+    +----+-------+    +----+-------+
#   | hub :51820 |  | router     |    | phone      |    | laptop     |
#   | 10.100.0.1 |  | 10.100.0.2 |    | 10.100.0.3 |    | 10.100.0.4 |
#   | fd42::1    |  | fd42::2    |    | fd42::3    |    | fd42::4    |
#   +------------+  +----+-------+    +------------+    +------------+
#                        | LAN 192.168.50.0/24 (router .1)
#                   +----+-------+
#                   | lanhost    |  no WireGuard, default via the router
#                   | .50.10     |
#                   +------------+
#
# Spokes: Endpoint = hub, PersistentKeepalive = 25. The hub has no endpoints
# for its peers (it learns them from handshakes) and forwards spoke-to-spoke
# traffic back into the tunnel; its peer "router" also owns 192.168.50.0/24.
#
# Exit status: 0 when every path passed, 1 otherwise (or on any error).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=cwdemo
WORK=/run/$PREFIX
LOCK=/run/$PREFIX.lock
NODES=(hub router phone laptop)    # the WireGuard nodes, in bring-up order
NAMESPACES=(inet hub router phone laptop lanhost)
HUB_PORT=51820
PING_COUNT=10
IPERF_SECONDS=5
IPERF_PORT=5201

KEEP=0
CLEAN_ONLY=0
for arg in "$@"; do
    case $arg in
    --keep) KEEP=1 ;;
    --clean) CLEAN_ONLY=1 ;;
    -h | --help)
        sed -n '2,/^set -E/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "demo.sh: unknown argument $arg (try --help)" >&2
        exit 2
        ;;
    esac
done

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
    echo "demo.sh: $*" >&2
    exit 1
}
ns() { echo "$PREFIX-$1"; }        # namespace of a node
ifname() { echo "$PREFIX-$1"; }    # its WireGuard interface (names are global: sockets)
in_ns() {                          # in_ns NODE CMD...
    local node=$1
    shift
    ip netns exec "$(ns "$node")" "$@"
}

# Alive and not a zombie (daemons are reparented to PID 1, which may not reap).
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != [ZX] ]]
}

# Stops PIDs: SIGTERM, up to 3 s, then SIGKILL.
stop_pids() {
    local pid i
    (($#)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        for pid in "$@"; do alive "$pid" && break; done
        alive "$pid" || return 0
        sleep 0.1
    done
    kill -KILL "$@" 2>/dev/null || true
}

# The PID of the daemon serving an interface: the process in the node's
# namespace whose arguments name the interface.
daemon_pid() {
    local node=$1 pid
    for pid in $(ip netns pids "$(ns "$node")" 2>/dev/null); do
        if alive "$pid" && tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | tail -n +2 |
            grep -qx "$(ifname "$node")"; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

# Removes every trace of a run: interfaces (wg-quick down, when a config is
# there), processes left in our namespaces, the namespaces, stale sockets and
# the work directory. Never fails; bounded.
teardown() {
    local node name pids sock
    for node in "${NODES[@]}"; do
        if [[ -f $WORK/$(ifname "$node").conf ]] && ip -n "$(ns "$node")" link show "$(ifname "$node")" &>/dev/null; then
            timeout 20 ip netns exec "$(ns "$node")" wg-quick down "$WORK/$(ifname "$node").conf" \
                >>"$WORK/wg-quick.log" 2>&1 || true
        fi
    done
    for name in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX-" || true); do
        pids=$(ip netns pids "$name" 2>/dev/null || true)
        # shellcheck disable=SC2086 # word splitting wanted: a PID list
        stop_pids $pids
        ip netns del "$name" 2>/dev/null || true
    done
    for sock in /var/run/wireguard/"$PREFIX"-*.sock; do
        [[ -e $sock ]] || continue
        # `wg` removes a socket that refuses connections (its daemon is gone).
        wg show "$(basename "$sock" .sock)" &>/dev/null || true
    done
    rm -rf "$WORK"
}

leftovers() {
    {
        ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX-" || true
        ls -d /var/run/wireguard/"$PREFIX"-*.sock 2>/dev/null || true
        [[ ! -e $WORK ]] || echo "$WORK"
    } | tr '\n' ' '
}

[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, TUN devices, apt)"
# One demo at a time: the names are fixed.
exec 9>"$LOCK"
flock -n 9 || die "another demo.sh is running (lock $LOCK)"

if ((CLEAN_ONLY)); then
    step "Removing what a previous run left"
    teardown
    left=$(leftovers)
    [[ -z $left ]] || die "could not remove: $left"
    info "clean"
    exit 0
fi

# --- 1. Dependencies and build ----------------------------------------------

step "Dependencies (scripts/install-deps.sh demo)"
"$ROOT/scripts/install-deps.sh" demo | sed 's/^/  /'

step "Building corewire (release)"
[[ -d $HOME/.cargo/bin ]] && export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"
(cd "$ROOT" && cargo build --release -p corewire)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/corewire
[[ -x $BIN ]] || die "no binary at $BIN after the build"
info "$BIN"

# --- 2. Network -------------------------------------------------------------

step "Checking for leftovers of a previous run"
left=$(leftovers)
if [[ -n $left ]]; then
    info "removing: $left"
    teardown
    left=$(leftovers)
    [[ -z $left ]] || die "leftovers from a previous run that could not be removed: $left"
fi
info "none"

FAILED=0
finish() {
    local status=$?
    trap '' INT TERM
    if ((KEEP)) && ((status == 0)); then
        step "Left running (--keep); remove with: scripts/demo.sh --clean"
        info "try: ip netns exec $(ns hub) wg show"
        exit 0
    fi
    step "Tearing down"
    teardown
    left=$(leftovers)
    if [[ -n $left ]]; then
        echo "demo.sh: could not remove: $left" >&2
        status=1
    else
        info "no namespace, interface, process, socket or file left"
    fi
    case $status in
    0) ;;
    130 | 143) echo "demo.sh: interrupted; cleaned up" >&2 ;;
    *) echo "demo.sh: FAILED (exit $status)" >&2 ;;
    esac
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'echo "demo.sh: command failed (line $LINENO): $BASH_COMMAND" >&2; [[ ! -s $WORK/wg-quick.log ]] || tail -n 20 "$WORK/wg-quick.log" >&2' ERR

mkdir -m 700 "$WORK"

step "Namespaces and links"
for n in "${NAMESPACES[@]}"; do
    ip netns add "$(ns "$n")"
    ip -n "$(ns "$n")" link set lo up
done
# The "internet": a bridge with one veth per WireGuard node. Links are created
# directly inside the namespaces, so no name is ever used in the host's.
ip -n "$(ns inet)" link add br0 type bridge
ip -n "$(ns inet)" link set br0 up
host=1
for node in "${NODES[@]}"; do
    ip link add wan netns "$(ns "$node")" type veth peer name "$node" netns "$(ns inet)"
    ip -n "$(ns inet)" link set "$node" master br0 up
    ip -n "$(ns "$node")" addr add "203.0.113.$host/24" dev wan
    ip -n "$(ns "$node")" link set wan up
    host=$((host + 1))
done
# The router's LAN.
ip link add lan netns "$(ns router)" type veth peer name eth0 netns "$(ns lanhost)"
ip -n "$(ns router)" addr add 192.168.50.1/24 dev lan
ip -n "$(ns router)" link set lan up
ip -n "$(ns lanhost)" addr add 192.168.50.10/24 dev eth0
ip -n "$(ns lanhost)" link set eth0 up
ip -n "$(ns lanhost)" route add default via 192.168.50.1
# Forwarding: the hub between its peers, the router between tunnel and LAN.
in_ns hub sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward; echo 1 >/proc/sys/net/ipv6/conf/all/forwarding'
in_ns router sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward'
info "namespaces: ${NAMESPACES[*]/#/$PREFIX-}"

step "Keys (corewire genkey / pubkey) and wg-quick configs in $WORK"
declare -A PRIV PUB
for node in "${NODES[@]}"; do
    PRIV[$node]=$("$BIN" genkey)
    PUB[$node]=$("$BIN" pubkey <<<"${PRIV[$node]}")
done

# The default configuration, as an operator would write it.
umask 077
cat >"$WORK/$(ifname hub).conf" <<EOF
[Interface]
PrivateKey = ${PRIV[hub]}
ListenPort = $HUB_PORT
Address = 10.100.0.1/24, fd42::1/64

# router, with its LAN behind it
[Peer]
PublicKey = ${PUB[router]}
AllowedIPs = 10.100.0.2/32, fd42::2/128, 192.168.50.0/24

# phone
[Peer]
PublicKey = ${PUB[phone]}
AllowedIPs = 10.100.0.3/32, fd42::3/128

# laptop
[Peer]
PublicKey = ${PUB[laptop]}
AllowedIPs = 10.100.0.4/32, fd42::4/128
EOF
spoke_conf() { # NODE HOST ALLOWED_IPS
    cat >"$WORK/$(ifname "$1").conf" <<EOF
[Interface]
PrivateKey = ${PRIV[$1]}
Address = 10.100.0.$2/24, fd42::$2/64

[Peer]
PublicKey = ${PUB[hub]}
Endpoint = 203.0.113.1:$HUB_PORT
AllowedIPs = $3
PersistentKeepalive = 25
EOF
}
spoke_conf router 2 "10.100.0.0/24, fd42::/64"
spoke_conf phone 3 "10.100.0.0/24, fd42::/64, 192.168.50.0/24"
spoke_conf laptop 4 "10.100.0.0/24, fd42::/64, 192.168.50.0/24"
umask 022
for node in "${NODES[@]}"; do info "$node: ${PUB[$node]}"; done

step "wg-quick up (WG_QUICK_USERSPACE_IMPLEMENTATION=$BIN)"
declare -A PID
for node in "${NODES[@]}"; do
    if ! WG_QUICK_USERSPACE_IMPLEMENTATION=$BIN timeout 30 \
        ip netns exec "$(ns "$node")" wg-quick up "$WORK/$(ifname "$node").conf" \
        >>"$WORK/wg-quick.log" 2>&1 9>&-; then
        tail -n 20 "$WORK/wg-quick.log" >&2
        die "wg-quick up failed for $node"
    fi
    if ! PID[$node]=$(daemon_pid "$node"); then
        grep -qw wireguard <<<"$(ip -d -n "$(ns "$node")" link show "$(ifname "$node")")" &&
            die "$node: wg-quick used the kernel's WireGuard module, not corewire (unload it: modprobe -r wireguard)"
        die "$node: no corewire process serves $(ifname "$node")"
    fi
    info "$node: $(ifname "$node") up, corewire pid ${PID[$node]}"
done

step "Waiting for the spokes' handshakes with the hub (persistent keepalive)"
for ((i = 0; i < 100; i++)); do
    done_=$(in_ns hub wg show "$(ifname hub)" latest-handshakes | awk '$2 != 0' | wc -l)
    ((done_ == 3)) && break
    sleep 0.1
done
((done_ == 3)) || {
    in_ns hub wg show "$(ifname hub)" >&2
    die "only $done_ of 3 spokes reached the hub within 10 s"
}
info "all 3 spokes connected"

step "wg show (hub)"
in_ns hub wg show "$(ifname hub)" | sed 's/^/    /'

# --- 3. Measurements --------------------------------------------------------

ROWS=()
# measure LABEL FROM TARGET IPERF(yes|no)
measure() {
    local label=$1 from=$2 target=$3 iperf=$4 out loss rtt gbps="-" status=ok server
    info "$label: ping $target from $from"
    out=$(in_ns "$from" ping -n -q -c "$PING_COUNT" -i 0.2 -W 1 -w 10 "$target" 2>&1 || true)
    loss=$(sed -nE 's/.* ([0-9.]+)% packet loss.*/\1%/p' <<<"$out")
    rtt=$(sed -nE 's|^rtt [^=]*= [0-9.]+/([0-9.]+)/.*|\1 ms|p' <<<"$out")
    [[ $loss == 0% ]] || status=FAIL
    if [[ $iperf == yes ]]; then
        info "$label: iperf3 -t $IPERF_SECONDS to $target from $from"
        local to
        to=$(awk -v t="$target" '$1 == t {print $2}' <<<"$ADDR_NODES")
        # `ip netns exec` execs iperf3, so $! is iperf3's PID.
        ip netns exec "$(ns "$to")" iperf3 -s -1 -B "$target" -p "$IPERF_PORT" \
            >"$WORK/iperf3-server.log" 2>&1 9>&- &
        server=$!
        for ((i = 0; i < 50; i++)); do
            [[ -n $(in_ns "$to" ss -Hltn "sport = :$IPERF_PORT") ]] && break
            sleep 0.1
        done
        out=$(timeout $((IPERF_SECONDS + 20)) ip netns exec "$(ns "$from")" \
            iperf3 -c "$target" -p "$IPERF_PORT" -t "$IPERF_SECONDS" -f g --connect-timeout 3000 2>&1 || true)
        gbps=$(awk '/receiver/ {print $(NF-2)}' <<<"$out")
        if [[ -z $gbps ]]; then
            gbps=error
            status=FAIL
            info "iperf3: $(tail -n 3 <<<"$out" | tr '\n' ' ')"
        fi
        for ((i = 0; i < 50; i++)); do alive "$server" || break; sleep 0.1; done
        stop_pids "$server"
        wait "$server" 2>/dev/null || true
    fi
    [[ $status == ok ]] || FAILED=1
    ROWS+=("$(printf '%-36s %-15s %10s %6s %9s  %s' "$label" "$target" "${rtt:--}" "${loss:-100%}" "$gbps" "$status")")
}
# Which node holds an address (the iperf3 server's namespace).
ADDR_NODES="192.168.50.10 lanhost
10.100.0.4 laptop
10.100.0.2 router"

step "Pings ($PING_COUNT each) and iperf3 (TCP, ${IPERF_SECONDS} s)"
measure "phone -> hub -> router (tunnel)" phone 10.100.0.2 no
measure "phone -> hub -> router -> lanhost" phone 192.168.50.10 yes
measure "lanhost -> router -> hub -> laptop" lanhost 10.100.0.4 yes
measure "phone -> hub -> laptop (IPv6)" phone fd42::4 no

step "Results"
printf '    %-36s %-15s %10s %6s %9s  %s\n' "path" "target" "ping avg" "loss" "Gbit/s" "status"
for row in "${ROWS[@]}"; do echo "    $row"; done

step "Handshakes and transfer on the hub"
in_ns hub wg show "$(ifname hub)" dump | tail -n +2 | while read -r pub _ endpoint _ hs rx tx _; do
    for node in router phone laptop; do
        [[ ${PUB[$node]} == "$pub" ]] || continue
        printf '    %-7s endpoint %-20s handshake %3ss ago  rx %s B  tx %s B\n' \
            "$node" "$endpoint" "$(($(date +%s) - hs))" "$rx" "$tx"
    done
done

if ((!KEEP)); then
    step "wg-quick down"
    for node in "${NODES[@]}"; do
        timeout 20 ip netns exec "$(ns "$node")" wg-quick down "$WORK/$(ifname "$node").conf" \
            >>"$WORK/wg-quick.log" 2>&1 || die "wg-quick down failed for $node"
        for ((i = 0; i < 50; i++)); do alive "${PID[$node]}" || break; sleep 0.1; done
        if alive "${PID[$node]}"; then
            FAILED=1
            info "$node: corewire pid ${PID[$node]} outlived wg-quick down (stopping it)"
            stop_pids "${PID[$node]}"
        elif [[ -e /var/run/wireguard/$(ifname "$node").sock ]]; then
            FAILED=1
            info "$node: socket left behind"
        else
            info "$node: down; corewire exited, socket removed"
        fi
    done
fi

if ((FAILED)); then
    echo "demo.sh: some paths FAILED (see the table above)" >&2
    exit 1
fi
step "All paths passed"
