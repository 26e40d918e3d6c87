//! Fuzzes what xylem-cni reads from a runtime: the network configuration on stdin (with its
//! `prevResult` and GC's attachment list), a conflist, and `CNI_ARGS`. Parse or an error with
//! one of the specification's codes, never a panic; and a result that parses is written and
//! read back the same. Seeds: `seeds/cni/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xylem_cni::conf::{ConfList, NetConf};
use xylem_cni::env::Env;
use xylem_cni::result::CniResult;

fuzz_target!(|data: &[u8]| {
    for e in [
        NetConf::parse(data).err(),
        ConfList::parse(data).err(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(matches!(e.code.as_u32(), 1 | 2 | 6 | 7), "{e}");
    }
    if let Ok(conf) = NetConf::parse(data)
        && let Some(prev) = conf.prev_result
    {
        let again = CniResult::from_value(&prev.to_json(&conf.cni_version, conf.version), "r")
            .expect("a written result reads back");
        assert_eq!(again, prev);
    }
    // The same bytes as CNI_ARGS of an ADD.
    if let Ok(args) = std::str::from_utf8(data) {
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_ARGS", args),
        ];
        match Env::read(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())) {
            Ok(env) => {
                let (ns, name) = env.endpoint_name();
                assert!(!ns.is_empty() && !name.is_empty());
            }
            Err(e) => assert_eq!(e.code.as_u32(), 4, "{e}"),
        }
    }
});
