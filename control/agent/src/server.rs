//! The agent's local API: JSON over HTTP/1.1 on a unix socket (mode 0600), served by axum on
//! a single-threaded tokio runtime that runs on a control thread, never on a worker core.
//!
//! Routes:
//! - `GET /v1/status`: [`xylem_api::Status`]
//! - `GET /v1/endpoints`: the pods served, as [`xylem_api::Endpoint`]s
//! - `GET|PUT|DELETE /v1/endpoints/{namespace}/{name}`: one endpoint; `PUT` takes
//!   [`xylem_api::EndpointRequest`] (`ifname`, `ip`, `mac`, `labels`), answers 201 (created)
//!   or 200 (replaced); an `ifname` that is not yet a port is opened on every worker first.
//!   `DELETE` answers 204 or 404
//! - `POST /v1/policies`: the body is CiliumNetworkPolicy YAML (one document, several, or a
//!   `List`); all or nothing; answers `{"revision": N}`. `GET /v1/policies`: every stored
//!   policy ([`xylem_api::PolicyView`]); `GET|DELETE /v1/policies/{namespace}/{name}`
//!   (`DELETE` answers `{"revision": N}` or 404)
//! - `POST /v1/services` (Kubernetes Service and EndpointSlice YAML, all or nothing; answers
//!   `{"revision": N}`), `GET /v1/services` ([`xylem_api::ServiceView`]s),
//!   `GET|DELETE /v1/services/{namespace}/{name}` (see the `services` module)
//! - `GET /v1/nodes`, `PUT|DELETE /v1/nodes/{name}`, `GET /v1/encryption`: the node table
//!   and the ESP keys, peers and errors (see the `nodes` module)
//! - `GET /v1/remote-endpoints`, `PUT|DELETE /v1/remote-endpoints/{namespace}/{name}`: the
//!   other nodes' pods that policies select by label (see the `remote` module)
//! - `GET /v1/identities`: [`xylem_api::IdentityView`]s
//! - `POST /v1/policy/trace`: [`xylem_api::TraceRequest`] in, [`xylem_policy::Trace`] out
//! - `GET /v1/ct?max=N`: the tracked connections of the flow table every worker shares ([`xylem_api::CtView`]);
//!   `DELETE /v1/ct` flushes them (`{"flushed": N}`)
//! - `GET /v1/metrics`: the Prometheus exposition (as on `--metrics-addr`'s `/metrics`)
//! - `GET /v1/fqdn/cache`, `DELETE /v1/fqdn/cache?matchpattern=P`: the FQDN cache (see the
//!   `fqdn` module)
//! - `GET /v1/monitor?type=drop,trace`: flow events as newline-delimited JSON, until the client
//!   goes; `{"type":"lost","lost":N}` lines report events lost so far for this client; with
//!   `type=agent`, the agent's own events (`{"type":"agent","event":"backend-health",
//!   "service","backend","from","to"}`), which the control side queues beside the workers'
//!   rings; with `type=dns`, every DNS query and answer the workers inspected (the flow fields
//!   and `dns: {id, response, query, qtype, rcode, answers, rule}`)
//!
//! Errors are JSON `{"error": "<field>: <why>", "field": "<field>"}` with a 4xx status; a refused
//! request changes nothing. Bodies above [`BODY_LIMIT`] ([`POLICY_BODY_LIMIT`] for a policy import) get 413. Clients are served
//! concurrently (each connection is a task on the API thread's runtime).
//!
//! The client's side is [`xylem_api::Client`].

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use hyper::body::Bytes;
use tokio::sync::{broadcast, watch};

use crate::Error;
use xylem_api::{EndpointRequest, TraceRequest};

use crate::agent::{AgentState, Refusal, Rejected};

mod fqdn;
mod monitor;
mod nodes;
mod remote;
mod services;

pub use monitor::rfc3339;
use monitor::{CLIENT_BUFFER, EventBatch, dispatch, monitor};

/// Refuses a socket path that a live agent is listening on, and removes a stale one (left by an
/// agent that was killed).
pub fn claim_socket(path: &Path) -> Result<(), Error> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Agent(format!(
                "another xylem-agent is already listening on {}: stop it first, or pick another --api-socket",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|source| {
            Error::File(xylem_api::FileError {
                what: "removing the stale API socket",
                path: path.to_owned(),
                source,
            })
        })?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| {
            Error::File(xylem_api::FileError {
                what: "creating the API socket's directory",
                path: dir.to_owned(),
                source,
            })
        })?;
    }
    Ok(())
}

/// Largest request body accepted (bigger ones get 413).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Largest policy or service import accepted: policy files with thousands of rules, and
/// `kubectl get svc,endpointslices -o yaml` of a cluster, run to megabytes.
pub const POLICY_BODY_LIMIT: usize = 16 * 1024 * 1024;

#[derive(Clone)]
struct Api {
    agent: Arc<AgentState>,
    events: broadcast::Sender<EventBatch>,
    shutdown: watch::Receiver<bool>,
}

fn error(status: u16, field: &str, why: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        code,
        Json(serde_json::json!({"error": format!("{field}: {why}"), "field": field})),
    )
        .into_response()
}

/// The agent's refusal as the API answers it: the one place its kinds become status codes.
fn rejected(r: Rejected) -> Response {
    let status = match r.refusal {
        Refusal::Invalid => 422,
        Refusal::Conflict => 409,
        Refusal::Unavailable => 503,
        Refusal::Failed => 500,
    };
    error(status, &r.field, &r.why)
}

async fn status(State(api): State<Api>) -> Response {
    Json(api.agent.status()).into_response()
}

async fn endpoints(State(api): State<Api>) -> Response {
    Json(api.agent.endpoints()).into_response()
}

async fn get_endpoint(
    State(api): State<Api>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
) -> Response {
    match api
        .agent
        .endpoints()
        .into_iter()
        .find(|e| e.namespace == namespace && e.name == name)
    {
        Some(e) => Json(e).into_response(),
        None => error(404, "endpoint", &format!("no endpoint {namespace}/{name}")),
    }
}

/// The field a serde_json error is about (the first name in backquotes), or `body`.
fn serde_field(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    msg.split('`')
        .nth(1)
        .filter(|f| !f.is_empty() && f.len() < 64)
        .map(String::from)
        .unwrap_or_else(|| "body".into())
}

async fn put_endpoint(
    State(api): State<Api>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    let req: EndpointRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(400, &serde_field(&e), &e.to_string()),
    };
    // Off the API thread's runtime: opening a port waits for the workers, and the store
    // fsyncs; other clients (monitor streams among them) keep being served meanwhile.
    let agent = Arc::clone(&api.agent);
    let r = tokio::task::spawn_blocking(move || agent.put_endpoint(&namespace, &name, req)).await;
    let Ok(r) = r else {
        return error(500, "-", "the request's task failed; see the agent log");
    };
    match r {
        Ok((ep, created)) => {
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (code, Json(ep)).into_response()
        }
        Err(r) => rejected(r),
    }
}

async fn delete_endpoint(
    State(api): State<Api>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
) -> Response {
    let agent = Arc::clone(&api.agent);
    let (ns, n) = (namespace.clone(), name.clone());
    let Ok(r) = tokio::task::spawn_blocking(move || agent.delete_endpoint(&ns, &n)).await else {
        return error(500, "-", "the request's task failed; see the agent log");
    };
    match r {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(404, "endpoint", &format!("no endpoint {namespace}/{name}")),
        Err(r) => rejected(r),
    }
}

/// Runs `f` on the blocking pool (it may fsync or wait for workers) and maps its outcome.
async fn blocking<T: serde::Serialize + Send + 'static>(
    f: impl FnOnce() -> Result<T, Rejected> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(r)) => Err(rejected(r)),
        Err(_) => Err(error(
            500,
            "-",
            "the request's task failed; see the agent log",
        )),
    }
}

async fn post_policies(State(api): State<Api>, body: Bytes) -> Response {
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return error(400, "body", "the policy file is not UTF-8 text");
    };
    let agent = Arc::clone(&api.agent);
    match blocking(move || agent.import_policies(&text)).await {
        Ok(revision) => Json(serde_json::json!({ "revision": revision })).into_response(),
        Err(r) => r,
    }
}

async fn get_policies(State(api): State<Api>) -> Response {
    Json(api.agent.policies()).into_response()
}

async fn get_policy(
    State(api): State<Api>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
) -> Response {
    match api
        .agent
        .policies()
        .into_iter()
        .find(|p| p.namespace == namespace && p.name == name)
    {
        Some(p) => Json(p).into_response(),
        None => error(404, "policy", &format!("no policy {namespace}/{name}")),
    }
}

async fn delete_policy(
    State(api): State<Api>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
) -> Response {
    let agent = Arc::clone(&api.agent);
    let (ns, n) = (namespace.clone(), name.clone());
    match blocking(move || agent.delete_policy(&ns, &n)).await {
        Ok(Some(revision)) => Json(serde_json::json!({ "revision": revision })).into_response(),
        Ok(None) => error(404, "policy", &format!("no policy {namespace}/{name}")),
        Err(r) => r,
    }
}

async fn identities(State(api): State<Api>) -> Response {
    Json(api.agent.identities()).into_response()
}

async fn policy_trace(State(api): State<Api>, body: Bytes) -> Response {
    let req: TraceRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(400, &serde_field(&e), &e.to_string()),
    };
    match api.agent.trace(&req) {
        Ok(t) => Json(t).into_response(),
        Err(r) => rejected(r),
    }
}

async fn get_ct(State(api): State<Api>, uri: Uri) -> Response {
    let mut max = 4096usize;
    for kv in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
    {
        match kv.split_once('=') {
            Some(("max", v)) => match v.parse() {
                Ok(n) => max = n,
                Err(_) => return error(400, "max", &format!("{v:?} is not a number")),
            },
            _ => return error(400, kv, "unknown query parameter (use max=N)"),
        }
    }
    let agent = Arc::clone(&api.agent);
    match blocking(move || agent.ct_list(max)).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn delete_ct(State(api): State<Api>) -> Response {
    let agent = Arc::clone(&api.agent);
    match blocking(move || agent.ct_flush()).await {
        Ok(n) => Json(serde_json::json!({ "flushed": n })).into_response(),
        Err(r) => r,
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn metrics_text(agent: &AgentState) -> String {
    crate::metrics::render(
        &agent.status(),
        agent.monitor_lost(),
        agent.endpoints().len(),
    )
}

async fn metrics(State(api): State<Api>) -> Response {
    ([(CONTENT_TYPE, OPENMETRICS)], metrics_text(&api.agent)).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"error": "no such route; see `xylem --help`"})),
    )
        .into_response()
}

/// Serves the API on `path` (and Prometheus metrics on `metrics_addr`, when given) until
/// `shutdown` resolves.
pub fn serve(
    agent: Arc<AgentState>,
    path: PathBuf,
    metrics_addr: Option<SocketAddr>,
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
        let listener = tokio::net::UnixListener::bind(&path).map_err(|source| {
            Error::File(xylem_api::FileError {
                what: "listening on the API socket",
                path: path.clone(),
                source,
            })
        })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| {
                Error::File(xylem_api::FileError {
                    what: "setting the API socket's mode",
                    path: path.clone(),
                    source,
                })
            },
        )?;
        let (events, _) = broadcast::channel(CLIENT_BUFFER);
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(dispatch(Arc::clone(&agent), events.clone()));
        let api = Api {
            agent: Arc::clone(&agent),
            events,
            shutdown: stop_rx,
        };
        if let Some(addr) = metrics_addr {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Io {
                    what: format!("listening for metrics on {addr}"),
                    source,
                })?;
            tracing::info!(%addr, "serving metrics on /metrics");
            let m = Router::new()
                .route("/metrics", get(metrics))
                .fallback(not_found)
                .with_state(api.clone());
            let mut stop = api.shutdown.clone();
            tokio::spawn(async move {
                let r = axum::serve(tcp, m)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "metrics server failed");
                }
            });
        }
        let app = Router::new()
            .route("/v1/status", get(status))
            .route("/v1/endpoints", get(endpoints))
            .route(
                "/v1/endpoints/{namespace}/{name}",
                get(get_endpoint).put(put_endpoint).delete(delete_endpoint),
            )
            .route(
                "/v1/policies",
                get(get_policies)
                    .post(post_policies)
                    .layer(DefaultBodyLimit::max(POLICY_BODY_LIMIT)),
            )
            .route(
                "/v1/policies/{namespace}/{name}",
                get(get_policy).delete(delete_policy),
            )
            .route(
                "/v1/services",
                get(services::get_services)
                    .post(services::post_services)
                    .layer(DefaultBodyLimit::max(POLICY_BODY_LIMIT)),
            )
            .route(
                "/v1/services/{namespace}/{name}",
                get(services::get_service).delete(services::delete_service),
            )
            .route("/v1/nodes", get(nodes::get_nodes))
            .route(
                "/v1/nodes/{name}",
                axum::routing::put(nodes::put_node).delete(nodes::delete_node),
            )
            .route("/v1/encryption", get(nodes::get_encryption))
            .route("/v1/remote-endpoints", get(remote::get_remote_endpoints))
            .route(
                "/v1/remote-endpoints/{namespace}/{name}",
                axum::routing::put(remote::put_remote_endpoint)
                    .delete(remote::delete_remote_endpoint),
            )
            .route("/v1/identities", get(identities))
            .route("/v1/policy/trace", axum::routing::post(policy_trace))
            .route("/v1/ct", get(get_ct).delete(delete_ct))
            .route("/v1/metrics", get(metrics))
            .route(
                "/v1/fqdn/cache",
                get(fqdn::get_cache).delete(fqdn::delete_cache),
            )
            .route("/v1/monitor", get(monitor))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(api);
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.await;
                // Ends the monitor streams, which would otherwise hold the shutdown open.
                let _ = stop_tx.send(true);
            })
            .await
            .map_err(|source| Error::Io {
                what: "serving the API".into(),
                source,
            })
    })
}
