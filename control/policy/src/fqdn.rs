//! The DNS part of the accepted subset: `toFQDNs` and `toPorts[].rules.dns` selectors as
//! written, and why every other kind of L7 rule is refused.
//!
//! Selectors are validated and normalized by [`NameSelector`], whose messages name the
//! offending character, so the policy side and the dataplane agree on what a name is.

use serde::Deserialize;
use xylem_dataplane::dns::NameSelector;

/// A `toFQDNs` or `rules.dns` element as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawNameSelector {
    match_name: Option<String>,
    match_pattern: Option<String>,
}

/// `toPorts[].rules`. Only `dns` is known, so any other key fails as an unknown field, whose
/// reason [`l7_refusal`] gives.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawL7Rules {
    pub(crate) dns: Option<Vec<RawNameSelector>>,
}

/// The selector written at `path`, or the field at fault and why.
pub(crate) fn name_selector(
    path: &str,
    s: RawNameSelector,
) -> Result<NameSelector, (String, String)> {
    match (s.match_name, s.match_pattern) {
        (Some(_), Some(_)) => Err((
            path.to_owned(),
            "has both matchName and matchPattern: write each as its own selector".into(),
        )),
        (None, None) => Err((
            path.to_owned(),
            "needs matchName (one exact name) or matchPattern (a name with `*`)".into(),
        )),
        (Some(n), None) => NameSelector::name(&n).map_err(|why| (format!("{path}.matchName"), why)),
        (None, Some(p)) => {
            NameSelector::pattern(&p).map_err(|why| (format!("{path}.matchPattern"), why))
        }
    }
}

/// Why `toPorts[].rules.<field>` is refused: enforcing only part of an L7 policy would let
/// through what Cilium stops, so the whole policy is rejected instead.
pub(crate) fn l7_refusal(field: &str) -> String {
    let what = match field {
        "http" => "L7 HTTP policy is not supported".to_owned(),
        "kafka" => "L7 Kafka policy is not supported".to_owned(),
        "l7proto" | "l7" => "generic L7 policy (l7proto, l7) is not supported".to_owned(),
        other => format!("{other:?} is not a supported kind of L7 rule"),
    };
    format!("{what}; only rules.dns is")
}

/// Why `toFQDNs` is refused where serde does not know it (ingress, or outside a rule).
pub(crate) const TO_FQDNS_OUTSIDE_EGRESS: &str =
    "toFQDNs selects destinations, so it belongs in an egress rule (Cilium has it nowhere else)";
