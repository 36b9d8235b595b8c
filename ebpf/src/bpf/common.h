/* What the programs and their loaders (src/common.rs) agree on: map key
 * and value layouts and the index of each counter. Keep the two in step;
 * the Rust side has a test that reads every counter back by name. */
#ifndef COREWIRE_COMMON_H
#define COREWIRE_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Most workers a device has: the receiver index names its worker in at
 * most 8 low bits (dataplane proto/index.rs, MAX_WORKER_BITS). */
#define MAX_WORKERS 256

/* The WireGuard message types and their sizes (whitepaper section 5.4). */
#define WG_INITIATION 1
#define WG_RESPONSE 2
#define WG_COOKIE_REPLY 3
#define WG_DATA 4
#define WG_INITIATION_LEN 148
#define WG_RESPONSE_LEN 92
#define WG_COOKIE_REPLY_LEN 64
#define WG_DATA_MIN_LEN 32
/* Where the receiver index sits in the messages that carry one. */
#define WG_RESPONSE_RECEIVER_AT 8
#define WG_COOKIE_RECEIVER_AT 4
#define WG_DATA_RECEIVER_AT 4

/* UDP steering (steer_udp.c): config[0]. */
struct udp_config {
	__u32 workers; /* sockets per family, 1..=MAX_WORKERS; 0: steer nothing */
	__u32 mask;    /* receiver-index bits that name the worker */
};

/* UDP steering counters (per CPU). */
enum udp_stat {
	UDP_BY_INDEX,     /* response, cookie reply or data: to the index's worker */
	UDP_BY_SOURCE,    /* initiation: by the hash of its source */
	UDP_NO_WORKER,    /* the index names no worker: kernel hash */
	UDP_NO_SOCKET,    /* the worker's socket is not in the map: kernel hash */
	UDP_UNSTEERED,    /* too short or unknown type: kernel hash */
	UDP_STATS,
};

/* TUN steering (steer_tun.c): AllowedIPs prefix -> owner worker. */
struct route4_key {
	__u32 prefixlen;
	__u8 addr[4];
};
struct route6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

enum tun_stat {
	TUN_HIT,    /* destination in the map: its owner's queue */
	TUN_MISS,   /* no prefix holds it (or not IP): flow hash */
	TUN_STATS,
};

/* XDP guard (xdp_guard.c): config[0]. */
struct guard_config {
	__u16 port; /* corewire's UDP port, network byte order; 0: guard nothing */
	__u16 pad;
};

enum xdp_stat {
	XDP_PASS_INITIATION,
	XDP_PASS_RESPONSE,
	XDP_PASS_COOKIE_REPLY,
	XDP_PASS_DATA,
	XDP_DROP_BAD_TYPE,      /* unknown type or reserved bytes not zero */
	XDP_DROP_BAD_LENGTH,    /* wrong length for its type, or truncated */
	XDP_DROP_UNKNOWN_INDEX, /* response or data for no live session */
	XDP_PASS_OTHER,         /* not UDP to corewire's port */
	XDP_STATS,
};

#define PERCPU_COUNTERS(name, n)                         \
	struct {                                         \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); \
		__uint(max_entries, n);                  \
		__type(key, __u32);                      \
		__type(value, __u64);                    \
	} name SEC(".maps")

#define COUNT(map, i)                                        \
	do {                                                 \
		__u32 key_ = (i);                            \
		__u64 *c_ = bpf_map_lookup_elem(&(map), &key_); \
		if (c_)                                      \
			*c_ += 1;                            \
	} while (0)

#endif
