//! The agent's `fqdn` section: how DNS-aware policy (`toFQDNs`, `rules.dns`) treats what it
//! learns and what it refuses, beyond what the policies say. Each field has a command-line
//! override named as Cilium's (`--tofqdns-min-ttl`, `--tofqdns-endpoint-max-ip-per-hostname`,
//! `--tofqdns-dns-reject-response-code`).

use serde::{Deserialize, Serialize};
use xylem_dataplane::dns::DnsOptions;
use xylem_dataplane::wire::dns::{RCODE_NXDOMAIN, RCODE_REFUSED};

use crate::Error;

/// The rcode a query that no `rules.dns` allows is answered with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RejectResponse {
    /// REFUSED (rcode 5), Cilium's default.
    #[default]
    Refused,
    /// NXDOMAIN (rcode 3): the name does not exist. Cilium calls it `nameError`.
    #[serde(alias = "nameError")]
    Nxdomain,
}

impl RejectResponse {
    /// The DNS rcode.
    pub fn rcode(self) -> u8 {
        match self {
            RejectResponse::Refused => RCODE_REFUSED,
            RejectResponse::Nxdomain => RCODE_NXDOMAIN,
        }
    }

    /// The configuration's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectResponse::Refused => "refused",
            RejectResponse::Nxdomain => "nxdomain",
        }
    }
}

impl std::str::FromStr for RejectResponse {
    type Err = String;

    /// `refused`, `nameError` (Cilium's word) or `nxdomain`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "refused" => Ok(RejectResponse::Refused),
            "nameError" | "nxdomain" => Ok(RejectResponse::Nxdomain),
            o => Err(format!(
                "unknown DNS reject response '{o}': use 'refused' or 'nameError' (also 'nxdomain')"
            )),
        }
    }
}

/// DNS-aware policy settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FqdnConfig {
    /// A learned address stays an allowed destination at least this many seconds, whatever
    /// the TTL its answer gave (0, the default: the TTL). `--tofqdns-min-ttl`.
    #[serde(default)]
    pub min_ttl_s: u32,
    /// The most addresses the agent keeps per endpoint and name (default 50, at least 1):
    /// beyond it the oldest addresses no connection uses are forgotten.
    /// `--tofqdns-endpoint-max-ip-per-hostname`.
    #[serde(default = "default_max_ips_per_name")]
    pub max_ips_per_name: u16,
    /// What a denied query is answered with: `refused` (the default) or `nxdomain` (Cilium's
    /// `nameError` is accepted too). `--tofqdns-dns-reject-response-code`.
    #[serde(default)]
    pub reject_response: RejectResponse,
}

fn default_max_ips_per_name() -> u16 {
    50
}

impl Default for FqdnConfig {
    fn default() -> Self {
        FqdnConfig {
            min_ttl_s: 0,
            max_ips_per_name: default_max_ips_per_name(),
            reject_response: RejectResponse::default(),
        }
    }
}

impl FqdnConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_ips_per_name == 0 {
            return Err(Error::config(
                "fqdn.max_ips_per_name",
                "0 would forget every address as soon as it is learned: use 1 to 65535 \
                 (default 50; --tofqdns-endpoint-max-ip-per-hostname sets it too)",
            ));
        }
        Ok(())
    }

    /// The options the dataplane's DNS stage takes, published with every tables revision.
    pub fn dns_options(&self) -> DnsOptions {
        DnsOptions {
            reject_rcode: self.reject_response.rcode(),
            min_ttl_s: self.min_ttl_s,
            max_ips_per_name: self.max_ips_per_name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::AgentConfig;
    use super::*;

    use super::super::tests::GOOD;

    #[test]
    fn fqdn_defaults_to_refused_fifty_addresses_and_the_ttl() {
        let c = AgentConfig::parse(GOOD).unwrap();
        assert_eq!(c.fqdn, FqdnConfig::default());
        assert_eq!(
            c.fqdn.dns_options(),
            DnsOptions {
                reject_rcode: 5,
                min_ttl_s: 0,
                max_ips_per_name: 50
            }
        );
    }

    #[test]
    fn fqdn_takes_each_field_and_cilium_s_name_error() {
        let c = AgentConfig::parse(&format!(
            "{GOOD}fqdn: {{ min_ttl_s: 3600, max_ips_per_name: 3, reject_response: nxdomain }}\n"
        ))
        .unwrap();
        assert_eq!(c.fqdn.min_ttl_s, 3600);
        assert_eq!(c.fqdn.max_ips_per_name, 3);
        assert_eq!(c.fqdn.dns_options().reject_rcode, 3);
        let c =
            AgentConfig::parse(&format!("{GOOD}fqdn: {{ reject_response: nameError }}\n")).unwrap();
        assert_eq!(c.fqdn.reject_response, RejectResponse::Nxdomain);
        assert_eq!("nameError".parse(), Ok(RejectResponse::Nxdomain));
        assert_eq!("refused".parse(), Ok(RejectResponse::Refused));
        let e = "servfail".parse::<RejectResponse>().unwrap_err();
        assert!(e.contains("servfail") && e.contains("nameError"), "{e}");
    }

    #[test]
    fn fqdn_refuses_bad_values_naming_the_field() {
        for (bad, field) in [
            ("max_ips_per_name: 0", "fqdn.max_ips_per_name"),
            ("max_ips_per_name: 70000", "fqdn.max_ips_per_name"),
            ("min_ttl_s: -1", "fqdn.min_ttl_s"),
            ("reject_response: servfail", "fqdn.reject_response"),
            ("max_ips: 3", "max_ips"),
        ] {
            let e = AgentConfig::parse(&format!("{GOOD}fqdn: {{ {bad} }}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
    }
}
