//! Labels and label selectors (`matchLabels`, `matchExpressions`).

use std::collections::BTreeMap;

/// The label that carries an endpoint's namespace (without the `k8s:` source prefix).
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// A normalized label set: keys without a `k8s:` (or `any:`) source prefix.
pub type Labels = BTreeMap<String, String>;

/// Strips the `k8s:` or `any:` source prefix from a label key. Returns `None` for any other
/// source prefix (`reserved:`, `cidr:`, …), which the supported subset does not select on.
pub fn normalize_key(key: &str) -> Option<&str> {
    let k = key
        .strip_prefix("k8s:")
        .or_else(|| key.strip_prefix("any:"))
        .unwrap_or(key);
    // A source prefix is `word:` before any `/` or `.`; Kubernetes keys contain no `:`.
    if k.contains(':') { None } else { Some(k) }
}

/// The full label set of an endpoint: its labels (normalized) plus its namespace label.
/// Keys with an unsupported source prefix are kept verbatim (they never match a selector key).
pub fn endpoint_labels(namespace: &str, labels: &BTreeMap<String, String>) -> Labels {
    let mut out: Labels = labels
        .iter()
        .map(|(k, v)| (normalize_key(k).unwrap_or(k).to_owned(), v.clone()))
        .collect();
    out.insert(NAMESPACE_LABEL.to_owned(), namespace.to_owned());
    out
}

/// One `matchExpressions` requirement.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "operator", content = "values")]
pub enum Requirement {
    /// The label is present with one of these values.
    In(Vec<String>),
    /// The label is absent or has none of these values.
    NotIn(Vec<String>),
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// A validated, normalized endpoint selector.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Selector {
    /// Required exact labels.
    pub match_labels: Labels,
    /// Further requirements: `(key, requirement)`.
    pub match_expressions: Vec<(String, Requirement)>,
}

impl Selector {
    /// Whether the selector constrains the namespace label.
    pub fn names_namespace(&self) -> bool {
        self.match_labels.contains_key(NAMESPACE_LABEL)
            || self
                .match_expressions
                .iter()
                .any(|(k, _)| k == NAMESPACE_LABEL)
    }

    /// Whether `labels` (normalized, see [`endpoint_labels`]) satisfy the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|(k, r)| {
                let v = labels.get(k);
                match r {
                    Requirement::In(vs) => v.is_some_and(|v| vs.contains(v)),
                    Requirement::NotIn(vs) => v.is_none_or(|v| !vs.contains(v)),
                    Requirement::Exists => v.is_some(),
                    Requirement::DoesNotExist => v.is_none(),
                }
            })
    }
}
