//! The cross-platform WireGuard UAPI (wireguard.com/xplatform), as `wg` and
//! `wg-quick` speak it to wireguard-go.
//!
//! - [`request`]: a `set=1` body, line by line, into typed [`SetLine`]s.
//! - [`apply`]: a `set` as an all-or-nothing transaction over the
//!   [`DeviceConfig`](crate::config::DeviceConfig): minimal engine
//!   [`Change`](corewire_dataplane::engine::config::Change)s, committed only
//!   when the engine accepts them.
//! - [`get`]: the `get=1` reply, written a part at a time.
//! - [`server`]: the unix socket; [`clients`]: its connections, served
//!   together; [`conn`]: one connection's state machine; [`limits`]: every
//!   bound.
//!
//! Every failure answers a negative errno ([`UapiError::errno`]).

pub mod apply;
pub mod clients;
pub mod conn;
pub mod error;
pub mod get;
pub mod limits;
pub mod request;
pub mod server;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_memnet;
