//! Handshakes per second on one core, through the interface as the engine
//! drives it (mac1 checks, index allocation, peer lookup included):
//! - `full`: initiation created, answered and the response consumed;
//! - `respond`: what a responder spends on one initiation (the DoS-relevant
//!   figure: open, verify, answer).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use corewire_dataplane::proto::interface::{Interface, Received};
use corewire_dataplane::proto::keys::PrivateKey;
use corewire_dataplane::proto::peer::PeerId;
use corewire_dataplane::proto::session::PacketBuf;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

/// Simulated time moves on by more than REKEY_TIMEOUT per handshake, so
/// the per-peer initiation rate limit never refuses one.
const STEP: Duration = Duration::from_secs(6);

struct Pair {
    a: Interface,
    pa: PeerId,
    b: Interface,
    now: Instant,
    sa: SocketAddr,
    sb: SocketAddr,
}

fn pair() -> Pair {
    let now = Instant::now();
    let wall = SystemTime::now();
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let (pka, pkb) = (ka.public_key(), kb.public_key());
    let mut a = Interface::new(now, wall);
    let mut b = Interface::new(now, wall);
    a.set_private_key(Some(ka));
    b.set_private_key(Some(kb));
    let pa = a.add_peer(pkb).expect("peer");
    b.add_peer(pka).expect("peer");
    Pair {
        a,
        pa,
        b,
        now,
        sa: "192.0.2.1:51820".parse().expect("addr"),
        sb: "192.0.2.2:51820".parse().expect("addr"),
    }
}

fn handshakes(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    let mut p = pair();
    g.bench_function("full", |bench| {
        bench.iter(|| {
            p.now += STEP;
            let init = p.a.initiate(p.pa, p.now).expect("initiation");
            let mut buf =
                PacketBuf::new(init.as_bytes().to_vec(), 0, init.as_bytes().len()).expect("bounds");
            let Received::Reply { reply, .. } = p.b.receive(p.sa, &mut buf, p.now) else {
                panic!("no response")
            };
            let mut buf = PacketBuf::new(reply.as_bytes().to_vec(), 0, reply.as_bytes().len())
                .expect("bounds");
            let done = p.a.receive(p.sb, &mut buf, p.now);
            assert!(matches!(done, Received::HandshakeComplete { .. }));
            black_box(done);
        })
    });
    let mut p = pair();
    g.bench_function("respond", |bench| {
        bench.iter_batched(
            || {
                p.now += STEP;
                let init = p.a.initiate(p.pa, p.now).expect("initiation");
                (init, p.now)
            },
            |(init, now)| {
                let mut buf = PacketBuf::new(init.as_bytes().to_vec(), 0, init.as_bytes().len())
                    .expect("bounds");
                let r = p.b.receive(p.sa, &mut buf, now);
                assert!(matches!(r, Received::Reply { .. }));
                black_box(r);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, handshakes);
criterion_main!(benches);
