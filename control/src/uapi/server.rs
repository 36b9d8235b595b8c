//! The UAPI unix socket: `/var/run/wireguard/<ifname>.sock`.
//!
//! [`UapiServer::bind`] creates the socket. The daemon's control loop polls
//! the listener and every connection ([`UapiServer::pollfds`]) together
//! with its signals and link events, and calls [`UapiServer::service`]:
//! connections are accepted and served concurrently by
//! [`Clients`](super::clients::Clients), none of them ever blocks the
//! thread, and each has a deadline (see [`super::limits`]). Any number of
//! `get=1` / `set=1` requests may share a connection; sets are streamed
//! line by line into a [`Transaction`](super::apply::Transaction), never
//! buffered whole.
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
//! Lines longer than [`MAX_LINE`](super::limits::MAX_LINE) fail the request with -EINVAL (the rest of
//! the line is skipped, not stored); a request larger than
//! [`MAX_REQUEST_BYTES`](super::limits::MAX_REQUEST_BYTES) fails with -EMSGSIZE and closes the connection.
//! The connection count, deadlines and buffers are bounded as
//! [`super::limits`] says.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use corewire_dataplane::engine::config::Device;

use super::clients::Clients;
use crate::config::DeviceConfig;

/// Where `wg` looks for userspace interfaces.
pub const SOCKET_DIR: &str = "/var/run/wireguard";
/// Most connections accepted per turn of the control loop.
const ACCEPT_BURST: usize = 64;

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
    clients: Clients,
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
        let listener = bind_private(&path)?;
        listener.set_nonblocking(true)?;
        let meta = std::fs::symlink_metadata(&path)?;
        Ok(Self {
            listener,
            clients: Clients::new(),
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

    /// Appends the poll(2) entries to wait on: the listener first, then
    /// one per connection. Pass the same entries, filled in, to
    /// [`UapiServer::service`].
    pub fn pollfds(&self, out: &mut Vec<libc::pollfd>) {
        out.push(libc::pollfd {
            fd: self.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        self.clients.pollfds(out);
    }

    /// The longest the caller may sleep before [`UapiServer::service`] has
    /// a deadline to enforce; `None` without connections.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        self.clients.next_expiry(now)
    }

    /// Accepts new connections (if the listener is readable: `listener_ready`
    /// is its entry's `revents != 0`) and serves every connection as far as
    /// it goes without waiting. Returns true if a request completed. Errors
    /// are only those of the listening socket itself.
    pub fn service(
        &mut self,
        listener_ready: bool,
        device: &mut dyn Device,
        config: &mut DeviceConfig,
    ) -> io::Result<bool> {
        let now = Instant::now();
        if listener_ready {
            self.accept(now)?;
        }
        Ok(self.clients.service(device, config, now))
    }

    fn accept(&mut self, now: Instant) -> io::Result<()> {
        for _ in 0..ACCEPT_BURST {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if !self.clients.add(stream, now) {
                        tracing::debug!("UAPI: connection refused, all slots busy");
                    }
                }
                Err(e) => {
                    return match e.kind() {
                        io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted => Ok(()),
                        _ => match e.raw_os_error() {
                            // Out of descriptors or memory: try again later
                            // (the pending connection keeps the listener
                            // readable; the caller's poll timeout paces us).
                            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                                Ok(())
                            }
                            _ => Err(e),
                        },
                    };
                }
            }
        }
        Ok(())
    }

    /// Serves until `stop` is raised or the socket file goes away (the
    /// daemon's loop without its other events).
    #[cfg(test)]
    pub fn run(
        &mut self,
        device: &mut dyn Device,
        config: &mut DeviceConfig,
        stop: &std::sync::atomic::AtomicBool,
    ) -> io::Result<Shutdown> {
        let mut fds = Vec::new();
        loop {
            if stop.load(Ordering::Acquire) {
                return Ok(Shutdown::Stopped);
            }
            if !self.socket_file_intact() {
                return Ok(Shutdown::SocketRemoved);
            }
            fds.clear();
            self.pollfds(&mut fds);
            let timeout = self
                .next_timeout(Instant::now())
                .map_or(TICK, |t| t.min(TICK));
            poll(&mut fds, timeout)?;
            self.service(fds[0].revents != 0, device, config)?;
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

/// Binds a unix socket at `path` that is never reachable by anyone but
/// root: it is bound in a private 0700 directory beside `path`, set to
/// 0600 there, and only then renamed into place. A stale socket (nobody
/// answers on it) is replaced; anything else at `path`, or a live socket,
/// is an error.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Ok(_) => {
            if UnixStream::connect(path).is_ok() {
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
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let private = make_private_dir(dir, &name)?;
    let result = (|| {
        let tmp = private.join("s");
        let listener = UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        Ok::<_, io::Error>(listener)
    })();
    let _ = std::fs::remove_file(private.join("s"));
    let _ = std::fs::remove_dir(&private);
    result
}

fn make_private_dir(dir: &Path, name: &str) -> io::Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    for _ in 0..100 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let private = dir.join(format!(".{name}.{}.{n}", std::process::id()));
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

/// How often [`UapiServer::run`] checks its stop flag and socket file.
#[cfg(test)]
pub const TICK: Duration = Duration::from_millis(100);

/// How [`serve_connection`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg(test)]
pub enum ConnectionEnd {
    /// The connection was closed (by the client, a protocol error or a
    /// deadline).
    Closed,
    /// The stop flag was raised.
    Stopped,
}

/// Serves one connected stream (e.g. one end of a socket pair) until it
/// ends: any number of requests.
#[cfg(test)]
pub fn serve_connection(
    stream: UnixStream,
    device: &mut dyn Device,
    config: &mut DeviceConfig,
    stop: &std::sync::atomic::AtomicBool,
) -> ConnectionEnd {
    let mut clients = Clients::new();
    clients.add(stream, Instant::now());
    let mut fds = Vec::new();
    while !clients.is_empty() {
        if stop.load(Ordering::Acquire) {
            return ConnectionEnd::Stopped;
        }
        fds.clear();
        clients.pollfds(&mut fds);
        let timeout = clients
            .next_expiry(Instant::now())
            .map_or(TICK, |t| t.min(TICK));
        if poll(&mut fds, timeout).is_err() {
            break;
        }
        clients.service(device, config, Instant::now());
    }
    ConnectionEnd::Closed
}

/// poll(2) over `fds` for at most `timeout` (rounded up to a millisecond);
/// the number of ready entries. EINTR counts as nothing ready.
pub fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let ms = timeout.as_micros().div_ceil(1000);
    let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a valid, initialised slice of pollfd for the kernel
    // to fill.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(usize::try_from(r).unwrap_or(0))
}
