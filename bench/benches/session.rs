//! Batch seal and open through corewire's session API against `ring`'s raw
//! ChaCha20-Poly1305 on the same buffers and the same number of bytes.
//! The report (`micro-report`) divides the two: the session path's
//! overhead (header, padding, counters, replay window) is what is left.

use std::hint::black_box;

use corewire_bench::{cipher_len, nonce, plaintext_batch, raw_key, session_pair, BATCH, MTU};
use corewire_dataplane::proto::messages::HEADROOM;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ring::aead::Aad;

fn seal(c: &mut Criterion) {
    for len in [1420usize, 64] {
        let mut g = c.benchmark_group(format!("seal_{len}"));
        g.throughput(Throughput::Bytes((BATCH * len) as u64));
        let (mut tx, _) = session_pair();
        let mut batch = plaintext_batch(len);
        g.bench_function("session", |b| {
            b.iter(|| {
                for p in batch.iter_mut() {
                    p.set_bounds(HEADROOM, len);
                }
                black_box(tx.seal_batch(&mut batch, MTU).ok());
            })
        });
        let key = raw_key();
        let mut batch = plaintext_batch(len);
        let n = cipher_len(len);
        let mut counter = 0u64;
        g.bench_function("ring", |b| {
            b.iter(|| {
                for p in batch.iter_mut() {
                    p.set_bounds(HEADROOM, n);
                    let tag = key
                        .seal_in_place_separate_tag(nonce(counter), Aad::empty(), p.data_mut())
                        .expect("seal");
                    counter += 1;
                    let _ = black_box(tag);
                }
            })
        });
        g.finish();
    }
}

fn open(c: &mut Criterion) {
    for len in [1420usize, 64] {
        let mut g = c.benchmark_group(format!("open_{len}"));
        g.throughput(Throughput::Bytes((BATCH * len) as u64));
        // Each measured batch needs fresh counters (the replay window
        // refuses repeats), so sealing happens in the untimed setup.
        let (mut tx, mut rx) = session_pair();
        let mut results = vec![Ok(Default::default()); BATCH];
        g.bench_function("session", |b| {
            b.iter_batched_ref(
                || {
                    let mut batch = plaintext_batch(len);
                    tx.seal_batch(&mut batch, MTU).expect("seal");
                    batch
                },
                |batch| {
                    rx.open_batch(batch, &mut results);
                    black_box(&results);
                },
                BatchSize::SmallInput,
            )
        });
        let key = raw_key();
        let n = cipher_len(len);
        let mut counter = 0u64;
        g.bench_function("ring", |b| {
            b.iter_batched_ref(
                || {
                    let mut batch = plaintext_batch(len);
                    let first = counter;
                    for (i, p) in batch.iter_mut().enumerate() {
                        p.set_bounds(HEADROOM, n + 16);
                        let (body, tag) = p.data_mut().split_at_mut(n);
                        let t = key
                            .seal_in_place_separate_tag(nonce(first + i as u64), Aad::empty(), body)
                            .expect("seal");
                        tag.copy_from_slice(t.as_ref());
                    }
                    counter += BATCH as u64;
                    (batch, first)
                },
                |(batch, first)| {
                    for (i, p) in batch.iter_mut().enumerate() {
                        let out = key
                            .open_in_place(nonce(*first + i as u64), Aad::empty(), p.data_mut())
                            .expect("open");
                        black_box(out.len());
                    }
                },
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
}

criterion_group!(benches, seal, open);
criterion_main!(benches);
