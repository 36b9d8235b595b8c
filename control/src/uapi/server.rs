//! The UAPI unix socket: `/var/run/wireguard/<ifname>.sock`.
//!
//! [`UapiServer::bind`] creates the socket; [`UapiServer::run`] serves it on
//! the calling (control) thread until a stop flag is raised or the socket
//! file is deleted (`wg-quick down` and `rm` both mean "exit"), checking both
//! every 100 ms. Connections are served one at a time, each until EOF, with
//! any number of `get=1` / `set=1` requests on it; sets are streamed line by
//! line into a [`Transaction`], never buffered whole.
//!
//! # Socket creation (race-free, without touching the process umask)
//!
//! wireguard-go (`ipc/uapi_unix.go`) sets the process-wide umask to 077
//! around `bind`. A umask is shared by every thread, so another thread
//! creating a file at that moment would get the wrong mode. Instead the
//! socket is bound inside a fresh private directory (mode 0700, next to the
//! final path), chmod-ed to 0600, and then `rename`d onto the final path:
//! nobody but root can reach it before its mode is final, and the rename
//! atomically replaces a stale socket file. A socket file at the path is
//! replaced only when connecting to it fails; if a live process answers,
//! `bind` fails with `AddrInUse` ("interface already in use"); a path that is
//! not a socket is never deleted. The directory is created with mode 0755
//! if it is missing.
//!
//! # Protocol details matched against wireguard-go (`device/uapi.go` f333402b)
//!
//! - An unknown operation line closes the connection without a reply.
//! - `get=1` must be followed by an empty line; otherwise `errno=-22` and
//!   the connection is closed.
//! - A failed `set` still reads its remaining lines up to the empty line
//!   (wireguard-go stops reading and desynchronises), then answers the
//!   errno, so the connection stays usable.
//! - A `set` cut off by EOF before its empty line is discarded (wireguard-go
//!   applies what it read); `errno=-71` is sent in case the client only
//!   half-closed.
//!
//! # Limits
//! Lines longer than [`MAX_LINE`] fail the request with -EINVAL (the rest of
//! the line is skipped, not stored); a request larger than
//! [`MAX_REQUEST_BYTES`] fails with -EMSGSIZE and closes the connection.
//! A connection that has been silent for a second while another client is
//! waiting to connect is closed (a stalled client cannot lock the others
//! out; a half-sent `set` is then discarded); a reply nobody reads for
//! [`WRITE_STALL`] is abandoned.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use corewire_dataplane::engine::config::Device;
use zeroize::{Zeroize, Zeroizing};

use super::apply::{execute, Transaction};
use super::error::UapiError;
use super::get::write_get;
use crate::config::DeviceConfig;

/// Where `wg` looks for userspace interfaces.
pub const SOCKET_DIR: &str = "/var/run/wireguard";
/// Longest accepted line, without its `\n`.
pub const MAX_LINE: usize = 4096;
/// Largest accepted `set` request (a million peers take about 250 MB).
pub const MAX_REQUEST_BYTES: u64 = 1 << 30;
/// How often stop flags and socket files are checked.
pub const TICK: Duration = Duration::from_millis(100);
/// A connection silent this long gives way to a waiting client.
pub const YIELD_AFTER: Duration = Duration::from_secs(1);
/// A reply nobody reads for this long is abandoned.
pub const WRITE_STALL: Duration = Duration::from_secs(10);

const READ_BUF: usize = 64 * 1024;

/// Why [`UapiServer::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg(test)]
pub enum Shutdown {
    /// The stop flag was raised.
    Stopped,
    /// The socket file was deleted or replaced.
    SocketRemoved,
}

/// A bound UAPI socket. Dropping it deletes the socket file (if it is
/// still this socket's).
#[derive(Debug)]
pub struct UapiServer {
    listener: UnixListener,
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl UapiServer {
    /// Creates `<dir>/<ifname>.sock` (mode 0600; `dir` created 0755 if
    /// missing). `AddrInUse` if a live process serves that path already.
    pub fn bind(dir: &Path, ifname: &str) -> io::Result<Self> {
        if ifname.is_empty()
            || ifname.len() > 15
            || ifname == "."
            || ifname == ".."
            || ifname.bytes().any(|b| b == b'/' || b == 0)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {ifname:?}"),
            ));
        }
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)?;
            // The mode above went through the umask.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
        let path = dir.join(format!("{ifname}.sock"));
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Ok(_) => {
                if UnixStream::connect(&path).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("interface already in use: {} answers", path.display()),
                    ));
                }
                // Stale: the rename below replaces it.
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }

        let private = make_private_dir(dir, ifname)?;
        let result = (|| {
            let tmp = private.join("s");
            let listener = UnixListener::bind(&tmp)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&tmp, &path)?;
            Ok::<_, io::Error>(listener)
        })();
        let _ = std::fs::remove_file(private.join("s"));
        let _ = std::fs::remove_dir(&private);
        let listener = result?;
        listener.set_nonblocking(true)?;
        let meta = std::fs::symlink_metadata(&path)?;
        Ok(Self {
            listener,
            path,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The socket file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// False once the socket file was deleted or replaced by another file.
    pub fn socket_file_intact(&self) -> bool {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) => m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino,
            Err(e) => e.kind() != io::ErrorKind::NotFound,
        }
    }

    /// Serves until `stop` is raised or the socket file goes away. Errors
    /// are only those of the listening socket itself.
    #[cfg(test)]
    pub fn run(
        &mut self,
        device: &mut dyn Device,
        config: &mut DeviceConfig,
        stop: &AtomicBool,
    ) -> io::Result<Shutdown> {
        loop {
            if stop.load(Ordering::Acquire) {
                return Ok(Shutdown::Stopped);
            }
            if !self.socket_file_intact() {
                return Ok(Shutdown::SocketRemoved);
            }
            if self.serve_pending(device, config, stop, TICK)? {
                return Ok(Shutdown::Stopped);
            }
        }
    }

    /// Waits up to `timeout` for connections and serves every pending one.
    /// Returns true if `stop` was raised while serving.
    pub fn serve_pending(
        &mut self,
        device: &mut dyn Device,
        config: &mut DeviceConfig,
        stop: &AtomicBool,
        timeout: Duration,
    ) -> io::Result<bool> {
        if !poll_one(self.listener.as_raw_fd(), libc::POLLIN, timeout)? {
            return Ok(false);
        }
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let watch = Watch {
                        listener: self.listener.as_raw_fd(),
                        path: &self.path,
                        dev: self.dev,
                        ino: self.ino,
                    };
                    if serve(stream, device, config, stop, Some(watch)) == ConnectionEnd::Stopped {
                        return Ok(true);
                    }
                }
                Err(e) => {
                    return match e.kind() {
                        io::ErrorKind::WouldBlock => Ok(false),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => Ok(false),
                        _ => match e.raw_os_error() {
                            // Out of descriptors or memory: wait for better times.
                            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                                std::thread::sleep(TICK);
                                Ok(false)
                            }
                            _ => Err(e),
                        },
                    };
                }
            }
        }
    }
}

impl AsRawFd for UapiServer {
    fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        if self.socket_file_intact() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn make_private_dir(dir: &Path, ifname: &str) -> io::Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    for _ in 0..100 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let private = dir.join(format!(".{ifname}.sock.{}.{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&private) {
            Ok(()) => {
                // The umask can only have narrowed 0700; make sure of it.
                std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
                return Ok(private);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "cannot create a private directory for the socket",
    ))
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The client closed it, broke the protocol, stalled or gave way.
    Closed,
    /// The stop flag was raised.
    Stopped,
}

/// Serves one connected stream (e.g. one end of a socket pair) until it
/// ends: any number of requests. Returns early when `stop` is raised.
#[cfg(test)]
pub fn serve_connection(
    stream: UnixStream,
    device: &mut dyn Device,
    config: &mut DeviceConfig,
    stop: &AtomicBool,
) -> ConnectionEnd {
    serve(stream, device, config, stop, None)
}

/// What a connection served by [`UapiServer`] keeps an eye on while idle.
#[derive(Clone, Copy)]
struct Watch<'a> {
    /// Other clients waiting to connect.
    listener: RawFd,
    /// The socket file, which must stay ours.
    path: &'a Path,
    dev: u64,
    ino: u64,
}

impl Watch<'_> {
    fn socket_file_gone(&self) -> bool {
        match std::fs::symlink_metadata(self.path) {
            Ok(m) => !(m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino),
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        }
    }
}

fn serve(
    stream: UnixStream,
    device: &mut dyn Device,
    config: &mut DeviceConfig,
    stop: &AtomicBool,
    watch: Option<Watch<'_>>,
) -> ConnectionEnd {
    if stream.set_nonblocking(true).is_err() {
        return ConnectionEnd::Closed;
    }
    let mut conn = Conn {
        fd: stream.as_raw_fd(),
        stream,
        watch,
        stop,
        buf: vec![0u8; READ_BUF].into_boxed_slice(),
        start: 0,
        end: 0,
        consumed: 0,
        last_activity: Instant::now(),
        ended: None,
    };
    match serve_requests(&mut conn, device, config) {
        Err(ConnectionEnd::Stopped) => ConnectionEnd::Stopped,
        _ => ConnectionEnd::Closed,
    }
}

/// Result of reading one line.
enum Line {
    /// A complete line is in the caller's buffer (without `\n`).
    Complete,
    /// A line longer than [`MAX_LINE`] was skipped.
    TooLong,
    /// End of stream (a partial last line is dropped).
    Eof,
}

struct Conn<'a> {
    stream: UnixStream,
    fd: RawFd,
    watch: Option<Watch<'a>>,
    stop: &'a AtomicBool,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Bytes consumed from the stream so far (for the request size limit).
    consumed: u64,
    last_activity: Instant,
    /// Why a write through [`ConnWriter`] failed.
    ended: Option<ConnectionEnd>,
}

type ConnResult<T> = Result<T, ConnectionEnd>;

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        // The buffer saw the keys of every request on this connection.
        self.buf.zeroize();
    }
}

impl Conn<'_> {
    /// Reads one line into `line`. A line longer than [`MAX_LINE`] is
    /// skipped, up to `max_skip` bytes of it; past that the connection ends.
    fn read_line(&mut self, line: &mut Vec<u8>, max_skip: u64) -> ConnResult<Line> {
        line.clear();
        let mut too_long = false;
        let line_start = self.consumed;
        loop {
            if too_long && self.consumed - line_start > max_skip {
                return Err(ConnectionEnd::Closed);
            }
            let avail = self.buf.get(self.start..self.end).unwrap_or(&[]);
            let newline = avail.iter().position(|&b| b == b'\n');
            let take = newline.unwrap_or(avail.len());
            if !too_long {
                if line.len() + take > MAX_LINE {
                    too_long = true;
                    line.clear();
                } else {
                    line.extend_from_slice(&avail[..take]);
                }
            }
            match newline {
                Some(pos) => {
                    self.start += pos + 1;
                    self.consumed += pos as u64 + 1;
                    return Ok(if too_long {
                        Line::TooLong
                    } else {
                        Line::Complete
                    });
                }
                None => {
                    self.consumed += avail.len() as u64;
                    self.start = 0;
                    self.end = 0;
                    if !self.fill()? {
                        return Ok(Line::Eof);
                    }
                }
            }
        }
    }

    /// Reads more bytes into the (empty) buffer; false at EOF.
    fn fill(&mut self) -> ConnResult<bool> {
        loop {
            match (&self.stream).read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    self.last_activity = Instant::now();
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(libc::POLLIN)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(ConnectionEnd::Closed),
            }
        }
    }

    fn write_all(&mut self, mut data: &[u8]) -> ConnResult<()> {
        while !data.is_empty() {
            // SAFETY: `data` is valid for `data.len()` bytes; MSG_NOSIGNAL
            // turns a closed peer into EPIPE instead of SIGPIPE.
            let n = unsafe {
                libc::send(
                    self.fd,
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                data = data.get(n.unsigned_abs()..).unwrap_or(&[]);
                self.last_activity = Instant::now();
                continue;
            }
            match io::Error::last_os_error().kind() {
                io::ErrorKind::WouldBlock => self.wait(libc::POLLOUT)?,
                io::ErrorKind::Interrupted => {}
                _ => return Err(ConnectionEnd::Closed),
            }
        }
        Ok(())
    }

    /// Waits until the stream is ready for `events`, checking the stop flag
    /// every tick and giving way to waiting clients when idle.
    fn wait(&mut self, events: libc::c_short) -> ConnResult<()> {
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Err(ConnectionEnd::Stopped);
            }
            let idle = self.last_activity.elapsed();
            if events == libc::POLLOUT && idle >= WRITE_STALL {
                return Err(ConnectionEnd::Closed);
            }
            if self.watch.is_some_and(|w| w.socket_file_gone()) {
                return Err(ConnectionEnd::Closed);
            }
            let mut fds = [
                libc::pollfd {
                    fd: self.fd,
                    events,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.watch.map_or(-1, |w| w.listener),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // Watch the listener only once idle long enough to give way.
            let nfds = if self.watch.is_some() && idle >= YIELD_AFTER {
                2
            } else {
                1
            };
            let timeout = TICK.as_millis() as libc::c_int;
            // SAFETY: `fds` holds `nfds` (<= 2) initialised pollfd entries.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), nfds, timeout) };
            if r < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ConnectionEnd::Closed);
            }
            if fds[0].revents != 0 {
                return Ok(());
            }
            if nfds == 2 && fds[1].revents & libc::POLLIN != 0 {
                return Err(ConnectionEnd::Closed);
            }
        }
    }
}

/// `io::Write` over a connection, for [`write_get`].
struct ConnWriter<'c, 'a> {
    conn: &'c mut Conn<'a>,
}

impl Write for ConnWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.conn.write_all(buf).map_err(|end| {
            self.conn.ended = Some(end);
            io::Error::new(io::ErrorKind::BrokenPipe, "connection ended")
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn serve_requests(
    conn: &mut Conn<'_>,
    device: &mut dyn Device,
    config: &mut DeviceConfig,
) -> ConnResult<()> {
    // Lines can carry keys: wiped when dropped.
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_LINE));
    loop {
        match conn.read_line(&mut line, 0)? {
            Line::Complete => {}
            Line::TooLong | Line::Eof => return Err(ConnectionEnd::Closed),
        }
        match line.as_slice() {
            b"get=1" => {
                match conn.read_line(&mut line, 0)? {
                    Line::Complete if line.is_empty() => {}
                    Line::Eof => return Err(ConnectionEnd::Closed),
                    _ => {
                        reply_errno(conn, UapiError::TrailingGetData.errno())?;
                        return Err(ConnectionEnd::Closed);
                    }
                }
                let stats = match device.stats() {
                    Ok(stats) => stats,
                    Err(e) => {
                        reply_errno(conn, UapiError::Engine(e).errno())?;
                        continue;
                    }
                };
                let mut w = ConnWriter { conn };
                if write_get(config, &stats, &mut w).is_err() {
                    return Err(conn.ended.take().unwrap_or(ConnectionEnd::Closed));
                }
            }
            b"set=1" => handle_set(conn, device, config, &mut line)?,
            // wireguard-go: "invalid UAPI operation", connection closed.
            _ => return Err(ConnectionEnd::Closed),
        }
    }
}

fn handle_set(
    conn: &mut Conn<'_>,
    device: &mut dyn Device,
    config: &mut DeviceConfig,
    line: &mut Vec<u8>,
) -> ConnResult<()> {
    let start = conn.consumed;
    let mut txn = Some(Transaction::new());
    let mut error: Option<UapiError> = None;
    loop {
        let status = conn.read_line(line, MAX_REQUEST_BYTES)?;
        if conn.consumed - start > MAX_REQUEST_BYTES {
            reply_errno(conn, UapiError::RequestTooLarge(MAX_REQUEST_BYTES).errno())?;
            return Err(ConnectionEnd::Closed);
        }
        match status {
            Line::Eof => {
                let _ = reply_errno(conn, UapiError::Truncated.errno());
                return Err(ConnectionEnd::Closed);
            }
            Line::TooLong => {
                error.get_or_insert(UapiError::LineTooLong(MAX_LINE));
                txn = None;
                continue;
            }
            Line::Complete => {}
        }
        if line.is_empty() || line.as_slice() == b"\r" {
            break;
        }
        if let Some(t) = txn.as_mut() {
            if let Err(e) = t.feed_line(config, line) {
                error = Some(e);
                // Free the overlay now; the rest is only read and dropped.
                txn = None;
            }
        }
    }
    let result = match (error, txn) {
        (Some(e), _) => Err(e),
        (None, Some(t)) => execute(t, config, device),
        (None, None) => Err(UapiError::Truncated),
    };
    reply_errno(conn, result.err().map_or(0, |e| e.errno()))
}

fn reply_errno(conn: &mut Conn<'_>, errno: i32) -> ConnResult<()> {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(b"errno=");
    b.extend_from_slice(errno.to_string().as_bytes());
    b.extend_from_slice(b"\n\n");
    conn.write_all(&b)
}

/// Polls one descriptor; true if ready.
fn poll_one(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one initialised pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(r > 0)
}
