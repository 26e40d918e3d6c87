//! The service routes, beside the policy routes:
//! - `POST /v1/services`: Kubernetes Service and EndpointSlice YAML (one document, several, or a
//!   `List`, as `kubectl get svc,endpointslices -o yaml` prints it); all or nothing; answers
//!   `{"revision": N}`;
//! - `GET /v1/services`: every service ([`xylem_api::ServiceView`]);
//! - `GET /v1/services/{namespace}/{name}`: one, or 404;
//! - `DELETE /v1/services/{namespace}/{name}`: answers `{"revision": N}`, or 404.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::response::{IntoResponse, Json, Response};
use hyper::body::Bytes;

use super::{Api, blocking, error};

pub(super) async fn post_services(State(api): State<Api>, body: Bytes) -> Response {
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return error(400, "body", "the service file is not UTF-8 text");
    };
    let agent = Arc::clone(&api.agent);
    match blocking(move || agent.import_services(&text)).await {
        Ok(revision) => Json(serde_json::json!({ "revision": revision })).into_response(),
        Err(r) => r,
    }
}

pub(super) async fn get_services(State(api): State<Api>) -> Response {
    Json(api.agent.services()).into_response()
}

pub(super) async fn get_service(
    State(api): State<Api>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
) -> Response {
    match api.agent.service(&namespace, &name) {
        Some(s) => Json(s).into_response(),
        None => error(404, "service", &format!("no service {namespace}/{name}")),
    }
}

pub(super) async fn delete_service(
    State(api): State<Api>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
) -> Response {
    let agent = Arc::clone(&api.agent);
    let (ns, n) = (namespace.clone(), name.clone());
    match blocking(move || agent.delete_service(&ns, &n)).await {
        Ok(Some(revision)) => Json(serde_json::json!({ "revision": revision })).into_response(),
        Ok(None) => error(404, "service", &format!("no service {namespace}/{name}")),
        Err(r) => r,
    }
}
