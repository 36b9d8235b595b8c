/* SOCKET_FILTER attached to the TUN device with TUNSETSTEERINGEBPF: its
 * return value is the queue (modulo the number of queues) a packet the
 * kernel routes into the tunnel is read from. The destination is looked up
 * in the AllowedIPs maps that the control plane keeps (prefix -> owner
 * worker; worker w reads queue w), so a packet is read by the worker
 * owning its peer. A miss (no peer, not IP) goes by the flow hash. */
#include "common.h"

/* max_entries are set by the loader (src/common.rs). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct route4_key);
	__type(value, __u32);
} routes4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct route6_key);
	__type(value, __u32);
} routes6 SEC(".maps");

PERCPU_COUNTERS(tun_stats, TUN_STATS);

SEC("socket")
int steer_tun(struct __sk_buff *skb)
{
	/* Read first: clang would otherwise offset the context pointer, which
	 * the verifier refuses. */
	__u32 hash = skb->hash;
	__u8 version;
	__u32 *worker = 0;
	if (bpf_skb_load_bytes(skb, 0, &version, 1) < 0)
		goto miss;
	if (version >> 4 == 4) {
		struct route4_key k = { .prefixlen = 32 };
		if (bpf_skb_load_bytes(skb, 16, k.addr, sizeof(k.addr)) < 0)
			goto miss;
		worker = bpf_map_lookup_elem(&routes4, &k);
	} else if (version >> 4 == 6) {
		struct route6_key k = { .prefixlen = 128 };
		if (bpf_skb_load_bytes(skb, 24, k.addr, sizeof(k.addr)) < 0)
			goto miss;
		worker = bpf_map_lookup_elem(&routes6, &k);
	}
	if (worker) {
		COUNT(tun_stats, TUN_HIT);
		return *worker;
	}
miss:
	COUNT(tun_stats, TUN_MISS);
	return hash;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
