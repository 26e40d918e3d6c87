//! The agent's local API: JSON over HTTP/1.1 on a unix socket (mode 0600), served by axum on
//! a single-threaded tokio runtime that runs on a control thread, never on a worker core.
//!
//! Routes:
//! - `GET /v1/status`: [`crate::agent::Status`]
//! - `GET /v1/endpoints`: the pods served, as [`crate::agent::Endpoint`]s
//!
//! [`Client`] is the CLI's side.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::agent::AgentState;

/// Refuses a socket path that a live agent is listening on, and removes a stale one (left by an
/// agent that was killed).
pub fn claim_socket(path: &Path) -> Result<(), Error> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Lab(format!(
                "another xylem-agent is already listening on {}: stop it first, or pick another --api-socket",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|source| Error::File {
            what: "removing the stale API socket",
            path: path.to_owned(),
            source,
        })?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::File {
            what: "creating the API socket's directory",
            path: dir.to_owned(),
            source,
        })?;
    }
    Ok(())
}

async fn status(State(agent): State<Arc<AgentState>>) -> Response {
    Json(agent.status()).into_response()
}

async fn endpoints(State(agent): State<Arc<AgentState>>) -> Response {
    Json(agent.endpoints()).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"error": "no such route; see `xylem --help`"})),
    )
        .into_response()
}

/// Serves the API on `path` until `shutdown` resolves.
pub fn serve(
    agent: Arc<AgentState>,
    path: PathBuf,
    shutdown: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "starting the API runtime".into(),
            source,
        })?;
    rt.block_on(async move {
        let listener = tokio::net::UnixListener::bind(&path).map_err(|source| Error::File {
            what: "listening on the API socket",
            path: path.clone(),
            source,
        })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| Error::File {
                what: "setting the API socket's mode",
                path: path.clone(),
                source,
            },
        )?;
        let app = Router::new()
            .route("/v1/status", get(status))
            .route("/v1/endpoints", get(endpoints))
            .fallback(not_found)
            .with_state(agent);
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.await;
            })
            .await
            .map_err(|source| Error::Io {
                what: "serving the API".into(),
                source,
            })
    })
}

/// The CLI's client for the agent's API.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the agent listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
        }
    }

    /// `GET path`, decoded as JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let body = self.get_bytes(path)?;
        serde_json::from_slice(&body).map_err(|e| Error::Api {
            status: 200,
            message: format!("undecodable answer to {path}: {e}"),
        })
    }

    /// `GET path`, as raw bytes.
    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                what: "starting the client runtime".into(),
                source,
            })?;
        let unreachable = || Error::AgentUnreachable {
            socket: self.socket.clone(),
        };
        rt.block_on(async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|_| unreachable())?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|_| unreachable())?;
            tokio::spawn(conn);
            let req = hyper::Request::get(path)
                .header("host", "xylem-agent")
                .body(Empty::<Bytes>::new())
                .map_err(|e| Error::Api {
                    status: 0,
                    message: e.to_string(),
                })?;
            let resp = sender.send_request(req).await.map_err(|_| unreachable())?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|_| unreachable())?
                .to_bytes()
                .to_vec();
            if status >= 400 {
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                return Err(Error::Api { status, message });
            }
            Ok(body)
        })
    }
}
