/* XDP on the uplink: drops datagrams to corewire's port that cannot be
 * WireGuard messages (unknown type, reserved bytes set, wrong length for
 * the type, truncated) or that carry a receiver index no live session or
 * handshake has (the workers publish theirs in `live`), before the stack
 * spends anything on them. Initiations and cookie replies pass: the daemon
 * checks their MACs itself. Everything not UDP to the port passes. */
#include "common.h"
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct guard_config);
} guard_config SEC(".maps");

/* Live receiver indexes (host order), max_entries set by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, __u8);
} live SEC(".maps");

PERCPU_COUNTERS(xdp_stats, XDP_STATS);

static __always_inline int verdict(__u32 stat)
{
	COUNT(xdp_stats, stat);
	return stat >= XDP_DROP_BAD_TYPE && stat <= XDP_DROP_UNKNOWN_INDEX ? XDP_DROP : XDP_PASS;
}

static __always_inline int known(const __u8 *p)
{
	__u32 index = (__u32)p[0] | (__u32)p[1] << 8 | (__u32)p[2] << 16 | (__u32)p[3] << 24;
	return bpf_map_lookup_elem(&live, &index) != 0;
}

SEC("xdp")
int xdp_guard(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct guard_config *cfg = bpf_map_lookup_elem(&guard_config, &zero);
	if (!cfg || cfg->port == 0)
		return XDP_PASS;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return verdict(XDP_PASS_OTHER);
	struct udphdr *udp;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_UDP)
			return verdict(XDP_PASS_OTHER);
		/* Fragments cannot be judged here; the stack reassembles them. */
		if (ip->frag_off & bpf_htons(0x3FFF))
			return verdict(XDP_PASS_OTHER);
		__u32 ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip))
			return verdict(XDP_PASS_OTHER);
		udp = (void *)ip + ihl;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_UDP)
			return verdict(XDP_PASS_OTHER);
		udp = (void *)(ip6 + 1);
	} else {
		return verdict(XDP_PASS_OTHER);
	}
	if ((void *)(udp + 1) > end || udp->dest != cfg->port)
		return verdict(XDP_PASS_OTHER);

	/* The payload, as long as the UDP header says, which must fit. The
	 * fixed-offset check comes first: the verifier learns nothing about
	 * msg's bytes from a comparison at a variable offset. */
	__u8 *msg = (void *)(udp + 1);
	if ((void *)(msg + 4) > end)
		return verdict(XDP_DROP_BAD_LENGTH);
	__u32 udp_len = bpf_ntohs(udp->len);
	if (udp_len < sizeof(*udp) + 4 || (void *)udp + udp_len > end)
		return verdict(XDP_DROP_BAD_LENGTH);
	__u32 len = udp_len - sizeof(*udp);
	if (msg[1] | msg[2] | msg[3])
		return verdict(XDP_DROP_BAD_TYPE);

	switch (msg[0]) {
	case WG_INITIATION:
		return verdict(len == WG_INITIATION_LEN ? XDP_PASS_INITIATION : XDP_DROP_BAD_LENGTH);
	case WG_COOKIE_REPLY:
		return verdict(len == WG_COOKIE_REPLY_LEN ? XDP_PASS_COOKIE_REPLY : XDP_DROP_BAD_LENGTH);
	case WG_RESPONSE:
		if (len != WG_RESPONSE_LEN || (void *)(msg + WG_RESPONSE_RECEIVER_AT + 4) > end)
			return verdict(XDP_DROP_BAD_LENGTH);
		return verdict(known(msg + WG_RESPONSE_RECEIVER_AT) ? XDP_PASS_RESPONSE
								      : XDP_DROP_UNKNOWN_INDEX);
	case WG_DATA:
		if (len < WG_DATA_MIN_LEN || (void *)(msg + WG_DATA_RECEIVER_AT + 4) > end)
			return verdict(XDP_DROP_BAD_LENGTH);
		return verdict(known(msg + WG_DATA_RECEIVER_AT) ? XDP_PASS_DATA : XDP_DROP_UNKNOWN_INDEX);
	default:
		return verdict(XDP_DROP_BAD_TYPE);
	}
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
