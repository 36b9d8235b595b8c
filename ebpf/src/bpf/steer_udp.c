/* SK_REUSEPORT: picks the socket of corewire's reuseport group that a
 * datagram goes to. Messages that carry a receiver index (response,
 * cookie reply, transport data) go to the worker the index names (its low
 * bits, config.mask); initiations go by the hash of their source address
 * and port, so one flooding source lands on one worker. Anything the
 * program does not select falls back to the kernel's hash and is counted;
 * the worker that gets it hands it over, so steering never decides
 * correctness. Sockets: index w for worker w's IPv4 socket,
 * MAX_WORKERS + w for its IPv6 socket (two groups, one map). */
#include "common.h"

#define UDP_HEADER_LEN 8
#define ETH_P_IPV6_BE bpf_htons(0x86DD)

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, 2 * MAX_WORKERS);
	__type(key, __u32);
	__type(value, __u32);
} sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct udp_config);
} udp_config SEC(".maps");

PERCPU_COUNTERS(udp_stats, UDP_STATS);

SEC("sk_reuseport")
int steer_udp(struct sk_reuseport_md *md)
{
	__u32 zero = 0;
	struct udp_config *cfg = bpf_map_lookup_elem(&udp_config, &zero);
	if (!cfg || cfg->workers == 0 || cfg->workers > MAX_WORKERS)
		return SK_PASS;

	__u8 head[12];
	if (bpf_skb_load_bytes(md, UDP_HEADER_LEN, head, sizeof(head)) < 0) {
		/* Shorter than any message but a truncated one: no index. */
		COUNT(udp_stats, UDP_UNSTEERED);
		return SK_PASS;
	}
	__u32 worker, hit;
	__u32 at;
	switch (head[0]) {
	case WG_INITIATION:
		worker = md->hash % cfg->workers;
		hit = UDP_BY_SOURCE;
		goto select;
	case WG_RESPONSE:
		at = WG_RESPONSE_RECEIVER_AT;
		break;
	case WG_COOKIE_REPLY:
	case WG_DATA:
		at = WG_DATA_RECEIVER_AT;
		break;
	default:
		COUNT(udp_stats, UDP_UNSTEERED);
		return SK_PASS;
	}
	/* Little-endian on the wire. */
	__u32 index = (__u32)head[at] | (__u32)head[at + 1] << 8 |
		      (__u32)head[at + 2] << 16 | (__u32)head[at + 3] << 24;
	worker = index & cfg->mask;
	if (worker >= cfg->workers) {
		COUNT(udp_stats, UDP_NO_WORKER);
		return SK_PASS;
	}
	hit = UDP_BY_INDEX;
select:
	if (md->eth_protocol == ETH_P_IPV6_BE)
		worker += MAX_WORKERS;
	if (bpf_sk_select_reuseport(md, &sockets, &worker, 0) < 0) {
		COUNT(udp_stats, UDP_NO_SOCKET);
		return SK_PASS;
	}
	COUNT(udp_stats, hit);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
