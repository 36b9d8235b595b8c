//! Peers added and removed, in the log (info level), rate-limited so a
//! bulk `wg addconf` of 100,000 peers writes a few lines and a count, not
//! 100,000 lines: at most [`PER_REQUEST`] lines per UAPI request, then one
//! line with how many more.

use corewire_dataplane::proto::keys::PublicKey;

/// Lines per kind (added, removed) per request before the rest is counted.
pub const PER_REQUEST: usize = 10;

/// Logs the peers one request added and removed.
pub fn peers_changed(added: &[PublicKey], removed: &[PublicKey]) {
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    for (what, keys) in [("peer added", added), ("peer removed", removed)] {
        for k in keys.iter().take(PER_REQUEST) {
            tracing::info!(peer = %k, "{what}");
        }
        if keys.len() > PER_REQUEST {
            tracing::info!(
                more = keys.len() - PER_REQUEST,
                total = keys.len(),
                "{what} (the rest not logged one by one)"
            );
        }
    }
}
