//! Peers added and removed, in the log (info level), rate-limited so a
//! bulk `wg addconf` of 100,000 peers writes a few lines and a count, not
//! 100,000 lines: at most [`PER_REQUEST`] lines per UAPI request, then one
//! line with how many more.

use corewire_dataplane::proto::keys::PublicKey;

/// Lines per kind (added, removed) per request before the rest is counted.
pub const PER_REQUEST: usize = 10;

/// Logs the peers one request added and removed (callers check that info
/// is enabled before they gather them).
pub fn peers_changed(
    added: impl IntoIterator<Item = PublicKey>,
    removed: impl IntoIterator<Item = PublicKey>,
) {
    log_kind("peer added", added.into_iter());
    log_kind("peer removed", removed.into_iter());
}

fn log_kind(what: &str, keys: impl Iterator<Item = PublicKey>) {
    let mut total = 0usize;
    for k in keys {
        if total < PER_REQUEST {
            tracing::info!(peer = %k, "{what}");
        }
        total += 1;
    }
    if total > PER_REQUEST {
        tracing::info!(
            more = total - PER_REQUEST,
            total,
            "{what} (the rest not logged one by one)"
        );
    }
}
