//! `xylem fqdn cache`: the agent's FQDN cache, the DNS names its pods resolved and the
//! addresses the answers gave (which `toFQDNs` policies let them reach), listed and cleaned.

use crate::error::Error;
use crate::output::{Format, print_json, print_table};
use crate::{Cli, socket};
use xylem_api::{Client, FqdnCacheEntry};

/// `xylem fqdn cache list`: one row per address; `-o json` prints the agent's array as it is.
pub(crate) fn list(cli: &Cli, output: Format) -> Result<(), Error> {
    let client = Client::new(socket(cli)?);
    if output == Format::Json {
        let v: serde_json::Value = client.get("/v1/fqdn/cache")?;
        print_json(&v);
        return Ok(());
    }
    let entries = client.fqdn_cache()?;
    print_table(
        &["ENDPOINT", "NAME", "IP", "EXPIRES", "IN-USE"],
        &rows(&entries),
    );
    Ok(())
}

/// `xylem fqdn cache clean [--matchpattern P]`: says what went.
pub(crate) fn clean(cli: &Cli, matchpattern: Option<&str>) -> Result<(), Error> {
    let r = Client::new(socket(cli)?).fqdn_cache_clean(matchpattern)?;
    println!(
        "removed {} name{} ({} address{}) from the FQDN cache",
        r.names,
        if r.names == 1 { "" } else { "s" },
        r.ips,
        if r.ips == 1 { "" } else { "es" }
    );
    Ok(())
}

fn rows(entries: &[FqdnCacheEntry]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for e in entries {
        for ip in &e.ips {
            // Whole seconds: the nanoseconds say nothing about a TTL.
            let expires = match ip.expires_at.split_once('.') {
                Some((secs, _)) => format!("{secs}Z"),
                None => ip.expires_at.clone(),
            };
            rows.push(vec![
                e.endpoint.clone(),
                e.name.clone(),
                ip.ip.to_string(),
                expires,
                if ip.in_use { "yes" } else { "no" }.into(),
            ]);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use xylem_api::FqdnCacheIp;

    #[test]
    fn each_address_is_a_row_with_its_expiry_in_seconds() {
        let e = FqdnCacheEntry {
            endpoint: "default/pod-a".into(),
            name: "a.domain.com.".into(),
            ips: vec![
                FqdnCacheIp {
                    ip: [192, 0, 2, 10].into(),
                    expires_at: "2026-11-30T00:00:05.000000000Z".into(),
                    in_use: true,
                },
                FqdnCacheIp {
                    ip: [192, 0, 2, 11].into(),
                    expires_at: "2026-11-30T00:00:06Z".into(),
                    in_use: false,
                },
            ],
        };
        assert_eq!(
            rows(&[e]),
            [
                [
                    "default/pod-a",
                    "a.domain.com.",
                    "192.0.2.10",
                    "2026-11-30T00:00:05Z",
                    "yes"
                ],
                [
                    "default/pod-a",
                    "a.domain.com.",
                    "192.0.2.11",
                    "2026-11-30T00:00:06Z",
                    "no"
                ]
            ]
        );
    }
}
