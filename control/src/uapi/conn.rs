//! One UAPI connection as a state machine over a non-blocking socket.
//!
//! [`Conn::drive`] does everything that can be done without waiting: send
//! pending output, take complete lines from the read buffer and act on them,
//! read more. It never blocks and never touches the engine; requests that
//! need the engine or a turn (a `get`'s stats, a `set`'s execution, the one
//! open `set`) park the connection in a waiting state for
//! [`Clients`](super::clients::Clients) to resume.
//!
//! Input is only processed once all output was sent, so a connection holds
//! at most its read buffer ([`READ_BUF`]), one part of a reply and, for the
//! one open `set`, its [`Transaction`]. Both buffers are wiped when dropped
//! (they see keys).

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::apply::Transaction;
use super::error::UapiError;
use super::get::GetReply;
use super::limits::{DEADLINE_PER_MIB, MAX_LINE, MAX_REQUEST_BYTES, READ_BUDGET, REQUEST_DEADLINE};
use crate::config::DeviceConfig;

/// Read buffer size: room for several lines of a bulk `set` per read, and
/// always for one whole line of [`MAX_LINE`].
pub const READ_BUF: usize = 64 * 1024;
const _: () = assert!(READ_BUF > 2 * MAX_LINE);

/// Where a connection is in its current request.
#[derive(Debug)]
pub enum State {
    /// Between requests: the next line is an operation.
    Idle,
    /// Read `get=1`; its empty line must follow.
    GetHeader,
    /// A complete `get`, waiting for its stats (and for a ready `set` to
    /// commit first).
    GetWaiting,
    /// Writing a `get` reply, one part at a time.
    Getting(GetReply),
    /// Read `set=1`; its body is read into the read buffer until it is
    /// all there (or fills the buffer: a bulk body, streamed once its turn
    /// comes), then it waits for the set turn. `ticket` orders the queue;
    /// a client still sending its body holds no turn and delays nobody.
    SetQueued { ticket: u64, complete: bool },
    /// The open `set`: its body is being read into the transaction.
    Set {
        /// `None` after an error: the rest of the body is read and dropped.
        txn: Option<Transaction>,
        error: Option<UapiError>,
    },
    /// The body is complete; waiting until no `get` reply is in progress.
    SetReady(Result<Transaction, UapiError>),
}

impl State {
    /// Waiting for the server, not for the client: no deadline runs.
    pub fn is_waiting(&self) -> bool {
        matches!(
            self,
            State::GetWaiting | State::SetQueued { complete: true, .. } | State::SetReady(_)
        )
    }

    /// Holds the `set` turn (only one connection at a time).
    pub fn holds_set(&self) -> bool {
        matches!(self, State::Set { .. } | State::SetReady(_))
    }
}

/// What the read buffer holds next.
enum Line {
    /// A complete line (without `\n`) at this range of the read buffer.
    Complete(usize, usize),
    /// A line longer than [`MAX_LINE`]: reported once, then skipped.
    TooLong,
    /// No complete line yet.
    NeedMore,
}

/// One client connection.
#[derive(Debug)]
pub struct Conn {
    stream: UnixStream,
    rbuf: Zeroizing<Vec<u8>>,
    start: usize,
    end: usize,
    /// Inside a line longer than [`MAX_LINE`], dropping bytes up to its `\n`.
    skipping: bool,
    wbuf: Zeroizing<Vec<u8>>,
    wpos: usize,
    pub state: State,
    /// Bytes of the current `set` body consumed so far.
    request_bytes: u64,
    /// When the current request must be complete (set at its first byte;
    /// `None` between requests).
    deadline: Option<Instant>,
    /// Bytes moved since the deadline was last extended.
    credit: u64,
    /// Since when the request waits for the server (its deadline paused).
    waiting_since: Option<Instant>,
    /// When the last request ended (or the connection was accepted).
    pub idle_since: Instant,
    eof: bool,
    /// Close once the output is sent.
    closing: bool,
    /// To be dropped.
    pub dead: bool,
}

impl Conn {
    /// Takes charge of an accepted (or paired) stream.
    pub fn new(stream: UnixStream, now: Instant) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            rbuf: Zeroizing::new(vec![0; READ_BUF]),
            start: 0,
            end: 0,
            skipping: false,
            wbuf: Zeroizing::new(Vec::new()),
            wpos: 0,
            state: State::Idle,
            request_bytes: 0,
            deadline: None,
            credit: 0,
            waiting_since: None,
            idle_since: now,
            eof: false,
            closing: false,
            dead: false,
        })
    }

    /// The poll(2) entry for this connection: output pending -> POLLOUT;
    /// waiting for the server -> ignored (fd -1, so a hang-up does not
    /// wake the loop); otherwise POLLIN.
    pub fn pollfd(&self) -> libc::pollfd {
        let (fd, events) = if self.dead || self.state.is_waiting() {
            (-1, 0)
        } else if self.wpos < self.wbuf.len() || matches!(self.state, State::Getting(_)) {
            (self.stream.as_raw_fd(), libc::POLLOUT)
        } else {
            (self.stream.as_raw_fd(), libc::POLLIN)
        };
        libc::pollfd {
            fd,
            events,
            revents: 0,
        }
    }

    /// True while no request is in progress and nothing is buffered.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
            && self.deadline.is_none()
            && self.start == self.end
            && self.wpos == self.wbuf.len()
    }

    /// When this connection must be dropped unless something happens:
    /// its request's deadline, or the end of its idle time.
    pub fn expiry(&self, idle_timeout: Duration) -> Option<Instant> {
        if self.dead || self.waiting_since.is_some() {
            return None;
        }
        Some(
            self.deadline
                .unwrap_or_else(|| self.idle_since + idle_timeout),
        )
    }

    /// Parks the request until the server resumes it (pauses the deadline).
    fn wait(&mut self, state: State, now: Instant) {
        self.state = state;
        self.waiting_since = Some(now);
    }

    /// Ends a wait: the deadline moves by the time spent waiting.
    pub fn resume(&mut self, state: State, now: Instant) {
        if let (Some(since), Some(d)) = (self.waiting_since.take(), self.deadline.as_mut()) {
            *d += now.saturating_duration_since(since);
        }
        self.state = state;
    }

    /// Queues `errno=N` and the empty line.
    pub fn reply_errno(&mut self, errno: i32) {
        push_errno(&mut self.wbuf, errno);
    }

    /// Moves `n` bytes of the request: every MiB extends the deadline by
    /// [`DEADLINE_PER_MIB`], so a bulk request that keeps flowing is not
    /// cut off while a trickle is.
    fn credit(&mut self, n: usize) {
        let Some(d) = self.deadline.as_mut() else {
            return;
        };
        self.credit += n as u64;
        while self.credit >= 1 << 20 {
            self.credit -= 1 << 20;
            *d += DEADLINE_PER_MIB;
        }
    }

    /// Does all the work possible without waiting. `ticket`: the last
    /// queue number given to a `set`.
    pub fn drive(&mut self, config: &DeviceConfig, ticket: &mut u64, now: Instant) {
        let mut budget = READ_BUDGET;
        while !self.dead {
            if !self.flush() {
                self.dead = true;
                return;
            }
            if self.wpos < self.wbuf.len() {
                return;
            }
            if self.closing {
                self.dead = true;
                return;
            }
            match &mut self.state {
                State::Getting(reply) => {
                    if reply.render(config, &mut self.wbuf) {
                        self.state = State::Idle;
                    }
                    continue;
                }
                s if s.is_waiting() => return,
                State::SetQueued { .. } => {
                    self.gather(now);
                    return;
                }
                _ => {}
            }
            if matches!(self.state, State::Idle) {
                if self.start == self.end && !self.skipping {
                    if self.deadline.take().is_some() {
                        self.idle_since = now;
                    }
                } else if self.deadline.is_none() {
                    self.deadline = Some(now + REQUEST_DEADLINE);
                    self.credit = 0;
                }
            }
            match self.next_line() {
                Line::Complete(a, b) => self.on_line(a, b, config, ticket, now),
                Line::TooLong => self.on_too_long(),
                Line::NeedMore => {
                    if self.check_size() {
                        continue;
                    }
                    if self.eof {
                        self.on_eof();
                        continue;
                    }
                    if budget == 0 {
                        return;
                    }
                    match (&self.stream).read(&mut self.rbuf[self.end..]) {
                        Ok(0) => self.eof = true,
                        Ok(n) => {
                            self.end += n;
                            budget = budget.saturating_sub(n);
                            self.credit(n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => self.dead = true,
                    }
                }
            }
        }
    }

    /// Reads a queued `set`'s body into the read buffer until it is
    /// there, then lets the set wait for its turn (its deadline paused).
    fn gather(&mut self, now: Instant) {
        loop {
            if self.body_buffered() {
                if let State::SetQueued { complete, .. } = &mut self.state {
                    *complete = true;
                }
                self.waiting_since = Some(now);
                return;
            }
            if self.start > 0 {
                self.rbuf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            match (&self.stream).read(&mut self.rbuf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.end += n;
                    self.credit(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
    }

    /// Whether a queued `set` can take its turn: its body's empty line is
    /// in the read buffer, or the body fills the buffer (then it is
    /// streamed), or the client closed (then it is answered as cut off).
    fn body_buffered(&self) -> bool {
        let body = &self.rbuf[self.start..self.end];
        self.eof
            || (self.start == 0 && self.end == self.rbuf.len())
            || body.starts_with(b"\n")
            || body.starts_with(b"\r\n")
            || body.windows(2).any(|w| w == b"\n\n")
            || body.windows(3).any(|w| w == b"\n\r\n")
    }

    /// Sends what it can; false when the connection is broken.
    fn flush(&mut self) -> bool {
        while self.wpos < self.wbuf.len() {
            let data = &self.wbuf[self.wpos..];
            // SAFETY: `data` is valid for `data.len()` bytes; MSG_NOSIGNAL
            // turns a closed peer into EPIPE instead of SIGPIPE.
            let n = unsafe {
                libc::send(
                    self.stream.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                self.wpos += n.unsigned_abs();
                self.credit(n.unsigned_abs());
                continue;
            }
            match io::Error::last_os_error().kind() {
                io::ErrorKind::WouldBlock => return true,
                io::ErrorKind::Interrupted => {}
                _ => return false,
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        true
    }

    /// The next line in the read buffer, compacting it when none is complete.
    fn next_line(&mut self) -> Line {
        loop {
            let avail = &self.rbuf[self.start..self.end];
            if let Some(pos) = avail.iter().position(|&b| b == b'\n') {
                let (a, b) = (self.start, self.start + pos);
                self.start = b + 1;
                if self.is_set_body() {
                    self.request_bytes += pos as u64 + 1;
                }
                if self.skipping {
                    // Reported when the skipping began; the line ends here.
                    self.skipping = false;
                    continue;
                }
                return if pos > MAX_LINE {
                    Line::TooLong
                } else {
                    Line::Complete(a, b)
                };
            }
            let len = avail.len();
            if self.skipping || len > MAX_LINE {
                if self.is_set_body() {
                    self.request_bytes += len as u64;
                }
                self.start = 0;
                self.end = 0;
                if !self.skipping {
                    self.skipping = true;
                    return Line::TooLong;
                }
                return Line::NeedMore;
            }
            if self.start > 0 {
                self.rbuf.copy_within(self.start..self.end, 0);
                self.end = len;
                self.start = 0;
            }
            return Line::NeedMore;
        }
    }

    fn is_set_body(&self) -> bool {
        matches!(self.state, State::Set { .. })
    }

    /// A `set` body past [`MAX_REQUEST_BYTES`]: -EMSGSIZE and close.
    fn check_size(&mut self) -> bool {
        if self.is_set_body() && self.request_bytes > MAX_REQUEST_BYTES {
            self.state = State::Idle;
            self.reply_errno(UapiError::RequestTooLarge(MAX_REQUEST_BYTES).errno());
            self.closing = true;
            return true;
        }
        false
    }

    fn on_line(
        &mut self,
        a: usize,
        b: usize,
        config: &DeviceConfig,
        ticket: &mut u64,
        now: Instant,
    ) {
        if self.check_size() {
            return;
        }
        let line = &self.rbuf[a..b];
        let mut next = None;
        match &mut self.state {
            State::Idle => match line {
                b"get=1" => next = Some(State::GetHeader),
                b"set=1" => {
                    self.request_bytes = 0;
                    *ticket += 1;
                    next = Some(State::SetQueued {
                        ticket: *ticket,
                        complete: false,
                    });
                }
                // wireguard-go: "invalid UAPI operation", connection closed.
                _ => self.dead = true,
            },
            State::GetHeader => {
                if line.is_empty() {
                    next = Some(State::GetWaiting);
                } else {
                    next = Some(State::Idle);
                    push_errno(&mut self.wbuf, UapiError::TrailingGetData.errno());
                    self.closing = true;
                }
            }
            State::Set { txn, error } => {
                if line.is_empty() || line == b"\r" {
                    next = Some(State::SetReady(match (error.take(), txn.take()) {
                        (Some(e), _) => Err(e),
                        (None, Some(t)) => Ok(t),
                        (None, None) => Err(UapiError::Truncated),
                    }));
                } else if let Some(t) = txn.as_mut() {
                    if let Err(e) = t.feed_line(config, line) {
                        *error = Some(e);
                        // Free the overlay now; the rest is only read and dropped.
                        *txn = None;
                    }
                }
            }
            _ => {}
        }
        if let Some(state) = next {
            if state.is_waiting() {
                self.wait(state, now);
            } else {
                self.state = state;
            }
        }
    }

    fn on_too_long(&mut self) {
        match &mut self.state {
            State::Set { txn, error } => {
                error.get_or_insert(UapiError::LineTooLong(MAX_LINE));
                *txn = None;
            }
            // An overlong operation line or get header: closed.
            _ => self.dead = true,
        }
    }

    fn on_eof(&mut self) {
        if self.is_set_body() {
            // Cut off before its empty line: discarded; answered in case
            // the client only half-closed.
            self.state = State::Idle;
            self.reply_errno(UapiError::Truncated.errno());
            self.closing = true;
        } else {
            self.dead = true;
        }
    }
}

fn push_errno(out: &mut Vec<u8>, errno: i32) {
    out.extend_from_slice(b"errno=");
    out.extend_from_slice(errno.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}
