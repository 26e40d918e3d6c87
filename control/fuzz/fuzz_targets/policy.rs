//! Fuzzes the CiliumNetworkPolicy parser: any input is either parsed or rejected with an error,
//! never a panic; whatever parses also compiles.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xylem_control::policy::{IdentityAllocator, compile, parse_policies};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policies) = parse_policies(text) {
        let mut ids = IdentityAllocator::default();
        let _ = compile(1, &policies, &[], &[], &mut ids);
    }
});
