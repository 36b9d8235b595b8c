//! Every bound of the UAPI server, with why each number.

use std::time::Duration;

/// Longest accepted line, without its `\n` (a line carries one key and one
/// value; the longest legitimate one is an IPv6 endpoint with a zone).
pub const MAX_LINE: usize = 4096;
/// Largest accepted `set` body (a million peers take about 250 MB).
pub const MAX_REQUEST_BYTES: u64 = 1 << 30;
/// Most client connections at once. `wg` opens one per command, so this is
/// 64 concurrent `wg` calls; at the limit the connection idle longest is
/// dropped for a new one, or the new one is refused if none is idle.
pub const MAX_CONNECTIONS: usize = 64;
/// A request must be complete (and its reply read) this long after its
/// first byte, plus [`DEADLINE_PER_MIB`]: a client that stops or trickles
/// in the middle of a request is dropped. Time spent waiting for the
/// server (for another client's `set`, or a `get` reply in progress) does
/// not count.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Added to a request's deadline for every MiB it moves (in or out), so a
/// bulk `wg addconf` or a large `wg show` that keeps flowing at 1 MiB/s or
/// more is never cut off.
pub const DEADLINE_PER_MIB: Duration = Duration::from_secs(1);
/// A connection with no request in progress is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from one connection per turn of the control loop, so a bulk
/// `set` cannot starve the other clients, signals and link events.
pub const READ_BUDGET: usize = 1 << 20;
