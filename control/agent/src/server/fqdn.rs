//! The FQDN cache routes:
//! - `GET /v1/fqdn/cache`: every endpoint's resolved names ([`xylem_api::FqdnCacheEntry`]:
//!   `endpoint`, `name`, `ips: [{ip, expires_at, in_use}]`);
//! - `DELETE /v1/fqdn/cache?matchpattern=P`: removes the names the Cilium pattern `P` matches
//!   (every name without it) and the facts they taught; answers
//!   [`xylem_api::FqdnCleaned`] (`{"names": N, "ips": M}`), or 422 naming `matchpattern`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Json, Response};

use super::{Api, blocking, error};

pub(super) async fn get_cache(State(api): State<Api>) -> Response {
    // Off the runtime: whether an address is in use takes a walk of the conntrack.
    let agent = Arc::clone(&api.agent);
    match blocking(move || Ok(agent.fqdn_cache())).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// `%XX` decoded; `None` for a malformed escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `matchpattern` of a query (`None` when absent), or the error answer.
fn matchpattern(query: Option<&str>) -> Result<Option<String>, Box<Response>> {
    let mut pattern = None;
    for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("matchpattern", v)) => {
                let v = percent_decode(v).ok_or_else(|| {
                    Box::new(error(
                        400,
                        "matchpattern",
                        &format!("{v:?} is not a percent-encoded UTF-8 value"),
                    ))
                })?;
                pattern = Some(v);
            }
            _ => {
                return Err(Box::new(error(
                    400,
                    kv,
                    "unknown query parameter (use matchpattern=PATTERN)",
                )));
            }
        }
    }
    Ok(pattern)
}

pub(super) async fn delete_cache(State(api): State<Api>, uri: Uri) -> Response {
    let pattern = match matchpattern(uri.query()) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let agent = Arc::clone(&api.agent);
    match blocking(move || agent.fqdn_clean(pattern.as_deref())).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_is_decoded_and_nothing_else_is_taken() {
        assert_eq!(
            matchpattern(Some("matchpattern=*.domain.com")).ok(),
            Some(Some("*.domain.com".into()))
        );
        assert_eq!(
            matchpattern(Some("matchpattern=a%20b")).ok(),
            Some(Some("a b".into()))
        );
        assert_eq!(matchpattern(None).ok(), Some(None));
        assert!(matchpattern(Some("matchpattern=%zz")).is_err());
        assert!(matchpattern(Some("pattern=x")).is_err());
    }
}
