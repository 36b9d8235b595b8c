#!/usr/bin/env bash
# peer-scale.sh: how corewire copes with many peers, next to wireguard-go,
# gotatun and boringtun. Run by hand as root (not in CI); results and how to
# read them: docs/peer-scale.md.
#
# For each implementation and each size N, in a fresh network namespace with
# a fresh daemon (foreground, started by this script, stopped by PID):
#   - writes one conf file: [Interface] PrivateKey, then N [Peer]s with a
#     random public key (any 32 random bytes) and one /32 each;
#   - times ONE `wg addconf` (wall clock), and the CPU time the daemon used
#     for it (all its threads; on a busy machine the wall clock is noisy);
#   - reads the daemon's VmRSS before and 2 s after (and LazyFree: pages the
#     allocator gave back with MADV_FREE, still counted in RSS until the
#     kernel needs them); KiB per peer = (RSS after - RSS before) / peers;
#   - times `wg show IF dump > /dev/null`, and a raw `get=1` over the UAPI
#     socket (daemon side: request out to last reply byte in);
#   - times removing peers: 5 with `wg set IF peer K remove` (median; mostly
#     the cost of starting wg), then 100 with raw UAPI `set`s, each timed
#     alone (daemon side: median and max);
#   - checks how many peers the daemon lists before and after.
# Then prints a Markdown table.
#
# `wg` runs outside the namespaces: the UAPI sockets are in the one
# /var/run/wireguard every namespace shares, and `wg` uses a socket when it
# finds one, so `ip netns exec` (a few ms per call) stays out of the timings.
# Nothing leaves the namespaces: the peers have no endpoints, and each
# namespace has only `lo`.
#
# Usage: sudo scripts/peer-scale.sh
# Environment:
#   REPEAT          measure each (implementation, size) this many times (1)
#   SIZES           corewire sizes (default "10000 100000 1000000")
#   OTHER_SIZES     sizes for the others (default "10000 100000")
#   IMPLS           default "corewire wireguard-go gotatun boringtun"
#   THREADS         corewire --threads N (default: corewire's own choice)
#   ALLOWED_IPS     allowed IPs per peer, 1 or 0 (default 1)
#   STEP_TIMEOUT    seconds one wg command may take (default 600)
#   COREWIRE        a corewire binary to use instead of building one
#   NO_BUILD=1      use target/release/corewire as it is
set -euo pipefail

SIZES=${SIZES:-"10000 100000 1000000"}
OTHER_SIZES=${OTHER_SIZES:-"10000 100000"}
IMPLS=${IMPLS:-"corewire wireguard-go gotatun boringtun"}
THREADS=${THREADS:-}
ALLOWED_IPS=${ALLOWED_IPS:-1}
STEP_TIMEOUT=${STEP_TIMEOUT:-600}
REPEAT=${REPEAT:-1}

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools/bin"

if [[ $(id -u) -ne 0 ]]; then
    echo "peer-scale.sh: needs root (network namespaces, TUN devices)" >&2
    exit 1
fi
for tool in wg ip rustc timeout; do
    command -v "$tool" >/dev/null || { echo "peer-scale.sh: $tool not found" >&2; exit 1; }
done

work=$(mktemp -d /tmp/peer-scale.XXXXXX)
# Everything this run starts, so that cleanup stops exactly that.
pids=()
namespaces=()
sockets=()

stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid ns sock
    for pid in "${pids[@]}"; do stop_pid "$pid"; done
    for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    # gotatun leaves its socket behind on SIGTERM.
    for sock in "${sockets[@]}"; do rm -f "$sock"; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- A small helper: conf generation and a timing UAPI client ---------------
cat >"$work/helper.rs" <<'EOF'
// peer-scale helper.
//   gen N ALLOWED FILE: appends N [Peer] sections (random keys, one /32 each
//     if ALLOWED is 1) to FILE; prints the keys of the 105 peers from N/2 on.
//   get IFNAME: times a raw get=1; prints "us bytes peers".
//   remove IFNAME: removes each key read from stdin with its own raw set,
//     timed alone; prints "median_us max_us failures".
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(key: &[u8]) -> String {
    let mut out = String::with_capacity(44);
    for c in key.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hex_of_b64(s: &str) -> String {
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = String::new();
    for c in s.bytes().take_while(|&c| c != b'=') {
        let v = B64.iter().position(|&x| x == c).expect("base64") as u32;
        bits = (bits << 6) | v;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push_str(&format!("{:02x}", (bits >> nbits) & 0xff));
        }
    }
    assert_eq!(out.len(), 64, "a 32-byte key");
    out
}

fn connect(ifname: &str) -> UnixStream {
    let s = UnixStream::connect(format!("/var/run/wireguard/{ifname}.sock")).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(900))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(900))).unwrap();
    s
}

/// Sends `req`, reads one reply (up to its empty line); (microseconds,
/// bytes, peers, last line before the empty one).
fn exchange(ifname: &str, req: &[u8]) -> (u128, usize, usize, String) {
    let mut s = connect(ifname);
    let start = Instant::now();
    s.write_all(req).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let (mut total, mut peers) = (0usize, 0usize);
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before the reply ended");
        total += n;
        tail.extend_from_slice(&buf[..n]);
        peers += tail.windows(11).filter(|w| w == b"public_key=").count();
        if tail.ends_with(b"\n\n") {
            break;
        }
        // Keep a little context for keys cut between two reads.
        let keep = tail.len().min(10);
        tail.drain(..tail.len() - keep);
    }
    let us = start.elapsed().as_micros();
    let text = String::from_utf8_lossy(&tail).into_owned();
    let last = text.trim_end().lines().last().unwrap_or("").to_owned();
    (us, total, peers, last)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("gen") => {
            let n: usize = args[2].parse().unwrap();
            let allowed = args[3] == "1";
            assert!(n < 1 << 24);
            let mut rnd = std::fs::File::open("/dev/urandom").unwrap();
            let file = std::fs::OpenOptions::new().append(true).open(&args[4]).unwrap();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            let mut key = [0u8; 32];
            for i in 0..n {
                rnd.read_exact(&mut key).unwrap();
                let k = b64(&key);
                if (n / 2..n / 2 + 105).contains(&i) {
                    println!("{k}");
                }
                write!(out, "[Peer]\nPublicKey = {k}\n").unwrap();
                if allowed {
                    write!(out, "AllowedIPs = 10.{}.{}.{}/32\n", i >> 16, (i >> 8) & 255, i & 255)
                        .unwrap();
                }
                out.write_all(b"\n").unwrap();
            }
            out.flush().unwrap();
        }
        Some("get") => {
            let (us, bytes, peers, last) = exchange(&args[2], b"get=1\n\n");
            assert_eq!(last, "errno=0", "get failed");
            println!("{us} {bytes} {peers}");
        }
        Some("remove") => {
            let mut keys = String::new();
            std::io::stdin().read_to_string(&mut keys).unwrap();
            let (mut times, mut failures) = (Vec::new(), 0);
            for key in keys.split_whitespace() {
                let req = format!("set=1\npublic_key={}\nremove=true\n\n", hex_of_b64(key));
                let (us, _, _, last) = exchange(&args[2], req.as_bytes());
                times.push(us);
                if last != "errno=0" {
                    failures += 1;
                }
            }
            times.sort_unstable();
            let median = times.get(times.len() / 2).copied().unwrap_or(0);
            println!("{median} {} {failures}", times.last().copied().unwrap_or(0));
        }
        _ => panic!("usage: helper gen N ALLOWED FILE | get IFNAME | remove IFNAME < keys"),
    }
}
EOF
rustc -O --edition 2021 -o "$work/helper" "$work/helper.rs"
helper="$work/helper"

# --- The implementations ----------------------------------------------------
if [[ -n ${COREWIRE:-} ]]; then
    corewire=$COREWIRE
else
    if [[ -z ${NO_BUILD:-} ]]; then
        (cd "$root" && cargo build --release -p corewire --quiet)
    fi
    corewire="$root/target/release/corewire"
fi
# A copy, so that a concurrent rebuild cannot swap the binary mid-run.
cp "$corewire" "$work/corewire"
corewire_sum=$(sha256sum "$corewire" | cut -c1-12)
corewire="$work/corewire"

binary_of() {
    case $1 in
        corewire) echo "$corewire" ;;
        wireguard-go) command -v wireguard-go ;;
        gotatun) echo "$tools/gotatun" ;;
        boringtun) echo "$tools/boringtun-cli" ;;
    esac
}

now_ns() { date +%s%N; }
ms_since() { echo $((($(now_ns) - $1) / 1000000)); }
# /proc/PID/status and smaps_rollup fields, in KiB.
kib() { awk -v k="$2:" '$1 == k { print $2; exit }' "/proc/$1/$3" 2>/dev/null || echo 0; }
# CPU time (user + system, all threads) a process has used, in ms.
cpu_ms() {
    local hz
    hz=$(getconf CLK_TCK)
    sed 's/.*) //' "/proc/$1/stat" | awk -v hz="$hz" '{ print int(($12 + $13) * 1000 / hz) }'
}

rows=()
run=0
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# One measurement: implementation $1, $2 peers.
measure() {
    local impl=$1 n=$2 bin ns ifname log pid conf keys
    bin=$(binary_of "$impl")
    if [[ ! -x $bin ]]; then
        rows+=("| $impl | $n | not installed ($bin) | | | | | | | | | | | |")
        return
    fi
    run=$((run + 1))
    ns="pscale-$$-$run"
    ifname="ps$$x$run"
    log="$work/$impl-$n.log"
    ip netns add "$ns"
    namespaces+=("$ns")
    ip -n "$ns" link set lo up
    sockets+=("/var/run/wireguard/$ifname.sock")

    local -a cmd=("$bin" -f)
    case $impl in
        corewire)
            if [[ -n $THREADS ]]; then cmd+=(--threads "$THREADS"); fi
            ;;
        gotatun | boringtun) cmd+=(--disable-drop-privileges) ;;
    esac
    cmd+=("$ifname")
    # `ip netns exec` execs the program: $! is the daemon's PID.
    WG_LOG_FILE="$log.wglog" LOG_LEVEL=error ip netns exec "$ns" "${cmd[@]}" >"$log" 2>&1 &
    pid=$!
    pids+=("$pid")
    local i ready=""
    for ((i = 0; i < 100; i++)); do
        if ip netns exec "$ns" wg show "$ifname" listen-port >/dev/null 2>&1; then
            ready=1
            break
        fi
        sleep 0.1
    done
    if [[ -z $ready ]]; then
        rows+=("| $impl | $n | did not start: $(tail -c 200 "$log" | tr '\n|' '  ') | | | | | | | | | | | |")
        stop_pid "$pid"
        return
    fi

    conf="$work/$impl-$n.conf"
    printf '[Interface]\nPrivateKey = %s\n\n' "$(wg genkey)" >"$conf"
    mapfile -t keys < <("$helper" gen "$n" "$ALLOWED_IPS" "$conf")

    sleep 0.5
    local rss0 rss1 hwm1 lazy1 t addconf_ms addconf_note="" loaded
    rss0=$(kib "$pid" VmRSS status)
    local rc=0 cpu0 addconf_cpu
    cpu0=$(cpu_ms "$pid")
    t=$(now_ns)
    timeout "$STEP_TIMEOUT" wg addconf "$ifname" "$conf" >"$work/addconf.out" 2>&1 || rc=$?
    addconf_ms=$(ms_since "$t")
    addconf_cpu=$(($(cpu_ms "$pid") - cpu0))
    if [[ $rc -ne 0 ]]; then
        # 141: wg died of SIGPIPE (the daemon closed the socket mid-request).
        addconf_note="wg addconf exit $rc: $(tr '\n|' '  ' <"$work/addconf.out" | cut -c1-120)"
    fi
    sleep 2
    if ! kill -0 "$pid" 2>/dev/null; then
        rows+=("| $impl | $n | $addconf_ms | | daemon died: $addconf_note $(tail -c 200 "$log" | tr '\n|' '  ') | | | | | | | | | |")
        return
    fi
    rss1=$(kib "$pid" VmRSS status)
    hwm1=$(kib "$pid" VmHWM status)
    lazy1=$(kib "$pid" LazyFree smaps_rollup)

    local dump_ms get_out get_ms rm_ms rm_out rm_median rm_max rm_failed after per_peer
    t=$(now_ns)
    timeout "$STEP_TIMEOUT" wg show "$ifname" dump >/dev/null || true
    dump_ms=$(ms_since "$t")
    get_out=$(timeout "$STEP_TIMEOUT" "$helper" get "$ifname" || echo "0 0 0")
    read -r get_ms _ _ <<<"$get_out"
    get_ms=$((get_ms / 1000))
    loaded=$({ timeout "$STEP_TIMEOUT" wg show "$ifname" peers || true; } | wc -l)

    # 5 removals with `wg set` (median), then 100 raw ones (median, max).
    local -a wg_times=()
    for ((i = 0; i < 5; i++)); do
        t=$(now_ns)
        timeout "$STEP_TIMEOUT" wg set "$ifname" peer "${keys[i]}" remove || true
        wg_times+=("$(ms_since "$t")")
    done
    rm_ms=$(printf '%s\n' "${wg_times[@]}" | sort -n | sed -n 3p)
    rm_out=$(printf '%s\n' "${keys[@]:5:100}" | timeout "$STEP_TIMEOUT" "$helper" remove "$ifname" || echo "0 0 ?")
    read -r rm_median rm_max rm_failed <<<"$rm_out"
    after=$({ timeout "$STEP_TIMEOUT" wg show "$ifname" peers || true; } | wc -l)

    if [[ $loaded -gt 0 ]]; then
        per_peer=$(awk -v a="$rss1" -v b="$rss0" -v n="$loaded" 'BEGIN { printf "%.2f", (a - b) / n }')
    else
        per_peer="-"
    fi
    local note=$addconf_note
    if [[ $rm_failed != 0 ]]; then note+=" $rm_failed raw removals failed"; fi
    if [[ $loaded -ne $n ]]; then note+=" listed $loaded of $n"; fi
    rows+=("| $impl | $n | $addconf_ms | $addconf_cpu | $((rss0 / 1024)) | $((rss1 / 1024)) | $((hwm1 / 1024)) | $((lazy1 / 1024)) | $per_peer | $dump_ms | $get_ms | $rm_ms | $(awk -v m="$rm_median" -v x="$rm_max" 'BEGIN { printf "%.3f / %.1f", m / 1000, x / 1000 }') | $loaded -> $after ${note:+($note)} |")
    echo "done: $impl $n peers (addconf $addconf_ms ms)" >&2

    stop_pid "$pid"
    ip netns del "$ns" 2>/dev/null || true
    rm -f "$conf" "/var/run/wireguard/$ifname.sock"
}

for impl in $IMPLS; do
    sizes=$OTHER_SIZES
    [[ $impl == corewire ]] && sizes=$SIZES
    for n in $sizes; do
        for ((r = 0; r < REPEAT; r++)); do
            measure "$impl" "$n"
        done
    done
done

mem_total=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo
echo "Machine: $(nproc) CPUs ($cpu), $mem_total, kernel $(uname -r);" \
    "wg $(wg --version | awk '{ print $2 }'); corewire binary sha256 $corewire_sum," \
    "threads: ${THREADS:-default};" \
    "allowed IPs per peer: $ALLOWED_IPS; load average at start $load_start," \
    "at end $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| implementation | peers | addconf (ms) | daemon CPU in addconf (ms) | RSS before (MiB) | RSS after (MiB) | peak RSS (MiB) | LazyFree (MiB) | KiB/peer | wg show dump (ms) | raw get (ms) | wg set remove, median of 5 (ms) | raw remove, median / max of 100 (ms) | peers listed -> after 105 removals |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
printf '%s\n' "${rows[@]}"
