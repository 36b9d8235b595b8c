//! A responder with a real key and one real peer, fed arbitrary datagrams
//! from arbitrary sources, with and without load. Nothing may panic.
//!
//! Random bytes almost never carry a valid mac1, which would stop them at
//! the first check; so the input's first byte picks how to shape the rest:
//! raw; an initiation or response with a correct mac1 (reaching the DH and
//! AEAD code); a transport or cookie message aimed at a live session index
//! after a real handshake (reaching the session's open and replay code).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use corewire_dataplane::proto::cookie::mac1_key;
use corewire_dataplane::proto::crypto;
use corewire_dataplane::proto::interface::{Interface, Received};
use corewire_dataplane::proto::keys::PrivateKey;
use corewire_dataplane::proto::messages::{INITIATION_LEN, RESPONSE_LEN};
use corewire_dataplane::proto::session::PacketBuf;
use libfuzzer_sys::fuzz_target;

/// Fixed keys so that crashes reproduce.
fn keys() -> &'static (PrivateKey, PrivateKey) {
    static KEYS: OnceLock<(PrivateKey, PrivateKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        (
            PrivateKey::from_bytes([0x41; 32]),
            PrivateKey::from_bytes([0x42; 32]),
        )
    })
}

fn bytes_at(data: &[u8], len: usize) -> Vec<u8> {
    let mut v = data.iter().copied().take(len).collect::<Vec<_>>();
    v.resize(len, 0);
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (responder_key, initiator_key) = keys();
    let now = Instant::now();
    let wall = SystemTime::now();
    let mut r = Interface::new(now, wall);
    r.set_private_key(Some(responder_key.clone()));
    let rp = r.add_peer(initiator_key.public_key()).expect("peer");
    r.allow(rp, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 32)
        .expect("prefix");
    if mode & 0x80 != 0 {
        r.signal_load(now);
    }
    let src = match rest.first().copied().unwrap_or(0) % 3 {
        0 => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 51820),
        1 => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 1),
        _ => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
    };
    let pk_r = responder_key.public_key();
    let mut datagrams: Vec<Vec<u8>> = Vec::new();
    match mode & 0x7f {
        // Raw datagrams: the input split on a separator byte.
        0..=31 => datagrams.extend(rest.split(|&b| b == 0xFE).map(<[u8]>::to_vec)),
        // An initiation-shaped message with a valid mac1.
        32..=63 => {
            let mut m = bytes_at(rest, INITIATION_LEN);
            m[..4].copy_from_slice(&[1, 0, 0, 0]);
            let mac1 = crypto::mac(&mac1_key(&pk_r), &[&m[..116]]);
            m[116..132].copy_from_slice(&mac1);
            datagrams.push(m);
        }
        // A response-shaped message with a valid mac1, after we initiated.
        64..=95 => {
            let _ = r.initiate(rp, now);
            let mut m = bytes_at(rest, RESPONSE_LEN);
            m[..4].copy_from_slice(&[2, 0, 0, 0]);
            let mac1 = crypto::mac(&mac1_key(&pk_r), &[&m[..60]]);
            m[60..76].copy_from_slice(&mac1);
            datagrams.push(m);
        }
        // A real handshake, then fuzzed messages at the live session index.
        _ => {
            let mut i = Interface::new(now, wall);
            i.set_private_key(Some(initiator_key.clone()));
            let ip = i.add_peer(pk_r).expect("peer");
            let init = i.initiate(ip, now).expect("initiation");
            let mut p = PacketBuf::new(init.as_bytes().to_vec(), 0, INITIATION_LEN).expect("buf");
            let Received::Reply { reply, .. } = r.receive(src, &mut p, now) else {
                return;
            };
            let index = reply.as_bytes()[4..8].to_vec();
            for chunk in rest.split(|&b| b == 0xFE) {
                let mut m = chunk.to_vec();
                if m.len() >= 8 {
                    m[4..8].copy_from_slice(&index);
                }
                datagrams.push(m);
            }
        }
    }
    let mut t = now;
    for d in datagrams.into_iter().take(64) {
        t += Duration::from_millis(7);
        let len = d.len();
        let Some(mut p) = PacketBuf::new(d, 0, len) else {
            continue;
        };
        let res = r.receive(src, &mut p, t);
        if let Received::Data { .. } = res {
            // Whatever is delivered is a whole IP packet from an allowed source.
            assert!(p.len() >= 20);
        }
    }
    r.tick(t + Duration::from_secs(600), |_, _, _| {});
});
