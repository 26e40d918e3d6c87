//! The monitor stream (`GET /v1/monitor`) and its dispatcher: every 5 ms while a client
//! listens, the events of the workers' rings and the agent's own queues (its events, and the
//! DNS records the DNS thread drained) go to every client as one broadcast batch; each client
//! writes the types it asked for, one JSON line per event.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::Uri;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use hyper::body::Bytes;
use tokio::sync::broadcast;
use xylem_dataplane::monitor::{EventType, FlowEvent};

use super::{Api, error};
use crate::agent::{AgentEvent, AgentState, DnsEvent};

/// Dispatcher batches (one per 5 ms tick that had events) buffered per monitor client before
/// its events count as lost: about 1.3 s of events.
pub(super) const CLIENT_BUFFER: usize = 256;

/// What the dispatcher hands every monitor client per tick: the events drained from the
/// workers' rings, as `(worker, event)`, the agent's own events and the DNS events (numbered
/// after them), and the running number of the first, by which a client that fell behind knows
/// how many it missed.
#[derive(Clone)]
pub(super) struct EventBatch {
    first: u64,
    events: Arc<[(usize, FlowEvent)]>,
    agent: Arc<[AgentEvent]>,
    dns: Arc<[DnsEvent]>,
}

impl EventBatch {
    fn len(&self) -> u64 {
        (self.events.len() + self.agent.len() + self.dns.len()) as u64
    }
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
                "unknown parameter: use type=drop|trace|policy-verdict|dns|agent",
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
    names: &'a Names,
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

/// An agent event as the monitor stream carries it (stable field names).
#[derive(serde::Serialize)]
struct AgentEventLine<'a> {
    time: String,
    #[serde(rename = "type")]
    kind: &'static str,
    event: &'static str,
    service: &'a str,
    backend: String,
    from: &'a str,
    to: &'a str,
}

fn agent_event_line(ev: &AgentEvent) -> AgentEventLine<'_> {
    AgentEventLine {
        time: rfc3339(ev.time),
        kind: EventType::Agent.as_str(),
        event: ev.event,
        service: &ev.service,
        backend: ev.backend.to_string(),
        from: &ev.from,
        to: &ev.to,
    }
}

/// The names of the ports and of the endpoints' addresses, as [`AgentState::names`] gives them.
type Names = (Vec<String>, BTreeMap<std::net::Ipv4Addr, String>);

/// Appends `v` as one JSON line.
fn push_line<T: serde::Serialize>(chunk: &mut Vec<u8>, v: &T) {
    if serde_json::to_writer(&mut *chunk, v).is_ok() {
        chunk.push(b'\n');
    }
}

/// The lines of `batch` for a client that asked for `types`, written into one chunk.
fn render_batch(
    agent: &AgentState,
    names: &Names,
    types: &[EventType],
    batch: &EventBatch,
) -> Vec<u8> {
    let mut chunk = Vec::new();
    for (w, ev) in batch.events.iter() {
        if types.contains(&ev.kind) {
            push_line(&mut chunk, &event_line(agent, names, *w, ev));
        }
    }
    if types.contains(&EventType::Agent) {
        for ev in batch.agent.iter() {
            push_line(&mut chunk, &agent_event_line(ev));
        }
    }
    if types.contains(&EventType::Dns) {
        for ev in batch.dns.iter() {
            push_line(&mut chunk, &dns_event_line(names, ev));
        }
    }
    chunk
}

/// One answer of a DNS event.
#[derive(serde::Serialize)]
struct DnsAnswerLine {
    ip: std::net::Ipv4Addr,
    ttl: u32,
}

/// The DNS part of a DNS event (stable field names): the query fully qualified, the type and
/// rcode by name, and the `rules.dns` rule that allowed the query.
#[derive(serde::Serialize)]
struct DnsLine<'a> {
    id: u16,
    response: bool,
    query: &'a str,
    qtype: String,
    rcode: String,
    answers: Vec<DnsAnswerLine>,
    rule: Option<&'a xylem_dataplane::policy::RuleOrigin>,
}

/// A DNS event as the monitor stream carries it: the fields every event has, and `dns`.
#[derive(serde::Serialize)]
struct DnsEventLine<'a> {
    time: String,
    #[serde(rename = "type")]
    kind: &'static str,
    worker: usize,
    source: Peer<'a>,
    destination: Peer<'a>,
    protocol: Option<Protocol>,
    src_port: u16,
    dst_port: u16,
    verdict: &'static str,
    drop_reason: Option<&'static str>,
    dns: DnsLine<'a>,
}

fn dns_event_line<'a>(names: &'a Names, ev: &'a DnsEvent) -> DnsEventLine<'a> {
    use xylem_dataplane::wire::dns::{rcode_name, type_name};
    let peer = |ip: std::net::Ipv4Addr| Peer {
        ip: Some(ip),
        endpoint: names.1.get(&ip).map(String::as_str),
    };
    DnsEventLine {
        time: rfc3339(ev.time),
        kind: EventType::Dns.as_str(),
        worker: usize::from(ev.worker),
        source: peer(ev.src),
        destination: peer(ev.dst),
        protocol: protocol_name(ev.proto),
        src_port: ev.sport,
        dst_port: ev.dport,
        verdict: if ev.refused { "REFUSED" } else { "FORWARDED" },
        drop_reason: None,
        dns: DnsLine {
            id: ev.id,
            response: ev.response,
            query: &ev.query,
            qtype: type_name(ev.qtype),
            rcode: rcode_name(ev.rcode),
            answers: ev
                .answers
                .iter()
                .map(|&(ip, ttl)| DnsAnswerLine { ip, ttl })
                .collect(),
            rule: ev.rule.as_ref(),
        },
    }
}

fn line(v: &serde_json::Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

pub(super) async fn monitor(State(api): State<Api>, uri: Uri) -> Response {
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
        names: Names,
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
                    st.next = Some(batch.first + batch.len());
                    let chunk = render_batch(&st.api.agent, &st.names, &st.types, &batch);
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

/// Moves events from the workers' rings and the agent's own queue to the monitor clients, every
/// 5 ms while one listens: one broadcast batch per tick.
pub(super) async fn dispatch(agent: Arc<AgentState>, tx: broadcast::Sender<EventBatch>) {
    let mut buf = Vec::with_capacity(4096);
    let mut agent_buf = Vec::new();
    let mut dns_buf = Vec::new();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(5));
    loop {
        tick.tick().await;
        if tx.receiver_count() == 0 {
            continue;
        }
        agent.drain_events(&mut buf);
        agent.drain_agent_events(&mut agent_buf);
        agent.drain_dns_events(&mut dns_buf);
        if buf.is_empty() && agent_buf.is_empty() && dns_buf.is_empty() {
            continue;
        }
        let batch = EventBatch {
            first: seq,
            events: buf.drain(..).collect(),
            agent: agent_buf.drain(..).collect(),
            dns: dns_buf.drain(..).collect(),
        };
        seq += batch.len();
        let _ = tx.send(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xylem_dataplane::policy::{RuleOrigin, Section};

    #[test]
    fn a_dns_event_has_every_event_s_fields_and_its_own() {
        let names: Names = (
            Vec::new(),
            BTreeMap::from([([10, 200, 0, 10].into(), "default/pod-a".to_string())]),
        );
        let ev = DnsEvent {
            time: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
            worker: 1,
            src: [10, 96, 0, 10].into(),
            dst: [10, 200, 0, 10].into(),
            sport: 53,
            dport: 40000,
            proto: 17,
            id: 4242,
            response: true,
            query: "a.domain.com.".into(),
            qtype: 1,
            rcode: 0,
            refused: false,
            rule: Some(RuleOrigin {
                policy: "default/dns".into(),
                spec: 0,
                section: Section::Egress,
                index: 1,
            }),
            answers: vec![([192, 0, 2, 10].into(), 30)],
        };
        let v = serde_json::to_value(dns_event_line(&names, &ev)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "time": "2027-01-15T08:00:00.000000000Z",
                "type": "dns",
                "worker": 1,
                "source": {"ip": "10.96.0.10", "endpoint": null},
                "destination": {"ip": "10.200.0.10", "endpoint": "default/pod-a"},
                "protocol": "UDP",
                "src_port": 53,
                "dst_port": 40000,
                "verdict": "FORWARDED",
                "drop_reason": null,
                "dns": {
                    "id": 4242,
                    "response": true,
                    "query": "a.domain.com.",
                    "qtype": "A",
                    "rcode": "NOERROR",
                    "answers": [{"ip": "192.0.2.10", "ttl": 30}],
                    "rule": {"policy": "default/dns", "spec": 0, "section": "egress", "index": 1}
                }
            })
        );
        let refused = DnsEvent {
            response: false,
            refused: true,
            rcode: 5,
            rule: None,
            answers: Vec::new(),
            ..ev
        };
        let v = serde_json::to_value(dns_event_line(&names, &refused)).unwrap();
        assert_eq!(v["verdict"], "REFUSED");
        assert_eq!(v["dns"]["rcode"], "REFUSED");
        assert_eq!(v["dns"]["rule"], serde_json::Value::Null);
    }
}
