//! The success result: what ADD prints, what an IPAM plugin answers, and what a previous plugin
//! passes in `prevResult`. Read in any supported version's form and written in the
//! configuration's.

use std::net::Ipv4Addr;

use serde_json::{Map, Value, json};

use crate::conf::Version;
use crate::error::CniError;

/// An IPv4 address with its prefix length (`10.200.0.20/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length, 0 to 32.
    pub prefix: u8,
}

impl IpNet {
    /// Parses `a.b.c.d/n`. Xylem's pods are IPv4 only, so an IPv6 address is refused as such.
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} has no /prefix"))?;
        if a.contains(':') {
            return Err(format!("{s}: Xylem addresses pods with IPv4 only"));
        }
        let addr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 address"))?;
        let prefix = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s:?} has no prefix length of 0 to 32"))?;
        Ok(IpNet { addr, prefix })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `interfaces[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// `name`.
    pub name: String,
    /// `mac`.
    pub mac: Option<String>,
    /// `mtu`.
    pub mtu: Option<u32>,
    /// `sandbox`: the network namespace's path for a pod's interface, absent on the node's.
    pub sandbox: Option<String>,
}

/// `ips[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    /// `address`.
    pub address: IpNet,
    /// `gateway`.
    pub gateway: Option<Ipv4Addr>,
    /// `interface`: an index into `interfaces`.
    pub interface: Option<usize>,
}

/// `routes[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// `dst`.
    pub dst: IpNet,
    /// `gw`.
    pub gw: Option<Ipv4Addr>,
}

/// A result.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CniResult {
    /// `interfaces`.
    pub interfaces: Vec<Interface>,
    /// `ips`.
    pub ips: Vec<IpConfig>,
    /// `routes`.
    pub routes: Vec<Route>,
    /// `dns`, as given.
    pub dns: Option<Value>,
}

impl CniResult {
    /// Reads a result in the 0.4.0 or 1.x form (with or without `ips[].version`); errors name
    /// the field under `at` (`prevResult`, or the IPAM plugin's output).
    pub fn from_value(v: &Value, at: &str) -> Result<CniResult, CniError> {
        let Value::Object(obj) = v else {
            return Err(CniError::config(at, "is not an object"));
        };
        let list = |key: &str| -> Result<&[Value], CniError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(&[]),
                Some(Value::Array(a)) => Ok(a.as_slice()),
                Some(_) => Err(CniError::config(&format!("{at}.{key}"), "is not a list")),
            }
        };
        let mut r = CniResult::default();
        for (i, it) in list("interfaces")?.iter().enumerate() {
            let f = format!("{at}.interfaces[{i}]");
            let o = object(it, &f)?;
            r.interfaces.push(Interface {
                name: opt_str(o, "name", &f)?
                    .ok_or_else(|| CniError::config(&format!("{f}.name"), "missing"))?,
                mac: opt_str(o, "mac", &f)?,
                mtu: match o.get("mtu") {
                    None | Some(Value::Null) => None,
                    Some(m) => Some(
                        m.as_u64()
                            .and_then(|m| u32::try_from(m).ok())
                            .ok_or_else(|| CniError::config(&format!("{f}.mtu"), "not a number"))?,
                    ),
                },
                sandbox: opt_str(o, "sandbox", &f)?,
            });
        }
        for (i, ip) in list("ips")?.iter().enumerate() {
            let f = format!("{at}.ips[{i}]");
            let o = object(ip, &f)?;
            let address = opt_str(o, "address", &f)?
                .ok_or_else(|| CniError::config(&format!("{f}.address"), "missing"))?;
            let address =
                IpNet::parse(&address).map_err(|e| CniError::config(&format!("{f}.address"), e))?;
            let interface = match o.get("interface") {
                None | Some(Value::Null) => None,
                Some(n) => {
                    let n = n
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| {
                            CniError::config(&format!("{f}.interface"), "not an index")
                        })?;
                    if n >= r.interfaces.len() {
                        return Err(CniError::config(
                            &format!("{f}.interface"),
                            format!("{n} is past the {} interfaces", r.interfaces.len()),
                        ));
                    }
                    Some(n)
                }
            };
            r.ips.push(IpConfig {
                address,
                gateway: opt_ip(o, "gateway", &f)?,
                interface,
            });
        }
        for (i, rt) in list("routes")?.iter().enumerate() {
            let f = format!("{at}.routes[{i}]");
            let o = object(rt, &f)?;
            let dst = opt_str(o, "dst", &f)?
                .ok_or_else(|| CniError::config(&format!("{f}.dst"), "missing"))?;
            r.routes.push(Route {
                dst: IpNet::parse(&dst).map_err(|e| CniError::config(&format!("{f}.dst"), e))?,
                gw: opt_ip(o, "gw", &f)?,
            });
        }
        // `{}` says nothing, as an absent `dns` does (and is what one is written as).
        r.dns = (obj.get("dns"))
            .filter(|d| !d.is_null() && d.as_object().is_none_or(|o| !o.is_empty()))
            .cloned();
        Ok(r)
    }

    /// The result as JSON in version `version` (`cni_version` its text): before 1.0.0 each IP
    /// carries `version: "4"`.
    pub fn to_json(&self, cni_version: &str, version: Version) -> Value {
        let interfaces: Vec<Value> = (self.interfaces.iter())
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                if let Some(m) = &i.mac {
                    o.insert("mac".into(), json!(m));
                }
                if let Some(m) = i.mtu {
                    o.insert("mtu".into(), json!(m));
                }
                if let Some(s) = &i.sandbox {
                    o.insert("sandbox".into(), json!(s));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = (self.ips.iter())
            .map(|ip| {
                let mut o = Map::new();
                if version.has_ip_version_field() {
                    o.insert("version".into(), json!("4"));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(g) = ip.gateway {
                    o.insert("gateway".into(), json!(g.to_string()));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = (self.routes.iter())
            .map(|r| match r.gw {
                Some(gw) => json!({"dst": r.dst.to_string(), "gw": gw.to_string()}),
                None => json!({"dst": r.dst.to_string()}),
            })
            .collect();
        json!({
            "cniVersion": cni_version,
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": self.dns.clone().unwrap_or_else(|| json!({})),
        })
    }
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, CniError> {
    v.as_object()
        .ok_or_else(|| CniError::config(field, "is not an object"))
}

fn opt_str(o: &Map<String, Value>, key: &str, at: &str) -> Result<Option<String>, CniError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(CniError::config(&format!("{at}.{key}"), "is not a string")),
    }
}

fn opt_ip(o: &Map<String, Value>, key: &str, at: &str) -> Result<Option<Ipv4Addr>, CniError> {
    opt_str(o, key, at)?
        .map(|s| {
            s.parse().map_err(|_| {
                CniError::config(
                    &format!("{at}.{key}"),
                    format!("{s:?} is not an IPv4 address"),
                )
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_host_locals_answers_in_both_forms() {
        let v04 = json!({"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.200.0.20/24","gateway":"10.200.0.1"}],"dns":{}});
        let v10 = json!({"cniVersion":"1.0.0","ips":[{"address":"10.200.0.20/24","gateway":"10.200.0.1"}],"dns":{}});
        for v in [v04, v10] {
            let r = CniResult::from_value(&v, "ipam").unwrap();
            assert_eq!(r.ips[0].address, IpNet::parse("10.200.0.20/24").unwrap());
            assert_eq!(r.ips[0].gateway, Some(Ipv4Addr::new(10, 200, 0, 1)));
        }
    }

    #[test]
    fn writes_each_versions_form() {
        let r = CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("0e:00:00:00:00:01".into()),
                mtu: Some(1500),
                sandbox: Some("/var/run/netns/x".into()),
            }],
            ips: vec![IpConfig {
                address: IpNet::parse("10.200.0.20/32").unwrap(),
                gateway: Some(Ipv4Addr::new(10, 200, 0, 1)),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: IpNet::parse("0.0.0.0/0").unwrap(),
                gw: Some(Ipv4Addr::new(10, 200, 0, 1)),
            }],
            dns: None,
        };
        let old = r.to_json("0.4.0", Version(0, 4, 0));
        assert_eq!(old["ips"][0]["version"], "4");
        let new = r.to_json("1.1.0", Version(1, 1, 0));
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["interfaces"][0]["sandbox"], "/var/run/netns/x");
        assert_eq!(new["ips"][0]["interface"], 0);
        assert_eq!(new["routes"][0]["gw"], "10.200.0.1");
        assert_eq!(new["dns"], json!({}));
        // What is written reads back the same.
        assert_eq!(CniResult::from_value(&new, "r").unwrap().ips, r.ips);
    }

    #[test]
    fn refuses_ipv6_and_dangling_interface_indices() {
        let v6 = json!({"ips":[{"address":"fd00::1/64"}]});
        assert!(
            CniResult::from_value(&v6, "p")
                .unwrap_err()
                .to_string()
                .contains("IPv4 only")
        );
        let dangling = json!({"interfaces":[],"ips":[{"address":"10.0.0.1/32","interface":0}]});
        let e = CniResult::from_value(&dangling, "p").unwrap_err();
        assert!(e.to_string().contains("p.ips[0].interface"), "{e}");
    }
}
