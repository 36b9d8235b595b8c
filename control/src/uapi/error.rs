//! Why a UAPI request was refused, and the errno it answers with.
//!
//! Messages name the key, never the value: values can be secrets.

use corewire_dataplane::engine::config::ApplyError;

/// A refused UAPI request. [`UapiError::errno`] is the negative errno the
/// reply carries (`wg` negates it back for its message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UapiError {
    /// A line without `=` (wireguard-go answers -EPROTO for this).
    #[error("line is not key=value")]
    NotKeyValue,
    /// A key this implementation does not know.
    #[error("unknown key {0:?}")]
    UnknownKey(String),
    /// A device key after the first `public_key` line.
    #[error("device key {0:?} after the first public_key")]
    DeviceKeyInPeer(&'static str),
    /// A peer key before any `public_key` line.
    #[error("peer key {0:?} before any public_key")]
    PeerKeyOutsidePeer(&'static str),
    /// A value that does not parse for its key.
    #[error("invalid value for {key}: expected {expected}")]
    InvalidValue {
        /// The key.
        key: &'static str,
        /// What the value must look like.
        expected: &'static str,
    },
    /// A line longer than the line limit.
    #[error("line longer than {0} bytes")]
    LineTooLong(usize),
    /// A line that is not UTF-8.
    #[error("line is not UTF-8")]
    NotUtf8,
    /// The request is larger than the request limit.
    #[error("request larger than {0} bytes")]
    RequestTooLarge(u64),
    /// The result would have more peers than a device may have.
    #[error("too many peers (at most {0})")]
    TooManyPeers(usize),
    /// The request has more allowed-IP lines than the per-request limit.
    #[error("too many allowed_ip lines in one request (at most {0})")]
    TooManyAllowedIps(usize),
    /// The connection ended before the request's empty line.
    #[error("request ended before its empty line")]
    Truncated,
    /// `get=1` not followed by an empty line.
    #[error("trailing data after get=1")]
    TrailingGetData,
    /// The engine refused the changes.
    #[error("engine refused the change: {0}")]
    Engine(ApplyError),
    /// The configuration changed between computing and committing a set
    /// (a programming error in the caller).
    #[error("configuration changed while a set was being applied")]
    StaleCommit,
}

impl UapiError {
    /// The negative errno for the reply (`errno=N`).
    pub fn errno(&self) -> i32 {
        match self {
            UapiError::NotKeyValue | UapiError::Truncated => -libc::EPROTO,
            UapiError::UnknownKey(_)
            | UapiError::DeviceKeyInPeer(_)
            | UapiError::PeerKeyOutsidePeer(_)
            | UapiError::InvalidValue { .. }
            | UapiError::LineTooLong(_)
            | UapiError::NotUtf8
            | UapiError::TrailingGetData => -libc::EINVAL,
            UapiError::RequestTooLarge(_) => -libc::EMSGSIZE,
            UapiError::TooManyPeers(_) | UapiError::TooManyAllowedIps(_) => -libc::ENOMEM,
            // A zero or positive errno would read as success or as
            // "Unknown error" in `wg`: never send one for a failure.
            UapiError::Engine(e) => match e.errno() {
                n if n < 0 => n,
                _ => -libc::EIO,
            },
            UapiError::StaleCommit => -libc::EIO,
        }
    }
}
