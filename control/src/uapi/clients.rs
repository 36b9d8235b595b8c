//! All open UAPI connections, served together on the control thread.
//!
//! Each turn of the control loop, [`Clients::service`] drops the
//! connections past their deadline, drives every connection as far as it
//! goes without waiting ([`Conn::drive`]) and then gives the waiting
//! requests their turn. The configuration is a readers-writer resource:
//!
//! - `get` replies (readers) are written a part at a time while the client
//!   reads; the engine's stats are taken once for all the `get`s that start
//!   together.
//! - A `set`'s body is first read into its connection's read buffer; once
//!   it is all there (or fills the buffer: a bulk body), the `set` queues
//!   for the set turn in arrival order. One `set` at a time holds the turn
//!   until its reply (its transaction is computed over a configuration
//!   nobody else may change), so a client that stalls in the middle of a
//!   small `set` holds no turn and delays nobody; only a bulk body is
//!   streamed while it holds the turn, under its deadline.
//! - A complete `set` executes once no `get` reply is in progress, and no
//!   new `get` starts while it waits, so a reply never mixes two
//!   configurations and a stream of `get`s cannot starve a `set`.
//!
//! Every wait is bounded: a client that does not keep up is dropped at its
//! deadline ([`REQUEST_DEADLINE`]), which ends the wait of those behind it.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corewire_dataplane::engine::config::Device;

use super::apply::{execute, Transaction};
use super::conn::{Conn, State};
use super::error::UapiError;
use super::get::GetReply;
use super::limits::{IDLE_TIMEOUT, MAX_CONNECTIONS};
use crate::config::DeviceConfig;

#[cfg(doc)]
use super::limits::REQUEST_DEADLINE;

/// The open connections.
#[derive(Debug, Default)]
pub struct Clients {
    conns: Vec<Conn>,
    /// The last queue number given to a waiting `set`.
    ticket: u64,
}

impl Clients {
    /// No connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Takes a new connection. At [`MAX_CONNECTIONS`] the connection idle
    /// longest makes room; if none is idle the new one is refused (closed
    /// unanswered). False if it was refused.
    pub fn add(&mut self, stream: UnixStream, now: Instant) -> bool {
        if self.conns.len() >= MAX_CONNECTIONS {
            let oldest = self
                .conns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_idle())
                .min_by_key(|(_, c)| c.idle_since)
                .map(|(i, _)| i);
            match oldest {
                Some(i) => {
                    self.conns.swap_remove(i);
                }
                None => return false,
            }
        }
        match Conn::new(stream, now) {
            Ok(c) => {
                self.conns.push(c);
                true
            }
            Err(_) => false,
        }
    }

    /// Appends one poll(2) entry per connection, in order.
    pub fn pollfds(&self, out: &mut Vec<libc::pollfd>) {
        out.extend(self.conns.iter().map(Conn::pollfd));
    }

    /// How long until a connection's deadline or idle time runs out (the
    /// control loop's poll timeout); `None` without connections.
    pub fn next_expiry(&self, now: Instant) -> Option<Duration> {
        self.conns
            .iter()
            .filter_map(|c| c.expiry(IDLE_TIMEOUT))
            .min()
            .map(|t| t.saturating_duration_since(now))
    }

    /// Serves everything that is ready. True if a request completed (the
    /// caller may then return freed memory to the system).
    pub fn service(
        &mut self,
        device: &mut dyn Device,
        config: &mut DeviceConfig,
        now: Instant,
    ) -> bool {
        for c in &mut self.conns {
            if c.expiry(IDLE_TIMEOUT).is_some_and(|t| now >= t) {
                c.dead = true;
            }
        }
        self.conns.retain(|c| !c.dead);
        self.drive_all(config, now);
        let mut worked = false;
        // Each turn executes at most one `set`, or starts `get`s, or grants
        // the set turn; the number of connections bounds the rounds.
        for _ in 0..=self.conns.len() {
            if !self.schedule(device, config, now) {
                break;
            }
            worked = true;
            self.drive_all(config, now);
        }
        self.conns.retain(|c| !c.dead);
        worked
    }

    fn drive_all(&mut self, config: &DeviceConfig, now: Instant) {
        for c in &mut self.conns {
            c.drive(config, &mut self.ticket, now);
        }
    }

    /// Gives waiting requests their turn; true if anything changed.
    fn schedule(
        &mut self,
        device: &mut dyn Device,
        config: &mut DeviceConfig,
        now: Instant,
    ) -> bool {
        let getting = self
            .conns
            .iter()
            .any(|c| !c.dead && matches!(c.state, State::Getting(_)));
        let ready = self
            .conns
            .iter()
            .position(|c| !c.dead && matches!(c.state, State::SetReady(_)));

        if let Some(i) = ready {
            if getting {
                return false;
            }
            let c = &mut self.conns[i];
            let State::SetReady(result) = std::mem::replace(&mut c.state, State::Idle) else {
                return false;
            };
            let result = result.and_then(|t: Transaction| execute(t, config, device));
            c.resume(State::Idle, now);
            c.reply_errno(result.err().map_or(0, |e| e.errno()));
            return true;
        }

        let mut changed = false;
        let holder = self.conns.iter().any(|c| !c.dead && c.state.holds_set());
        if !holder {
            let next = self
                .conns
                .iter()
                .enumerate()
                .filter_map(|(i, c)| match c.state {
                    State::SetQueued {
                        ticket,
                        complete: true,
                    } if !c.dead => Some((ticket, i)),
                    _ => None,
                })
                .min();
            if let Some((_, i)) = next {
                self.conns[i].resume(
                    State::Set {
                        txn: Some(Transaction::new()),
                        error: None,
                    },
                    now,
                );
                changed = true;
            }
        }

        if self
            .conns
            .iter()
            .any(|c| !c.dead && matches!(c.state, State::GetWaiting))
        {
            // One stats round trip to the engine for every waiting `get`.
            let stats = device.stats().map(Arc::new);
            for c in &mut self.conns {
                if c.dead || !matches!(c.state, State::GetWaiting) {
                    continue;
                }
                match &stats {
                    Ok(s) => c.resume(State::Getting(GetReply::new(Arc::clone(s))), now),
                    Err(e) => {
                        c.resume(State::Idle, now);
                        c.reply_errno(UapiError::Engine(e.clone()).errno());
                    }
                }
            }
            changed = true;
        }
        changed
    }
}
