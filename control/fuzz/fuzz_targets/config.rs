//! Fuzzes the agent configuration and lab file parsers: parse or a clear error, never a panic.
//! Seeds: `seeds/config/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xylem_api::config::AgentConfig;
use xylem_lab::LabFile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = AgentConfig::parse(text);
    let _ = LabFile::parse(text);
});
