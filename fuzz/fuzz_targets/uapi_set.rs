//! The UAPI `set` parser and transaction: a request body (random or mutated
//! from fuzz/seeds/uapi_set) applied to a configuration that already has
//! peers, with a fake engine that accepts or refuses (the first byte
//! chooses). Checked: no panic; an error leaves the configuration exactly
//! as it was; a refused engine never commits; after a success every public
//! key and every allowed IP appears at most once in the `get` reply.
#![no_main]

use std::collections::HashSet;

use corewire::config::DeviceConfig;
use corewire::uapi::apply::{execute, Transaction};
use corewire::uapi::get::write_get;
use corewire_dataplane::engine::config::{ApplyError, Change, Device, DeviceStats};
use libfuzzer_sys::fuzz_target;

/// Accepts every change list, or refuses all of them.
#[derive(Debug)]
struct FakeDevice {
    refuse: bool,
    applied: usize,
}

impl Device for FakeDevice {
    fn apply(&mut self, changes: Vec<Change>) -> Result<(), ApplyError> {
        if self.refuse {
            return Err(ApplyError::AddressInUse(51820));
        }
        self.applied += changes.len();
        Ok(())
    }

    fn stats(&mut self) -> Result<DeviceStats, ApplyError> {
        Ok(DeviceStats::default())
    }
}

/// Three peers with prefixes, a key, a port and a mark: something for the
/// request to remove, replace, update and take prefixes from.
const BASE: &str = "private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a\n\
listen_port=51820\n\
fwmark=7\n\
public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33\n\
allowed_ip=10.0.0.1/32\n\
allowed_ip=fd00::1/128\n\
endpoint=192.0.2.1:51820\n\
public_key=58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376\n\
allowed_ip=10.0.1.0/24\n\
persistent_keepalive_interval=25\n\
public_key=662e14fd594556f522604703340351258903c1fb9cac3d9f1ee4c3c5b9ab5a0b\n\
preshared_key=188515093e952f5f22e865cef3012e72f8b5f0b82b6279be3bbf4b2f7e3a4d9c\n\
allowed_ip=10.0.2.0/24\n";

/// Feeds `body` line by line (up to its first empty line) as the server
/// does, then executes it.
fn set(config: &mut DeviceConfig, device: &mut FakeDevice, body: &[u8]) -> Result<(), i32> {
    let mut txn = Transaction::new();
    for line in body.split(|&b| b == b'\n') {
        if line.is_empty() || line == b"\r" {
            break;
        }
        txn.feed_line(config, line).map_err(|e| e.errno())?;
    }
    execute(txn, config, device).map_err(|e| e.errno())
}

fn get(config: &DeviceConfig) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = write_get(config, &DeviceStats::default(), &mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let mut config = DeviceConfig::new();
    let mut device = FakeDevice {
        refuse: false,
        applied: 0,
    };
    if mode & 1 == 0 {
        set(&mut config, &mut device, BASE.as_bytes()).expect("the base configuration applies");
    }
    device.refuse = mode & 2 != 0;
    let before = get(&config);
    let generation = config.generation();
    let applied = device.applied;

    match set(&mut config, &mut device, body) {
        Err(errno) => {
            assert!(errno < 0, "errno {errno} must be negative");
            assert_eq!(
                config.generation(),
                generation,
                "a failed set changed the configuration"
            );
            assert!(get(&config) == before, "a failed set changed the get reply");
            assert_eq!(device.applied, applied, "a failed set reached the engine");
        }
        Ok(()) => {
            if device.refuse {
                // Only a set without changes succeeds against a refusing engine.
                assert!(get(&config) == before, "a refused set was committed");
            }
            let reply = get(&config);
            let text = String::from_utf8_lossy(&reply);
            assert!(text.ends_with("errno=0\n\n"));
            let mut keys = HashSet::new();
            let mut prefixes = HashSet::new();
            for line in text.lines() {
                if let Some(k) = line.strip_prefix("public_key=") {
                    assert!(keys.insert(k.to_owned()), "peer {k} listed twice");
                }
                if let Some(p) = line.strip_prefix("allowed_ip=") {
                    assert!(prefixes.insert(p.to_owned()), "prefix {p} owned twice");
                }
            }
            assert_eq!(keys.len(), config.peer_count());
        }
    }
});
