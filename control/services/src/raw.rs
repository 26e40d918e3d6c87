//! The accepted fields of a Service and an EndpointSlice, one for one, with
//! `#[serde(deny_unknown_fields)]`, so that any other field fails with its path. Fields accepted
//! only to be ignored are `Option<IgnoredAny>`, with the reason beside them.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawService {
    #[expect(dead_code, reason = "checked on the untyped value first")]
    pub(crate) api_version: String,
    #[expect(dead_code, reason = "checked on the untyped value first")]
    pub(crate) kind: String,
    pub(crate) metadata: RawMeta,
    pub(crate) spec: RawServiceSpec,
    #[expect(
        dead_code,
        reason = "set by the server (load balancer status, conditions)"
    )]
    pub(crate) status: Option<IgnoredAny>,
}

/// The metadata of both kinds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawMeta {
    pub(crate) name: String,
    pub(crate) namespace: Option<String>,
    /// Service: user metadata with no load-balancing meaning. Slice: the service-name label is
    /// read; the others (managed-by, copies of the service's labels) are the controller's.
    pub(crate) labels: Option<BTreeMap<String, String>>,
    /// Service: acted on. Slice: only the controller's last-change-trigger-time.
    pub(crate) annotations: Option<BTreeMap<String, String>>,
    #[expect(dead_code, reason = "set by the server")]
    pub(crate) uid: Option<IgnoredAny>,
    #[expect(dead_code, reason = "set by the server")]
    pub(crate) resource_version: Option<IgnoredAny>,
    #[expect(dead_code, reason = "set by the server")]
    pub(crate) creation_timestamp: Option<IgnoredAny>,
    #[expect(dead_code, reason = "set by the server")]
    pub(crate) managed_fields: Option<IgnoredAny>,
    #[expect(dead_code, reason = "set by the server")]
    pub(crate) generation: Option<IgnoredAny>,
    #[expect(dead_code, reason = "set by older servers, deprecated")]
    pub(crate) self_link: Option<IgnoredAny>,
    #[expect(
        dead_code,
        reason = "a slice's owner is its Service, already named by the label"
    )]
    pub(crate) owner_references: Option<IgnoredAny>,
    #[expect(
        dead_code,
        reason = "the name is already generated (the slice controller's `web-`)"
    )]
    pub(crate) generate_name: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawServiceSpec {
    #[serde(rename = "type")]
    pub(crate) type_: Option<String>,
    #[serde(rename = "clusterIP")]
    pub(crate) cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    pub(crate) cluster_ips: Option<Vec<String>>,
    /// Defaulted by the server; checked to be IPv4 only.
    pub(crate) ip_families: Option<Vec<String>>,
    /// Defaulted by the server; the addresses themselves are checked.
    pub(crate) ip_family_policy: Option<String>,
    /// Defaulted by the server to `Cluster`, what Xylem does; `Local` is rejected.
    pub(crate) internal_traffic_policy: Option<String>,
    #[expect(
        dead_code,
        reason = "applied by the EndpointSlice controller; the backends come from the slices"
    )]
    pub(crate) selector: Option<IgnoredAny>,
    pub(crate) session_affinity: Option<String>,
    pub(crate) session_affinity_config: Option<RawAffinityConfig>,
    pub(crate) ports: Option<Vec<RawServicePort>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAffinityConfig {
    #[serde(rename = "clientIP")]
    pub(crate) client_ip: Option<RawClientIp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawClientIp {
    pub(crate) timeout_seconds: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawServicePort {
    pub(crate) name: Option<String>,
    pub(crate) port: i64,
    pub(crate) target_port: Option<IntOrString>,
    pub(crate) protocol: Option<String>,
    #[expect(
        dead_code,
        reason = "a hint for L7 proxies; no meaning for L4 balancing"
    )]
    pub(crate) app_protocol: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum IntOrString {
    Int(i64),
    Str(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawSlice {
    #[expect(dead_code, reason = "checked on the untyped value first")]
    pub(crate) api_version: String,
    #[expect(dead_code, reason = "checked on the untyped value first")]
    pub(crate) kind: String,
    pub(crate) metadata: RawMeta,
    pub(crate) address_type: String,
    pub(crate) endpoints: Option<Vec<RawEndpoint>>,
    pub(crate) ports: Option<Vec<RawSlicePort>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawEndpoint {
    pub(crate) addresses: Vec<String>,
    pub(crate) conditions: Option<RawConditions>,
    pub(crate) node_name: Option<String>,
    pub(crate) target_ref: Option<RawTargetRef>,
    #[expect(
        dead_code,
        reason = "topology information, set from the node; only used with hints, which are rejected"
    )]
    pub(crate) zone: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConditions {
    pub(crate) ready: Option<bool>,
    pub(crate) serving: Option<bool>,
    pub(crate) terminating: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawTargetRef {
    pub(crate) kind: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    #[expect(
        dead_code,
        reason = "set by the server; kind/namespace/name identify the target"
    )]
    pub(crate) uid: Option<IgnoredAny>,
    #[expect(dead_code, reason = "set by the server")]
    pub(crate) resource_version: Option<IgnoredAny>,
    #[expect(dead_code, reason = "always v1 for a Pod; kind identifies the target")]
    pub(crate) api_version: Option<IgnoredAny>,
    #[expect(
        dead_code,
        reason = "points inside the target object; no meaning for balancing"
    )]
    pub(crate) field_path: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawSlicePort {
    pub(crate) name: Option<String>,
    pub(crate) port: Option<i64>,
    pub(crate) protocol: Option<String>,
    #[expect(
        dead_code,
        reason = "a hint for L7 proxies; no meaning for L4 balancing"
    )]
    pub(crate) app_protocol: Option<IgnoredAny>,
}
