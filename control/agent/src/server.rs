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
//! - `GET /v1/identities`: [`xylem_api::IdentityView`]s
//! - `POST /v1/policy/trace`: [`xylem_api::TraceRequest`] in, [`xylem_policy::Trace`] out
//! - `GET /v1/ct?max=N`: the tracked connections of the flow table every worker shares ([`xylem_api::CtView`]);
//!   `DELETE /v1/ct` flushes them (`{"flushed": N}`)
//! - `GET /v1/metrics`: the Prometheus exposition (as on `--metrics-addr`'s `/metrics`)
//! - `GET /v1/monitor?type=drop,trace`: flow events as newline-delimited JSON, until the client
//!   goes; `{"type":"lost","lost":N}` lines report events lost so far for this client
//!
//! Errors are JSON `{"error": "<field>: <why>", "field": "<field>"}` with a 4xx status; a refused
//! request changes nothing. Bodies above [`BODY_LIMIT`] ([`POLICY_BODY_LIMIT`] for a policy import) get 413. Clients are served
//! concurrently (each connection is a task on the API thread's runtime).
//!
//! The client's side is [`xylem_api::Client`].

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use hyper::body::Bytes;
use tokio::sync::{broadcast, watch};
use xylem_dataplane::monitor::{EventType, FlowEvent};

use crate::Error;
use xylem_api::{EndpointRequest, TraceRequest};

use crate::agent::{AgentState, Refusal, Rejected};

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

/// Largest policy import accepted: policy files with thousands of rules run to megabytes.
pub const POLICY_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Dispatcher batches (one per 5 ms tick that had events) buffered per monitor client before
/// its events count as lost: about 1.3 s of events.
const CLIENT_BUFFER: usize = 256;

/// What the dispatcher hands every monitor client per tick: the events drained from the
/// workers' rings, as `(worker, event)`, and the running number of the first, by which a client
/// that fell behind knows how many it missed.
#[derive(Clone)]
struct EventBatch {
    first: u64,
    events: Arc<[(usize, FlowEvent)]>,
}

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

/// `type=drop,trace` (or the parameter repeated); all types when absent.
fn parse_types(query: Option<&str>) -> Result<Vec<EventType>, Box<Response>> {
    let mut types = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "type" {
            return Err(Box::new(error(
                400,
                k,
                "unknown parameter: use type=drop|trace|policy-verdict|dns",
            )));
        }
        for t in v.split(',').filter(|t| !t.is_empty()) {
            let t: EventType = t
                .parse()
                .map_err(|e: String| Box::new(error(400, "type", &e)))?;
            if !types.contains(&t) {
                types.push(t);
            }
        }
    }
    if types.is_empty() {
        types = EventType::ALL.to_vec();
    }
    Ok(types)
}

/// RFC 3339 UTC with nanoseconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// A flow's protocol as the monitor names it: `ICMP`, `TCP`, `UDP`, another number, or null.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Protocol {
    Name(&'static str),
    Number(u8),
}

fn protocol_name(p: u8) -> Option<Protocol> {
    match p {
        0 => None,
        1 => Some(Protocol::Name("ICMP")),
        6 => Some(Protocol::Name("TCP")),
        17 => Some(Protocol::Name("UDP")),
        n => Some(Protocol::Number(n)),
    }
}

/// One end of a flow: its address and, when it is one of ours, the endpoint's name.
#[derive(serde::Serialize)]
struct Peer<'a> {
    ip: Option<std::net::Ipv4Addr>,
    endpoint: Option<&'a str>,
}

/// One flow event as the monitor stream carries it (stable field names). Borrowed, and written
/// straight into the client's chunk: one allocation (the time) per event.
#[derive(serde::Serialize)]
struct EventLine<'a> {
    time: String,
    #[serde(rename = "type")]
    kind: &'static str,
    worker: usize,
    ingress: Option<&'a str>,
    egress: Option<&'a str>,
    source: Peer<'a>,
    destination: Peer<'a>,
    protocol: Option<Protocol>,
    src_port: u16,
    dst_port: u16,
    len: u16,
    verdict: &'static str,
    drop_reason: Option<&'static str>,
}

fn event_line<'a>(
    agent: &AgentState,
    names: &'a (Vec<String>, BTreeMap<std::net::Ipv4Addr, String>),
    worker: usize,
    ev: &FlowEvent,
) -> EventLine<'a> {
    let (ports, ips) = names;
    let port = |p: u16| ports.get(p as usize).map(String::as_str);
    let peer = |ip: std::net::Ipv4Addr| Peer {
        ip: (!ip.is_unspecified()).then_some(ip),
        endpoint: ips.get(&ip).map(String::as_str),
    };
    EventLine {
        time: rfc3339(agent.wall_time(worker, ev.timestamp_ns)),
        kind: ev.kind.as_str(),
        worker,
        ingress: port(ev.ingress_port),
        egress: ev.egress_port.and_then(port),
        source: peer(ev.src),
        destination: peer(ev.dst),
        protocol: protocol_name(ev.protocol),
        src_port: ev.src_port,
        dst_port: ev.dst_port,
        len: ev.len,
        verdict: ev.verdict(),
        drop_reason: ev.drop_reason.map(|r| r.as_str()),
    }
}

fn line(v: &serde_json::Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

async fn monitor(State(api): State<Api>, uri: Uri) -> Response {
    let types = match parse_types(uri.query()) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let rx = api.events.subscribe();
    let sub = api.agent.monitor_subscribe(&types);
    let base_lost = api.agent.monitor_lost();
    tracing::info!(?types, "monitor client attached");
    struct St {
        api: Api,
        rx: broadcast::Receiver<EventBatch>,
        _sub: crate::agent::MonitorSubscription,
        types: Vec<EventType>,
        base_lost: u64,
        /// Events of batches this client missed (it fell behind the broadcast buffer).
        lagged: u64,
        /// The running number of the next event this client expects.
        next: Option<u64>,
        reported: u64,
        names: (Vec<String>, BTreeMap<std::net::Ipv4Addr, String>),
        names_at: std::time::Instant,
        done: bool,
    }
    let names = api.agent.names();
    let st = St {
        api,
        rx,
        _sub: sub,
        types,
        base_lost,
        lagged: 0,
        next: None,
        reported: 0,
        names,
        names_at: std::time::Instant::now(),
        done: false,
    };
    // One chunk per batch of events (not per event): a busy monitor costs the agent and the
    // client a write per 5 ms tick rather than one per packet.
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            let lost = st.api.agent.monitor_lost().saturating_sub(st.base_lost) + st.lagged;
            if lost != st.reported {
                st.reported = lost;
                let l = line(&serde_json::json!({"type": "lost", "lost": lost}));
                return Some((Ok::<_, std::convert::Infallible>(l), st));
            }
            if st.names_at.elapsed() > std::time::Duration::from_secs(1) {
                st.names = st.api.agent.names();
                st.names_at = std::time::Instant::now();
            }
            let mut shutdown = st.api.shutdown.clone();
            let got = tokio::select! {
                r = st.rx.recv() => Some(r),
                _ = shutdown.wait_for(|s| *s) => None,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
            };
            match got {
                None | Some(Err(broadcast::error::RecvError::Closed)) => {
                    st.done = true;
                    let l = line(&serde_json::json!({"type": "end", "lost": st.reported}));
                    return Some((Ok(l), st));
                }
                // Counted from the next batch's running number.
                Some(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Some(Ok(batch)) => {
                    if let Some(next) = st.next {
                        st.lagged += batch.first.saturating_sub(next);
                    }
                    st.next = Some(batch.first + batch.events.len() as u64);
                    let mut chunk = Vec::new();
                    for (w, ev) in batch.events.iter() {
                        if st.types.contains(&ev.kind) {
                            let v = event_line(&st.api.agent, &st.names, *w, ev);
                            if serde_json::to_writer(&mut chunk, &v).is_ok() {
                                chunk.push(b'\n');
                            }
                        }
                    }
                    if !chunk.is_empty() {
                        return Some((Ok(Bytes::from(chunk)), st));
                    }
                }
            }
        }
    });
    (
        [(CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Moves events from the workers' rings to the monitor clients, every 5 ms while one listens:
/// one broadcast batch per tick.
async fn dispatch(agent: Arc<AgentState>, tx: broadcast::Sender<EventBatch>) {
    let mut buf = Vec::with_capacity(4096);
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(5));
    loop {
        tick.tick().await;
        if tx.receiver_count() == 0 {
            continue;
        }
        agent.drain_events(&mut buf);
        if buf.is_empty() {
            continue;
        }
        let batch = EventBatch {
            first: seq,
            events: buf.drain(..).collect(),
        };
        seq += batch.events.len() as u64;
        let _ = tx.send(batch);
    }
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
            .route("/v1/identities", get(identities))
            .route("/v1/policy/trace", axum::routing::post(policy_trace))
            .route("/v1/ct", get(get_ct).delete(delete_ct))
            .route("/v1/metrics", get(metrics))
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
