//! The remote endpoints (the other nodes' pods this node's policies select by label):
//! - `GET /v1/remote-endpoints`: [`xylem_api::RemoteEndpointView`]s (`namespace`, `name`,
//!   `node`, `ip`, `identity`, `labels`);
//! - `PUT /v1/remote-endpoints/{namespace}/{name}`: [`xylem_api::RemoteEndpointRequest`]
//!   (`node`, `ip`, `labels`); 201 (created) or 200 (replaced) with the view, 422 naming the
//!   field, or 409 (`ip`) for an address another remote endpoint holds; nothing changed on
//!   error;
//! - `DELETE /v1/remote-endpoints/{namespace}/{name}`: 204 or 404.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use hyper::body::Bytes;

use super::{Api, blocking, error, serde_field};
use xylem_api::RemoteEndpointRequest;

pub(super) async fn get_remote_endpoints(State(api): State<Api>) -> Response {
    Json(api.agent.remote_endpoints()).into_response()
}

pub(super) async fn put_remote_endpoint(
    State(api): State<Api>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    let req: RemoteEndpointRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(400, &serde_field(&e), &e.to_string()),
    };
    let agent = Arc::clone(&api.agent);
    match blocking(move || agent.put_remote_endpoint(&namespace, &name, req)).await {
        Ok((view, created)) => {
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (code, Json(view)).into_response()
        }
        Err(r) => r,
    }
}

pub(super) async fn delete_remote_endpoint(
    State(api): State<Api>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
) -> Response {
    let agent = Arc::clone(&api.agent);
    let (ns, n) = (namespace.clone(), name.clone());
    match blocking(move || agent.delete_remote_endpoint(&ns, &n)).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(
            404,
            "remote-endpoint",
            &format!("no remote endpoint {namespace}/{name}"),
        ),
        Err(r) => r,
    }
}
