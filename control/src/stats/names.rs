//! Friendly peer names from a wg-quick configuration file: a `# Name = ...`
//! comment inside a `[Peer]` section names that section's `PublicKey`
//! (the convention of wg-quick configuration generators and several
//! dashboards). The file is read again when its modification time
//! changes, so renaming peers needs no restart. Names are labels only:
//! nothing else of the file is used, and nothing secret from it is kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use corewire_dataplane::proto::keys::PublicKey;

/// Biggest names file read (a 100,000-peer wg-quick file is about 15 MiB).
const MAX_FILE: u64 = 256 << 20;
/// Longest name kept (longer ones are cut).
const MAX_NAME: usize = 64;

/// Names by public key.
#[derive(Debug, Default, Clone)]
pub struct PeerNames {
    names: HashMap<PublicKey, String>,
}

impl PeerNames {
    /// Parses wg-quick configuration text.
    pub fn parse(text: &str) -> PeerNames {
        let mut names = HashMap::new();
        let (mut in_peer, mut name, mut key) = (false, None::<String>, None::<PublicKey>);
        let mut flush = |name: &mut Option<String>, key: &mut Option<PublicKey>| {
            if let (Some(n), Some(k)) = (name.take(), key.take()) {
                names.insert(k, n);
            }
            *name = None;
            *key = None;
        };
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                flush(&mut name, &mut key);
                in_peer = line.eq_ignore_ascii_case("[peer]");
                continue;
            }
            if !in_peer {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                if let Some((k, v)) = comment.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("name") {
                        let v: String = v.trim().chars().take(MAX_NAME).collect();
                        if !v.is_empty() {
                            name = Some(v);
                        }
                    }
                }
            } else if let Some((k, v)) = line.split_once('=') {
                if k.trim().eq_ignore_ascii_case("publickey") {
                    key = PublicKey::from_base64(v.trim()).ok();
                }
            }
        }
        flush(&mut name, &mut key);
        PeerNames { names }
    }

    /// The name of `key`, if it has one.
    pub fn get(&self, key: &PublicKey) -> Option<&str> {
        self.names.get(key).map(String::as_str)
    }

    /// How many peers have names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no peer has a name.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The names file, read again when it changes.
#[derive(Debug)]
pub struct NamesFile {
    path: PathBuf,
    seen: Option<SystemTime>,
    names: PeerNames,
}

impl NamesFile {
    /// Watches `path` (read at the first [`current`](Self::current)).
    pub fn new(path: &Path) -> NamesFile {
        NamesFile {
            path: path.to_owned(),
            seen: None,
            names: PeerNames::default(),
        }
    }

    /// The names, read again if the file changed since the last call. A
    /// file that cannot be read keeps the last names (and is logged).
    pub fn current(&mut self) -> &PeerNames {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) => {
                if self.seen.take().is_some() || self.names.is_empty() {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot read the peer names file");
                }
                return &self.names;
            }
        };
        let mtime = meta.modified().ok();
        if mtime.is_some() && mtime == self.seen {
            return &self.names;
        }
        if meta.len() > MAX_FILE {
            tracing::warn!(path = %self.path.display(), "peer names file too large; ignored");
            self.seen = mtime;
            return &self.names;
        }
        match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                self.names = PeerNames::parse(&text);
                self.seen = mtime;
                tracing::info!(path = %self.path.display(), named = self.names.len(), "peer names read");
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the peer names file")
            }
        }
        &self.names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_comments_in_peer_sections() {
        let a = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
        let b = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";
        let text = format!(
            "[Interface]\n# Name = not a peer\nPrivateKey = x\n\n\
             [Peer]\n# Name = alice's laptop\nPublicKey = {a}\nAllowedIPs = 10.0.0.2/32\n\n\
             [Peer]\nPublicKey = {b}\n#name=bob\n\n[Peer]\n# Name = no key\n"
        );
        let n = PeerNames::parse(&text);
        assert_eq!(n.len(), 2);
        let key = |s: &str| PublicKey::from_base64(s).expect("key");
        assert_eq!(n.get(&key(a)), Some("alice's laptop"));
        assert_eq!(n.get(&key(b)), Some("bob"));
    }
}
