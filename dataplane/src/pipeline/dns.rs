//! Stage 7, **DNS inspection**: the queries a pod sends on a flow its policy inspects
//! (`rules.dns`) are checked against the names the policy allows, and the answers it gets back
//! teach the FQDN table the addresses its `toFQDNs` rules then allow.
//!
//! Which packets: in [`Mode::Full`](crate::tables::Mode::Full), after conntrack, services and
//! policy allowed the packet, a TCP or UDP packet
//! - in a flow's original direction, from a local endpoint, whose `(peer identity, protocol,
//!   destination port)` one of the endpoint's DNS rules covers: a **query**;
//! - in a flow's reply direction, to a local endpoint, whose `(peer identity, protocol, source
//!   port)` one of the endpoint's DNS rules covers: an **answer**.
//!
//! The stage sees the packet as routing will (`routed`: translated to a service's backend), so a
//! query to the kube-dns service is judged against the DNS server pod's identity, as policy
//! judged it. Nothing here depends on which worker runs it: the rules are in the tables, the
//! learned addresses in the FQDN table every worker shares ([`Conntrack::fqdn`]).
//!
//! What it does with them:
//! - A query whose name a rule allows goes on. A denied one is answered by the dataplane itself,
//!   in the query's own buffer: same ID and question, rcode REFUSED (or NXDOMAIN, the agent's
//!   option), from the address the pod asked, back on the port it came from. The server never
//!   sees it, and no flow is committed for it.
//! - An answer's A records that answer the question (directly or through CNAMEs) become allowed
//!   destinations of the endpoint, under each of its `toFQDNs` selectors matching the question's
//!   name, until `max(TTL, min_ttl_s)`, **before** the answer goes on: the pod cannot connect
//!   to an address it has not received yet, and once it has, every worker finds the fact.
//! - Every inspected message is reported on the DNS log ([`Conntrack::dns_log`]).
//! - Malformed messages are dropped as `dns-malformed`: a message that does not parse, a
//!   fragmented datagram (the stage cannot see all of it), a TCP segment that does not hold
//!   whole length-prefixed messages.
//!
//! TCP: each segment must carry whole messages (what stub resolvers and servers send: one write
//! of length and message). A denied query alone in its segment is answered with a segment whose
//! sequence number is the one the query acknowledged; that connection carries no further
//! query the server would accept, so clients see the REFUSED and open another. A segment
//! holding several messages one of which is denied is dropped as `policy-denied`.

use std::net::Ipv4Addr;

use super::{Judged, Meta, Outcome, Verdict};
use crate::checksum;
use crate::conntrack::Conntrack;
use crate::dns::log::{DnsAction, DnsRecord, MAX_RECORD_ANSWERS};
use crate::frame::Frame;
use crate::policy::{Identity, PolicyVerdict, RuleRef};
use crate::stats::DropReason;
use crate::tables::Tables;
use crate::wire::dns::{self, Message};
use crate::wire::ethernet::{self, EtherType};
use crate::wire::ip::{Protocol, proto};
use crate::wire::{ipv4, tcp, udp};

/// Most bytes of a question the answer to a denied query copies: the header and a name of the
/// longest wire form, with its type and class.
const MAX_QUESTION: usize = 12 + 255 + 4;

/// Which end of an inspected flow a packet comes from.
#[derive(Clone, Copy, Debug)]
enum Side {
    /// From the endpoint to the server.
    Query,
    /// From the server to the endpoint.
    Answer,
}

/// The flow a message travels on, as its rules see it.
#[derive(Clone, Copy, Debug)]
struct Flow {
    side: Side,
    /// The local endpoint's identity and address.
    endpoint: (Identity, Ipv4Addr),
    /// The server's identity, the protocol and the server's port.
    server: (Identity, u8, u16),
}

/// Stage 7 for a packet stages 4 to 6 judged `judged` (not a drop): `None` when it goes on to
/// routing, else its outcome (a drop, or a denied query's answer to send back). `meta` is the
/// packet as it came, `routed` as the stages after the service stage see it.
///
/// Inlined, so that a packet on no port a DNS rule covers (most of a node's traffic) costs a
/// compare or two; the rest is out of line.
#[inline(always)]
pub fn inspect(
    now: u64,
    frame: &mut Frame<'_>,
    (meta, routed): (&Meta, &Meta),
    judged: &Judged,
    tables: &Tables,
    ct: &Conntrack,
) -> Option<Outcome> {
    let (k, dns) = (&routed.key, tables.policy().dns());
    if !(dns.covers_port(k.dport) || dns.covers_port(k.sport)) {
        return None;
    }
    inspect_covered(now, frame, (meta, routed), judged, tables, ct)
}

/// [`inspect`] for a packet to or from a port a DNS rule covers.
#[inline(never)]
fn inspect_covered(
    now: u64,
    frame: &mut Frame<'_>,
    (meta, routed): (&Meta, &Meta),
    judged: &Judged,
    tables: &Tables,
    ct: &Conntrack,
) -> Option<Outcome> {
    let flow = inspected(routed, judged, tables)?;
    if meta.has(Meta::FRAGMENT) {
        return Some(Outcome::drop(DropReason::DnsMalformed));
    }
    let l4 = usize::from(meta.l4_offset);
    // The parse stage checked these lengths; were they wrong, the message is not let through
    // unread.
    let malformed = Outcome::drop(DropReason::DnsMalformed);
    let Some(segment) = frame.data().get(l4..l4 + usize::from(meta.l4_len)) else {
        return Some(malformed);
    };
    let r = if routed.key.proto == proto::UDP {
        let Some(payload) = segment.get(udp::HEADER_LEN..) else {
            return Some(malformed);
        };
        udp_message(now, payload, meta, flow, tables, ct)
    } else {
        tcp_segment(now, segment, meta, flow, tables, ct)
    };
    match r {
        Ok(None) => None,
        Ok(Some(denied)) => Some(answer_denied(frame, meta, denied, tables)),
        Err(reason) => Some(Outcome::drop(reason)),
    }
}

/// The inspected flow `routed` travels on, if any.
#[inline]
fn inspected(routed: &Meta, judged: &Judged, tables: &Tables) -> Option<Flow> {
    let k = &routed.key;
    if k.proto != proto::UDP && k.proto != proto::TCP {
        return None;
    }
    let side = match judged {
        Judged::Admitted(_) | Judged::Done(PolicyVerdict::New | PolicyVerdict::Established) => {
            Side::Query
        }
        Judged::Done(PolicyVerdict::Reply) => Side::Answer,
        Judged::Done(_) => return None,
    };
    let (ep_ip, server_ip, server_port) = match side {
        Side::Query => (k.src, k.dst, k.dport),
        Side::Answer => (k.dst, k.src, k.sport),
    };
    let rules = tables.policy();
    let (identity, _) = rules.endpoint(ep_ip)?;
    if rules.dns().rules(identity).is_empty() {
        return None;
    }
    let peer = rules.identity_of(server_ip);
    rules
        .dns()
        .inspects(identity, peer, k.proto, server_port)
        .then_some(Flow {
            side,
            endpoint: (identity, ep_ip),
            server: (peer, k.proto, server_port),
        })
}

/// A denied query to answer: where its DNS message starts in the frame and what it asked.
#[derive(Clone, Copy, Debug)]
struct Denied {
    /// The question, header included, as sent (a query's question is what its answer repeats).
    question: [u8; MAX_QUESTION],
    question_len: usize,
}

/// One UDP datagram's message: `Ok(None)` to send it on, `Ok(Some)` for a denied query.
fn udp_message(
    now: u64,
    payload: &[u8],
    meta: &Meta,
    flow: Flow,
    tables: &Tables,
    ct: &Conntrack,
) -> Result<Option<Denied>, DropReason> {
    let msg = dns::parse(payload)?;
    // Every record is read before the message is judged: a count larger than the message is
    // malformed in a query as in an answer.
    msg.answers(|_| {})?;
    match flow.side {
        Side::Query => Ok(query(now, &msg, meta, flow, tables, ct)),
        Side::Answer => answer(now, &msg, meta, flow, tables, ct).map(|()| None),
    }
}

/// One TCP segment's messages. See the module documentation.
fn tcp_segment(
    now: u64,
    segment: &[u8],
    meta: &Meta,
    flow: Flow,
    tables: &Tables,
    ct: &Conntrack,
) -> Result<Option<Denied>, DropReason> {
    let header_len = tcp::Packet::new_checked(segment)
        .ok_or(DropReason::DnsMalformed)?
        .header_len();
    let payload = segment.get(header_len..).unwrap_or(&[]);
    // Validated whole before any of it is acted on: a bad second message drops the segment
    // without the first one's addresses learned or its query logged.
    let mut count = 0;
    for range in dns::tcp_messages(payload) {
        dns::parse(payload.get(range?).unwrap_or(&[]))?.answers(|_| {})?;
        count += 1;
    }
    let mut denied = None;
    for range in dns::tcp_messages(payload).flatten() {
        let msg = dns::parse(payload.get(range).unwrap_or(&[]))?;
        match flow.side {
            Side::Query => {
                if let Some(d) = query(now, &msg, meta, flow, tables, ct) {
                    denied = Some(d);
                }
            }
            Side::Answer => answer(now, &msg, meta, flow, tables, ct)?,
        }
    }
    match denied {
        Some(_) if count > 1 => Err(DropReason::PolicyDenied),
        d => Ok(d),
    }
}

/// A query: allowed (`None`) or denied. Reported either way.
fn query(
    now: u64,
    msg: &Message<'_>,
    meta: &Meta,
    flow: Flow,
    tables: &Tables,
    ct: &Conntrack,
) -> Option<Denied> {
    let rule =
        tables
            .policy()
            .dns()
            .allowing(flow.endpoint.0, flow.server, msg.question.name.as_bytes());
    let rcode = match rule {
        Some(_) => 0,
        None => tables.dns_options().reject_rcode,
    };
    let mut record = record(now, msg, meta, flow, ct);
    record.rule = rule;
    record.rcode = u16::from(rcode);
    if rule.is_some() {
        ct.dns_log().push(record);
        return None;
    }
    record.action = DnsAction::Refused;
    ct.dns_log().push(record);
    let mut question = [0; MAX_QUESTION];
    // The question lies within the message `parse` accepted, and fits (a name's wire form is
    // at most 255 bytes); were either wrong, the answer is empty and the query dropped.
    let question_len = match msg.bytes().get(..msg.question_end()) {
        Some(q) if q.len() <= MAX_QUESTION => {
            question[..q.len()].copy_from_slice(q);
            dns::refuse(&mut question[..q.len()], q.len(), rcode)
        }
        _ => 0,
    };
    Some(Denied {
        question,
        question_len,
    })
}

/// An answer: its addresses learned for every `toFQDNs` selector of the endpoint its question
/// matches, then reported. Malformed (counted, dropped) before anything is learned.
fn answer(
    now: u64,
    msg: &Message<'_>,
    meta: &Meta,
    flow: Flow,
    tables: &Tables,
    ct: &Conntrack,
) -> Result<(), DropReason> {
    if !msg.header.response {
        return Err(DropReason::DnsMalformed);
    }
    let name = msg.question.name.as_bytes();
    let mut record = record(now, msg, meta, flow, ct);
    record.rule = tables
        .policy()
        .dns()
        .allowing(flow.endpoint.0, flow.server, name);
    record.rcode = u16::from(msg.header.rcode);
    let opts = tables.dns_options();
    let scopes = tables.policy().dns().scopes(flow.endpoint.1);
    let learn = msg.header.rcode == 0;
    let mut kept = 0usize;
    msg.answers(|a| {
        if usize::from(record.answer_count) < MAX_RECORD_ANSWERS {
            record.answers[usize::from(record.answer_count)] = (a.ip, a.ttl);
            record.answer_count += 1;
        }
        if !learn || kept >= usize::from(opts.max_ips_per_name) {
            return;
        }
        kept += 1;
        let ttl_ns = u64::from(a.ttl.max(opts.min_ttl_s)) * 1_000_000_000;
        for s in scopes.iter().filter(|s| s.selector.matches(name)) {
            let learned = ct
                .fqdn()
                .learn(now, s.scope, a.ip, now.saturating_add(ttl_ns), 0);
            if matches!(
                learned,
                crate::learned::Learn::Learned | crate::learned::Learn::Refreshed
            ) {
                record.learned = record.learned.saturating_add(1);
            }
        }
    })?;
    ct.dns_log().push(record);
    Ok(())
}

/// The record of `msg`, with no rule, no answers and nothing learned yet.
fn record(now: u64, msg: &Message<'_>, meta: &Meta, flow: Flow, ct: &Conntrack) -> DnsRecord {
    let k = &meta.key;
    DnsRecord {
        time_ns: now,
        worker: ct.worker(),
        endpoint: flow.endpoint.1,
        src: k.src,
        dst: k.dst,
        sport: k.sport,
        dport: k.dport,
        proto: k.proto,
        id: msg.header.id,
        response: msg.header.response,
        qname: msg.question.name,
        qtype: msg.question.qtype,
        rcode: 0,
        action: DnsAction::Forwarded,
        rule: None::<RuleRef>,
        answers: [(Ipv4Addr::UNSPECIFIED, 0); MAX_RECORD_ANSWERS],
        answer_count: 0,
        learned: 0,
    }
}

/// Writes the answer to a denied query over the frame, from the address and port the pod
/// asked, for the pod, reached by its route: a UDP datagram, or a TCP segment carrying the
/// length-prefixed message that acknowledges the query.
#[cold]
fn answer_denied(frame: &mut Frame<'_>, meta: &Meta, d: Denied, tables: &Tables) -> Outcome {
    if d.question_len == 0 {
        return Outcome::drop(DropReason::DnsMalformed);
    }
    let Some(back) = tables.route(meta.key.src) else {
        return Outcome::drop(DropReason::NoRoute);
    };
    let tcp_ends = if meta.key.proto == proto::TCP {
        let l4 = usize::from(meta.l4_offset);
        let Some(seg) = frame
            .data()
            .get(l4..l4 + usize::from(meta.l4_len))
            .and_then(tcp::Packet::new_checked)
        else {
            return Outcome::drop(DropReason::DnsMalformed);
        };
        let data = usize::from(meta.l4_len).saturating_sub(seg.header_len()) as u32;
        let fin = u32::from(seg.flags() & tcp::flags::FIN != 0);
        Some((seg.ack(), seg.seq().wrapping_add(data + fin)))
    } else {
        None
    };
    let msg = &d.question[..d.question_len];
    let (l4_header, prefix) = match tcp_ends {
        Some(_) => (tcp::MIN_HEADER_LEN, 2),
        None => (udp::HEADER_LEN, 0),
    };
    let l4_len = l4_header + prefix + msg.len();
    let ip = ipv4::Repr {
        src: meta.key.dst.octets(),
        dst: meta.key.src.octets(),
        protocol: if tcp_ends.is_some() {
            Protocol::TCP
        } else {
            Protocol::UDP
        },
        payload_len: l4_len as u16,
        ttl: 64,
        tos: 0,
    };
    let total = ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + l4_len;
    if frame.capacity() < total {
        return Outcome::drop(DropReason::IcmpNoRoom);
    }
    frame.set_len(total);
    let Some((e, rest)) = frame
        .data_mut()
        .split_first_chunk_mut::<{ ethernet::HEADER_LEN }>()
    else {
        return Outcome::drop(DropReason::IcmpNoRoom);
    };
    let Some((h, l4)) = rest.split_first_chunk_mut::<{ ipv4::MIN_HEADER_LEN }>() else {
        return Outcome::drop(DropReason::IcmpNoRoom);
    };
    ethernet::Repr {
        src: tables.gateway().mac.0,
        dst: back.mac.0,
        ethertype: EtherType::IPV4,
    }
    .emit(&mut ethernet::Frame::new_unchecked(e));
    ip.emit(h);
    let (header, payload) = l4.split_at_mut(l4_header);
    if prefix == 2 {
        payload[..2].copy_from_slice(&(msg.len() as u16).to_be_bytes());
    }
    payload[prefix..].copy_from_slice(msg);
    let ports = (meta.key.dport, meta.key.sport);
    match tcp_ends {
        Some((seq, ack)) => tcp_header(header, ports, seq, ack),
        None => udp_header(header, ports, l4_len as u16),
    }
    let field = if tcp_ends.is_some() {
        tcp::CHECKSUM_OFFSET
    } else {
        udp::CHECKSUM_OFFSET
    };
    let mut sum = checksum::ipv4_pseudo_header(ip.src, ip.dst, ip.protocol.0, l4_len as u16)
        .add_bytes(l4)
        .checksum();
    if tcp_ends.is_none() && sum == 0 {
        sum = 0xffff; // RFC 768: a computed zero is sent as all ones.
    }
    l4[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    Outcome::verdict(Verdict::Forward(back.port))
}

/// A UDP header with a zero checksum field (summed afterwards).
fn udp_header(h: &mut [u8], (sport, dport): (u16, u16), len: u16) {
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&len.to_be_bytes());
    h[6..8].fill(0);
}

/// A 20-byte TCP header, ACK and PSH, with a zero checksum field (summed afterwards).
fn tcp_header(h: &mut [u8], (sport, dport): (u16, u16), seq: u32, ack: u32) {
    h.fill(0);
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[8..12].copy_from_slice(&ack.to_be_bytes());
    h[12] = (tcp::MIN_HEADER_LEN as u8 / 4) << 4;
    h[13] = tcp::flags::ACK | tcp::flags::PSH;
    // The window the server would advertise is unknown; a modest one is enough for a client
    // that is about to read one answer.
    h[14..16].copy_from_slice(&4096u16.to_be_bytes());
}
