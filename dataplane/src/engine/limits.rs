//! Every size and limit of the engine, in one place: what a worker takes
//! in ahead of its work, how much it batches, and what it holds for a peer.
//! Each bound is also a drop policy: beyond it, packets wait in the kernel
//! (socket and TUN queues) or are dropped and counted.

use std::time::Duration;

/// The TUN MTU of a new device, and when the device does not report one:
/// WireGuard's default, as with wireguard-go and wg-quick (1500 minus the
/// 80 bytes of IPv6 + UDP + WireGuard overhead).
pub const DEFAULT_MTU: u32 = 1420;

/// Most datagrams in one UDP GSO send (the kernel's `UDP_MAX_SEGMENTS`
/// before 6.11) and most packets merged into one TUN super-packet; the
/// bound also keeps each iovec list far below `IOV_MAX`.
pub const MAX_SEGMENTS: usize = 64;
/// Most bytes in one UDP GSO send: the UDP payload limit over IPv6 minus
/// slack, which also keeps it under IPv4's.
pub const MAX_GSO_BYTES: usize = 65000;

/// Provided buffers for UDP receives (shared by the IPv4 and IPv6 socket):
/// how many datagrams (or GRO bursts) can wait between the kernel and the
/// worker. Beyond that they wait in the socket's own buffer.
pub const UDP_RING: u16 = 128;
/// Provided buffers for TUN reads. Each can hold a 64 KiB super-packet, so
/// this bounds what the worker takes in ahead of its work to 2 MiB; the
/// rest waits in the TUN device's queue, where the kernel drops when it
/// overflows and TCP backs off, instead of queueing in front of us.
pub const TUN_RING: u16 = 32;
/// Operation slots per worker: reads in flight plus room for a burst of
/// sends and writes. When all are busy, new packets are dropped
/// (back-pressure) instead of queueing without bound.
pub const SLOTS: usize = 1024;
/// Free buffers of each size a worker keeps for itself (more go to the
/// engine's depot).
pub const POOL_CAP: usize = 1024;
/// Free buffers the workers share beyond their own free lists: large
/// (64 KiB) and small (2 KiB) ones. 32 MiB and 16 MiB at most.
pub const DEPOT_LARGE: usize = 512;
/// See [`DEPOT_LARGE`].
pub const DEPOT_SMALL: usize = 8192;

/// Most packets sealed in one batch.
pub const MAX_BATCH: usize = 64;
/// Most decrypted packets held for coalescing before they are written to
/// the TUN (they are written at the latest at the end of the loop turn).
pub const MAX_RX_BATCH: usize = 128;
/// Packets held per peer while its handshake runs (as wireguard-go); the
/// oldest goes when more arrive.
pub const MAX_STAGED: usize = 128;
/// Packets held per worker for all peers waiting for a handshake, each in
/// a small buffer where it fits: 8 MiB. A ping sweep over a thousand
/// offline spokes holds at most this; beyond it new packets are dropped
/// and counted.
pub const STAGED_TOTAL: usize = 4096;
/// Shard events (handshakes, cookies, drops with their source) kept
/// between two executions of its actions; more are counted and lost.
pub const MAX_EVENTS: usize = 256;
/// Handshake messages (initiations, responses) waiting per worker, each
/// in a small buffer: 2 MiB at most. More are dropped and counted.
pub const HANDSHAKE_QUEUE: usize = 1024;
/// Handshake messages with a valid mac2 waiting per worker, in a lane
/// served before the main queue (see `shard/handshake.rs`).
pub const HANDSHAKE_PROVEN: usize = 256;
/// Queued handshake messages that make a worker signal load: an eighth of
/// the queue, as the kernel.
pub const UNDER_LOAD_AT: usize = HANDSHAKE_QUEUE / 8;
/// Handshake messages that cost X25519 taken in per loop turn: at about
/// 190 us each, 16 keep a turn's handshake work under 3 ms.
pub const HANDSHAKE_BUDGET: usize = 16;
/// Handshake messages taken in per loop turn in all (cookie replies and
/// refusals are cheap, but not free).
pub const HANDSHAKE_TURN: usize = 256;
/// Packets handed over by other workers waiting for a worker, each in a
/// small buffer where it fits: about 4 MiB. More are dropped and counted
/// by the worker handing them over.
pub const MAILBOX: usize = 2048;
/// Handed-over packets a worker takes in per loop turn; the rest wait for
/// the next turn, so its own sockets and TUN queue keep their share.
pub const MAILBOX_TURN: usize = 512;
/// Packets queued for sending or writing after which they are handed to
/// the kernel at once instead of at the end of the loop turn: a turn that
/// drains many completions would otherwise hold its first packets back
/// until its last are done (latency under load).
pub const SUBMIT_EVERY: usize = 64;
/// Configuration changes applied per loop turn, so a bulk load (a million
/// peers) is spread over loop turns and packets keep flowing meanwhile.
pub const APPLY_CHUNK: usize = 4096;
/// Prefixes per address family the TUN steering tries hold (eBPF LPM
/// tries, allocated per entry, so a cap rather than memory taken up front:
/// a million peers with a /32 and a /128 each fit). Beyond it a prefix is
/// not steered: its packets are handed over, and the refusal is counted.
pub const STEER_ROUTES: u32 = 1 << 21;
/// Receiver indexes the XDP guard's map of live indexes holds (allocated
/// per entry). A worker holds at most a handshake and three sessions per
/// active peer; a refused index is counted, and datagrams for it are
/// dropped by the guard, so this is far above what a million peers use.
pub const XDP_LIVE_INDEXES: u32 = 1 << 22;
/// Timer resolution: WireGuard's shortest timer is REKEY_TIMEOUT (5 s), so
/// a tenth of a second keeps every rule within its tolerance.
pub const TICK: Duration = Duration::from_millis(100);

/// Large (64 KiB) buffers one worker may have alive: those lent to its
/// receive rings, its free list, and as many again in flight (reads being
/// sealed, sends and writes in their slots). About 138 MiB; with the
/// depot's, the ceiling on large buffers of an engine. At the ceiling a
/// receive keeps its ring buffer and drops the datagram or read
/// (`buffers_refused`), so what is alive never grows past it.
pub const LARGE_BUFFERS_PER_WORKER: usize =
    UDP_RING as usize + TUN_RING as usize + POOL_CAP + SLOTS;
/// Small (2 KiB) buffers one worker may have alive: its free list, full
/// handshake queues, staging and mailbox, and 8192 in flight (segments of
/// super-packets and GRO bursts in sends and writes). About 33 MiB.
pub const SMALL_BUFFERS_PER_WORKER: usize =
    POOL_CAP + HANDSHAKE_QUEUE + HANDSHAKE_PROVEN + STAGED_TOTAL + MAILBOX + 8192;

/// Peers a worker copies into its published peer snapshot per loop turn
/// while a reader waits for one (see `board.rs`): about 100 us of copying,
/// so reading the stats of 100,000 peers spreads over some 50 turns
/// instead of stalling one.
pub const PEER_PUBLISH_CHUNK: usize = 2048;

/// Log lines of one kind (handshake failed, cookie sent, ...) a worker
/// writes at once before its rate limit holds the rest back and counts
/// them, and how many a second it writes in the long run: a flood of bad
/// handshakes costs at most this much log per worker, not a full disk.
pub const LOG_BURST: f64 = 20.0;
/// See [`LOG_BURST`].
pub const LOG_PER_SEC: f64 = 5.0;
