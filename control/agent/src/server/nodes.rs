//! The node table and encryption routes:
//! - `GET /v1/nodes`: the cluster's nodes ([`xylem_api::NodeView`]: `name`, `node_ip`,
//!   `pod_cidr`, `encryption`, `mac`, `local`, `source`);
//! - `PUT /v1/nodes/{name}`: [`xylem_api::NodeRequest`] (`node_ip`, `pod_cidr`, `encryption`);
//!   201 (created) or 200 (replaced) with the node, 422 naming the field (nothing changed);
//! - `DELETE /v1/nodes/{name}`: 204, 404, or 409 for a node of the configuration file;
//! - `GET /v1/encryption`: [`xylem_api::EncryptionStatus`].

use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use hyper::body::Bytes;

use super::{Api, blocking, error, serde_field};
use xylem_api::NodeRequest;

pub(super) async fn get_nodes(State(api): State<Api>) -> Response {
    Json(api.agent.nodes()).into_response()
}

pub(super) async fn put_node(
    State(api): State<Api>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Response {
    let req: NodeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(400, &serde_field(&e), &e.to_string()),
    };
    let agent = Arc::clone(&api.agent);
    match blocking(move || agent.put_node(&name, req)).await {
        Ok((node, created)) => {
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (code, Json(node)).into_response()
        }
        Err(r) => r,
    }
}

pub(super) async fn delete_node(
    State(api): State<Api>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let agent = Arc::clone(&api.agent);
    let n = name.clone();
    match blocking(move || agent.delete_node(&n)).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(404, "node", &format!("no node {name}")),
        Err(r) => r,
    }
}

pub(super) async fn get_encryption(State(api): State<Api>) -> Response {
    Json(api.agent.encryption_status()).into_response()
}
