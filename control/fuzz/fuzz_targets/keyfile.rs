//! Fuzzes the ESP key file parser: parse or a clear error, never a panic; and never a key byte
//! in an error or in `Debug` output. Seeds: `seeds/keyfile/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xylem_api::keyfile::KeyFile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match KeyFile::parse(text) {
        Ok(f) => {
            // The current key is the last one, and every key is 20 or 36 bytes.
            assert_eq!(f.current(), f.keys().last().unwrap());
            for k in f.keys() {
                assert!(matches!(k.material.expose().len(), 20 | 36));
                assert!((1..=15).contains(&k.id));
                let n = k.material.expose().len();
                assert_eq!(format!("{:?}", k.material), format!("Secret({n} bytes)"));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("key file line "), "{msg}");
        }
    }
});
