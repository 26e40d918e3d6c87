//! ESP tunnel mode with AES-GCM (`xylem_dataplane::esp`): seal and open per packet at 64, 512
//! and 1400 bytes of inner packet, AES-128-GCM and AES-256-GCM, each against `ring`'s own AEAD
//! on a buffer of the same length in the same run (`raw-seal`, `raw-open`), so the ratio is
//! the cost of the ESP framing: header, IV, padding, trailer, the sequence counter and, on
//! open, the SPI lookup and the anti-replay window.
//!
//! Throughput is reported in bytes of inner packet. `open` needs a sequence number its window
//! has not seen: each iteration opens the next packet of one long-lived SA, sealed outside the
//! timed part (`iter_batched_ref`), so the SA's key and window are as warm as a worker's and
//! the window slides as it does under traffic. The target from the issue: at least 3 GB/s per core for 1400-byte packets
//! with AES-128-GCM.
//!
//! Pin it (`taskset -c 1`) and read ratios.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use xylem_dataplane::esp::{HEADROOM, Key, KeysIn, SaOut, open, seal, sealed_len};

const SPI: u32 = 3;

fn key_bytes(len: usize) -> Vec<u8> {
    (0..len as u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect()
}

fn inbound(material: &[u8]) -> KeysIn {
    let mut keys = KeysIn::new();
    keys.insert(Key::new(SPI, material).expect("key"))
        .expect("room");
    keys
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("esp");
    for (alg_name, alg, key_len) in [("aes128", &AES_128_GCM, 16), ("aes256", &AES_256_GCM, 32)] {
        let material = key_bytes(key_len + 4);
        for size in [64usize, 512, 1400] {
            g.throughput(Throughput::Bytes(size as u64));
            let total = sealed_len(size);

            // ESP seal: the inner packet is rewritten every iteration, so what is sealed is
            // always plaintext of the same length.
            let sa = SaOut::new(Key::new(SPI, &material).expect("key"));
            let mut buf = vec![0u8; total];
            g.bench_function(format!("seal/{alg_name}/{size}"), |b| {
                b.iter(|| {
                    buf[HEADROOM..HEADROOM + size].fill(0x5a);
                    black_box(seal(&sa, black_box(&mut buf), size).expect("seal"))
                })
            });

            // Raw ring seal of the same plaintext length, same key material.
            let raw = LessSafeKey::new(UnboundKey::new(alg, &material[..key_len]).expect("key"));
            let mut data = vec![0u8; size];
            let mut n = 0u64;
            g.bench_function(format!("raw-seal/{alg_name}/{size}"), |b| {
                b.iter(|| {
                    data.fill(0x5a);
                    n += 1;
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&n.to_be_bytes());
                    black_box(
                        raw.seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key(nonce),
                            Aad::from([0u8; 8]),
                            black_box(&mut data),
                        )
                        .expect("seal"),
                    )
                })
            });

            // ESP open in steady state: one long-lived inbound SA (its key and window warm, as
            // a worker's are), each iteration a new packet of the same SA, sealed in the
            // untimed setup with the next sequence number.
            let keys = inbound(&material);
            let tx = SaOut::new(Key::new(SPI, &material).expect("key"));
            let mut plain = vec![0u8; total];
            plain[HEADROOM..HEADROOM + size].fill(0x5a);
            g.bench_function(format!("open/{alg_name}/{size}"), |b| {
                b.iter_batched_ref(
                    || {
                        let mut p = plain.clone();
                        seal(&tx, &mut p, size).expect("seal");
                        p
                    },
                    |packet| black_box(open(&keys, packet).expect("open")),
                    BatchSize::SmallInput,
                )
            });

            // Raw ring open of the same ciphertext and tag length.
            let mut ct = vec![0x5au8; size];
            let nonce = [0u8; 12];
            let tag = raw
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from([0u8; 8]),
                    &mut ct,
                )
                .expect("seal");
            ct.extend_from_slice(tag.as_ref());
            g.bench_function(format!("raw-open/{alg_name}/{size}"), |b| {
                b.iter_batched_ref(
                    || ct.clone(),
                    |packet| {
                        black_box(
                            raw.open_in_place(
                                Nonce::assume_unique_for_key(nonce),
                                Aad::from([0u8; 8]),
                                packet,
                            )
                            .expect("open")
                            .len(),
                        )
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
