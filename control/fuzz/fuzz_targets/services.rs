//! Fuzzes the Kubernetes Service and EndpointSlice import: parse or a clear error, never a
//! panic, and every service that parses has a frontend. Seeds: `seeds/services/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Every other slice's service is "known" on odd lengths, so the join-later path runs too.
    let known = |_: &str, _: &str| data.len() % 2 == 1;
    if let Ok(import) = xylem_services::parse_with(text, &known) {
        for s in &import.services {
            assert!(!s.frontends.is_empty(), "a service without a frontend: {s:?}");
        }
    }
});
