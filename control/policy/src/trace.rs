//! `policy trace`: the verdict for one flow and the rule that decided it, per direction.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use xylem_dataplane::conntrack::{FlowKey, proto};
use xylem_dataplane::policy::{DirVerdict, Identity, PolicyTables, RuleOrigin, evaluate};

use super::{AllowLocalhost, EndpointSpec, IdentityAllocator, Policy, compile, reserved_name};

/// One end of a traced flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TracePeer {
    /// An address: a pod's, the host's, or any other.
    Ip(Ipv4Addr),
    /// A hypothetical pod with these labels in this namespace.
    Labels {
        /// Its namespace.
        namespace: String,
        /// Its labels.
        labels: BTreeMap<String, String>,
    },
}

/// One direction's part of a [`Trace`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirectionTrace {
    /// The verdict of the endpoint's table.
    pub verdict: DirVerdict,
    /// The deciding rule, if a rule decided.
    pub rule: Option<RuleOrigin>,
}

/// The explanation of a verdict (the API's answer to a trace, which the CLI reads back).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Trace {
    /// Source identity.
    pub src_identity: Identity,
    /// Destination identity.
    pub dst_identity: Identity,
    /// The source endpoint's egress (absent when the source is not a local endpoint).
    pub egress: Option<DirectionTrace>,
    /// The destination endpoint's ingress (absent when the destination is not local).
    pub ingress: Option<DirectionTrace>,
    /// Whether a new connection would be allowed.
    pub allowed: bool,
    /// `allowed`, `policy-denied` or `policy-deny-rule`.
    pub verdict: std::borrow::Cow<'static, str>,
    /// The rule that decided: the deny rule, or the allow rules' first when allowed.
    pub rule: Option<RuleOrigin>,
}

/// Traces `key` against already compiled tables.
pub fn trace_tables(t: &PolicyTables, key: &FlowKey) -> Trace {
    let ev = evaluate(t, key);
    let dir = |v: Option<DirVerdict>| {
        v.map(|verdict| DirectionTrace {
            verdict,
            rule: match verdict {
                DirVerdict::Allowed(r) | DirVerdict::DenyRule(r) => t.origin(r).cloned(),
                _ => None,
            },
        })
    };
    let egress = dir(ev.egress);
    let ingress = dir(ev.ingress);
    let (allowed, verdict, rule) = match ev.drop() {
        Some(xylem_dataplane::policy::PolicyVerdict::Drop { reason, rule, .. }) => (
            false,
            reason.as_str().into(),
            rule.and_then(|r| t.origin(r).cloned()),
        ),
        _ => {
            let rule = [&egress, &ingress]
                .into_iter()
                .flatten()
                .find_map(|d| d.rule.clone());
            (true, "allowed".into(), rule)
        }
    };
    Trace {
        src_identity: ev.src_identity,
        dst_identity: ev.dst_identity,
        egress,
        ingress,
        allowed,
        verdict,
        rule,
    }
}

/// Traces `src → dst:dport/proto` (`proto` an IP protocol number; `dport` ignored for ICMP)
/// under `policies` and `localhost`, compiling a scratch copy that includes any hypothetical
/// `Labels` peers (given addresses in 0.0.0.0/8, which no real peer uses). Identities are taken
/// from a clone of `ids`, so they match the live ones.
#[expect(
    clippy::too_many_arguments,
    reason = "the inputs of a compilation plus the flow"
)]
pub fn trace(
    policies: &[Policy],
    endpoints: &[EndpointSpec],
    host_addrs: &[Ipv4Addr],
    localhost: AllowLocalhost,
    ids: &IdentityAllocator,
    src: &TracePeer,
    dst: &TracePeer,
    dport: u16,
    proto: u8,
) -> Trace {
    let mut eps = endpoints.to_vec();
    let mut place = |p: &TracePeer, synthetic: Ipv4Addr| match p {
        TracePeer::Ip(ip) => *ip,
        TracePeer::Labels { namespace, labels } => {
            eps.push(EndpointSpec {
                ip: synthetic,
                namespace: namespace.clone(),
                labels: labels.clone(),
            });
            synthetic
        }
    };
    let s = place(src, Ipv4Addr::new(0, 0, 0, 1));
    let d = place(dst, Ipv4Addr::new(0, 0, 0, 2));
    let mut ids = ids.clone();
    let c = compile(u64::MAX, policies, &eps, host_addrs, localhost, &mut ids);
    let port = match proto {
        proto::TCP | proto::UDP => dport,
        _ => 0,
    };
    trace_tables(
        &c.tables,
        &FlowKey {
            src: s,
            dst: d,
            sport: 0,
            dport: port,
            proto,
        },
    )
}

fn id_name(id: Identity) -> String {
    match reserved_name(id) {
        Some(n) => format!("{id} ({n})"),
        None if xylem_dataplane::policy::identity::is_world(id) => format!("{id} (world, cidr)"),
        None => id.to_string(),
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "source identity {}, destination identity {}",
            id_name(self.src_identity),
            id_name(self.dst_identity)
        )?;
        for (name, d) in [
            ("egress of source", &self.egress),
            ("ingress of destination", &self.ingress),
        ] {
            match d {
                None => writeln!(f, "{name}: not a local endpoint, not checked")?,
                Some(d) => {
                    let what = match d.verdict {
                        DirVerdict::NotEnforced => {
                            "allowed: no policy selects it in this direction".to_owned()
                        }
                        DirVerdict::Allowed(_) => "allowed by".to_owned(),
                        DirVerdict::DenyRule(_) => "denied by".to_owned(),
                        DirVerdict::DefaultDeny => {
                            "denied: default-deny, no rule allows it".to_owned()
                        }
                    };
                    match &d.rule {
                        Some(r) => writeln!(f, "{name}: {what} {r}")?,
                        None => writeln!(f, "{name}: {what}")?,
                    }
                }
            }
        }
        write!(f, "verdict: {}", self.verdict)?;
        if let Some(r) = &self.rule {
            write!(f, " ({r})")?;
        }
        Ok(())
    }
}
