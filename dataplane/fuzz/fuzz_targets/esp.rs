//! Fuzzes `xylem_dataplane::esp` with arbitrary bytes.
//!
//! Input layout: byte 0 is the mode, the rest the data.
//! - mode bit 0 clear: the data is an ESP packet (SPI to ICV) opened with a fixed set of two
//!   receiving keys, SPI 0x01020304 (AES-128-GCM, key and salt bytes 0, 1, …, 19) and SPI
//!   0x05060708 (AES-256-GCM, bytes 0, 1, …, 35), and a fresh window (`make_esp_seeds.py`
//!   writes valid packets for these keys);
//! - mode bit 0 set: the data is an inner packet sealed with one of those keys (mode bit 1 picks
//!   AES-256) and opened again;
//! - mode bit 2 set (the decapsulation path of the pipeline): the data is an inner packet, sealed
//!   with the AES-128 key by the node 10.199.0.12 and run through `pipeline::process` on the
//!   uplink of node 10.199.0.11, which holds that key for it (mode bit 3: the data is a whole
//!   frame arriving on the uplink as it is, ESP or not).
//!
//! Checks, beyond "does not panic":
//! - `open`: an accepted packet's inner range lies after the header and before the trailer and
//!   ICV, the SPI and sequence number are the header's, and opening the same bytes again is
//!   `Replay`;
//! - seal then open: `seal` returns `sealed_len`, and `open` gives back the same inner bytes;
//! - the pipeline: nothing from the uplink is ever sent back out of it, and what it forwards
//!   goes to the one local pod, to the pod's MAC, from no local address, and (when it came
//!   sealed) from the peer's pod CIDR.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use xylem_dataplane::conntrack::{Conntrack, CtConfig};
use xylem_dataplane::esp::{
    self, EspError, HEADROOM, ICV_LEN, Key, KeysIn, MIN_LEN, PeerSas, SaOut, TAILROOM_MAX,
};
use xylem_dataplane::frame::Frame;
use xylem_dataplane::pipeline::{self, Verdict};
use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Neighbor, Peer, Prefix, Tables, Uplink};
use xylem_dataplane::wire::ipv4;

const SPI_128: u32 = 0x0102_0304;
const SPI_256: u32 = 0x0506_0708;

fn key(spi: u32) -> Key {
    let len = if spi == SPI_128 { 20 } else { 36 };
    let bytes: Vec<u8> = (0..len).collect();
    Key::new(spi, &bytes).expect("fixed key")
}

fn keys_in() -> KeysIn {
    let mut keys = KeysIn::new();
    keys.insert(key(SPI_128)).expect("room");
    keys.insert(key(SPI_256)).expect("room");
    keys
}

fn open_arbitrary(data: &[u8]) {
    let keys = keys_in();
    let mut buf = data.to_vec();
    match esp::open(&keys, &mut buf) {
        Ok(opened) => {
            assert!(data.len() >= MIN_LEN);
            assert_eq!(opened.inner.start, HEADROOM);
            assert!(
                opened.inner.end + 2 + ICV_LEN <= data.len(),
                "inner runs into the trailer"
            );
            assert_eq!(opened.spi.to_be_bytes(), data[..4]);
            assert_eq!(opened.seq.to_be_bytes(), data[4..8]);
            assert_eq!(esp::open(&keys, &mut data.to_vec()), Err(EspError::Replay));
        }
        Err(EspError::Truncated) => assert!(data.len() < MIN_LEN),
        Err(_) => {}
    }
}

fn roundtrip(aes256: bool, inner: &[u8]) {
    let spi = if aes256 { SPI_256 } else { SPI_128 };
    let sa = SaOut::new(key(spi));
    let mut buf = vec![0; HEADROOM + inner.len() + TAILROOM_MAX];
    buf[HEADROOM..HEADROOM + inner.len()].copy_from_slice(inner);
    let n = esp::seal(&sa, &mut buf, inner.len()).expect("seal");
    assert_eq!(n, esp::sealed_len(inner.len()));
    let opened = esp::open(&keys_in(), &mut buf[..n]).expect("open of a sealed packet");
    assert_eq!(opened.spi, spi);
    assert_eq!(opened.seq, 1);
    assert_eq!(&buf[opened.inner], inner);
}

/// Node 10.199.0.11's tables: one pod 10.200.0.10 on port 1, the uplink on port 2, and the
/// encrypting peer 10.199.0.12 (pods 10.200.1.0/24) whose packets open with [`keys_in`].
fn node_tables() -> Tables {
    let mut t = Tables::new(
        1,
        Mode::Full,
        Gateway {
            mac: MacAddr([0x0e, 0, 0, 0, 0, 1]),
            ipv4: Ipv4Addr::new(10, 200, 0, 1),
        },
    );
    let pod = Neighbor {
        port: 1,
        mac: MacAddr(POD_MAC),
    };
    t.add_route(Ipv4Addr::new(10, 200, 0, 10), pod)
        .expect("route");
    t.set_uplink(Uplink {
        port: UPLINK,
        ip: Ipv4Addr::new(10, 199, 0, 11),
        mac: MacAddr(UPLINK_MAC),
        pod_cidr: Prefix::new(Ipv4Addr::new(10, 200, 0, 0), 24),
    })
    .expect("uplink");
    t.add_peer(Peer {
        name: "node2".into(),
        node_ip: Ipv4Addr::new(10, 199, 0, 12),
        pod_cidr: Prefix::new(Ipv4Addr::new(10, 200, 1, 0), 24),
        mac: Some(MacAddr(PEER_MAC)),
        esp: Some(Arc::new(PeerSas {
            out: Some(Arc::new(SaOut::new(key(SPI_128)))),
            inbound: keys_in(),
            counters: Default::default(),
        })),
    })
    .expect("peer");
    t
}

const UPLINK: u16 = 2;
const POD_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
const UPLINK_MAC: [u8; 6] = [0x0e, 0x78, 0x79, 0x75, 0, 1];
const PEER_MAC: [u8; 6] = [0x0e, 0x78, 0x79, 0x75, 0, 2];

/// `inner` sealed by the peer and framed as it arrives on the uplink.
fn from_peer(inner: &[u8]) -> Vec<u8> {
    let sa = SaOut::new(key(SPI_128));
    let mut esp_buf = vec![0; HEADROOM + inner.len() + TAILROOM_MAX];
    esp_buf[HEADROOM..HEADROOM + inner.len()].copy_from_slice(inner);
    let n = esp::seal(&sa, &mut esp_buf, inner.len()).expect("seal");
    let mut f = Vec::with_capacity(34 + n);
    f.extend_from_slice(&UPLINK_MAC);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ipv4::Repr {
        src: [10, 199, 0, 12],
        dst: [10, 199, 0, 11],
        protocol: xylem_dataplane::wire::ip::Protocol::ESP,
        payload_len: n as u16,
        ttl: 64,
        tos: 0,
    }
    .emit(&mut ip);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&esp_buf[..n]);
    f
}

/// Runs `frame` through the uplink; `sealed`: it is ESP from the peer, so what comes out must
/// be from the peer's pods.
fn through_pipeline(frame: &[u8], sealed: bool) {
    let tables = node_tables();
    let mut ct = Conntrack::new(&CtConfig {
        capacity: 64,
        ..Default::default()
    });
    let mut buf = vec![0u8; 256 + 4096];
    let len = frame.len().min(4096);
    buf[256..256 + len].copy_from_slice(&frame[..len]);
    let mut f = Frame::with_headroom(&mut buf, 256, len);
    let o = pipeline::process(1, UPLINK, &mut f, &tables, &mut ct);
    match o.verdict {
        Verdict::Forward(port) => {
            assert_eq!(port, 1, "only the local pod is reachable from the uplink");
            let out = f.data();
            assert_eq!(&out[..6], &POD_MAC);
            let src = Ipv4Addr::new(out[26], out[27], out[28], out[29]);
            assert!(!tables.is_local(src), "no local source from the uplink");
            if sealed {
                assert_eq!(&out[26..29], &[10, 200, 1], "from the peer's pods only");
            }
        }
        Verdict::IcmpError(port) | Verdict::TooBig(port) | Verdict::Refused { port, .. } => {
            assert_ne!(port, UPLINK, "never answered back out of the uplink")
        }
        Verdict::SlowPath | Verdict::Drop(_) => {}
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    if mode & 8 != 0 {
        through_pipeline(data, false);
    } else if mode & 4 != 0 {
        through_pipeline(&from_peer(data), true);
    } else if mode & 1 == 0 {
        open_arbitrary(data);
    } else {
        roundtrip(mode & 2 != 0, data);
    }
});
