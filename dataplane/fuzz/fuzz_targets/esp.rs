//! Fuzzes `xylem_dataplane::esp` with arbitrary bytes.
//!
//! Input layout: byte 0 is the mode, the rest the data.
//! - mode bit 0 clear: the data is an ESP packet (SPI to ICV) opened with a fixed set of two
//!   receiving keys, SPI 0x01020304 (AES-128-GCM, key and salt bytes 0, 1, …, 19) and SPI
//!   0x05060708 (AES-256-GCM, bytes 0, 1, …, 35), and a fresh window (`make_esp_seeds.py`
//!   writes valid packets for these keys);
//! - mode bit 0 set: the data is an inner packet sealed with one of those keys (mode bit 1 picks
//!   AES-256) and opened again.
//!
//! Checks, beyond "does not panic":
//! - `open`: an accepted packet's inner range lies after the header and before the trailer and
//!   ICV, the SPI and sequence number are the header's, and opening the same bytes again is
//!   `Replay`;
//! - seal then open: `seal` returns `sealed_len`, and `open` gives back the same inner bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xylem_dataplane::esp::{
    self, EspError, HEADROOM, ICV_LEN, Key, KeysIn, MIN_LEN, SaOut, TAILROOM_MAX,
};

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

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        open_arbitrary(data);
    } else {
        roundtrip(mode & 2 != 0, data);
    }
});
