//! Tests of `wire::dns`: messages built with `hickory-proto`'s own encoder where it can express
//! them, by hand where the defect is the point.

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Edns, Message as HMessage, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, SOA};
use hickory_proto::rr::{Name as HName, RData, Record, RecordType};

use super::*;

fn hname(s: &str) -> HName {
    HName::from_ascii(s).expect("a valid name")
}

fn query_msg(id: u16, name: &str, qtype: RecordType) -> HMessage {
    let mut m = HMessage::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(hname(name), qtype));
    m
}

fn a(name: &str, ip: [u8; 4], ttl: u32) -> Record {
    Record::from_rdata(hname(name), ttl, RData::A(A(Ipv4Addr::from(ip))))
}

fn cname(name: &str, target: &str) -> Record {
    Record::from_rdata(hname(name), 300, RData::CNAME(CNAME(hname(target))))
}

fn answer_msg(name: &str, answers: Vec<Record>) -> Vec<u8> {
    let mut m = query_msg(0x1234, name, RecordType::A);
    m.metadata.message_type = MessageType::Response;
    for r in answers {
        m.add_answer(r);
    }
    m.to_vec().expect("encodes")
}

fn reported(bytes: &[u8]) -> Result<Vec<Answer>, DropReason> {
    let msg = parse(bytes)?;
    let mut out = Vec::new();
    let n = msg.answers(|a| out.push(a))?;
    assert_eq!(n, out.len());
    Ok(out)
}

fn ips(answers: &[Answer]) -> Vec<Ipv4Addr> {
    answers.iter().map(|a| a.ip).collect()
}

/// A header with QDCOUNT 1 and the given ANCOUNT, then `rest`.
fn raw(ancount: u16, rest: &[u8]) -> Vec<u8> {
    let mut b = vec![0xab, 0xcd, 0x01, 0x00, 0, 1];
    b.extend_from_slice(&ancount.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 0]);
    b.extend_from_slice(rest);
    b
}

/// A record: owner (wire form), type A, class IN, TTL 60, 10.0.0.`last`.
fn raw_a(owner: &[u8], last: u8) -> Vec<u8> {
    let mut r = owner.to_vec();
    r.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, last]);
    r
}

const QUESTION_A: &[u8] = &[1, b'a', 0, 0, 1, 0, 1];

#[test]
fn query_id_name_type() {
    let bytes = query_msg(0xbeef, "www.example.com.", RecordType::AAAA)
        .to_vec()
        .unwrap();
    let msg = parse(&bytes).unwrap();
    assert_eq!(msg.header.id, 0xbeef);
    assert!(!msg.header.response);
    assert_eq!(
        (msg.header.opcode, msg.header.qdcount, msg.header.ancount),
        (0, 1, 0)
    );
    assert_eq!(msg.question.name.as_str(), "www.example.com.");
    assert_eq!(msg.question.qtype, 28);
    assert_eq!(msg.question.qclass, 1);
    assert_eq!(msg.question_end(), bytes.len());
    assert_eq!(msg.bytes(), &bytes[..]);
    assert_eq!(msg.answers(|_| panic!("a query has no answers")), Ok(0));
}

#[test]
fn names_are_lowercased() {
    let bytes = query_msg(1, "WWW.Example.COM.", RecordType::A)
        .to_vec()
        .unwrap();
    assert!(
        bytes.windows(3).any(|w| w == b"WWW"),
        "the encoder kept the case"
    );
    assert_eq!(
        parse(&bytes).unwrap().question.name.to_string(),
        "www.example.com."
    );
}

#[test]
fn underscore_labels_stay() {
    let bytes = query_msg(1, "_sip._tcp.example.com.", RecordType::SRV)
        .to_vec()
        .unwrap();
    let msg = parse(&bytes).unwrap();
    assert_eq!(msg.question.name.as_str(), "_sip._tcp.example.com.");
    assert_eq!(type_name(msg.question.qtype), "SRV");
}

#[test]
fn odd_bytes_are_escaped() {
    let bytes = raw(
        0,
        &[
            5, b'A', b'.', b' ', 0xff, b'-', 3, b'c', b'o', b'm', 0, 0, 1, 0, 1,
        ],
    );
    let name = parse(&bytes).unwrap().question.name;
    assert_eq!(name.as_str(), "a\\046\\032\\255-.com.");
    assert!(name.as_bytes().is_ascii());
    // The escaped dot is one label, not two: it differs from `a.` + ...
    assert_ne!(Some(name), Name::from_dotted("a.\\032\\255-.com"));
    assert_eq!(Name::from_dotted(name.as_str()), Some(name));
}

#[test]
fn root_name() {
    let bytes = query_msg(7, ".", RecordType::NS).to_vec().unwrap();
    let name = parse(&bytes).unwrap().question.name;
    assert_eq!(name, Name::root());
    assert!(name.is_root());
    assert_eq!(name.as_str(), ".");
    assert_eq!(Name::from_dotted("."), Some(Name::root()));
    assert_eq!(Name::from_dotted(""), Some(Name::root()));
}

#[test]
fn from_dotted_normalizes_and_refuses() {
    let n = Name::from_dotted("Foo.Example.COM").unwrap();
    assert_eq!(n.as_str(), "foo.example.com.");
    assert_eq!(Name::from_dotted("foo.example.com."), Some(n));
    assert_eq!(Name::from_dotted("a b.c").unwrap().as_str(), "a\\032b.c.");
    assert_eq!(Name::from_dotted("\\065.c").unwrap().as_str(), "a.c.");
    assert_eq!(Name::from_dotted("a..b"), None);
    assert_eq!(Name::from_dotted(".a"), None);
    assert_eq!(Name::from_dotted("\\25"), None);
    assert_eq!(Name::from_dotted("\\256"), None);
    assert_eq!(Name::from_dotted(&"x".repeat(64)), None);
    assert!(Name::from_dotted(&"x".repeat(63)).is_some());
    let label = "x".repeat(63);
    assert!(Name::from_dotted(&[&label[..], &label, &label, &label[..61]].join(".")).is_some());
    assert_eq!(
        Name::from_dotted(&[&label[..], &label, &label, &label[..62]].join(".")),
        None
    );
    // Fits the wire, not the text buffer.
    let odd = "\\001".repeat(63);
    assert_eq!(Name::from_dotted(&odd).unwrap().as_bytes().len(), 253);
    assert_eq!(Name::from_dotted(&format!("{odd}.\\001\\001")), None);
}

#[test]
fn two_a_records() {
    let bytes = answer_msg(
        "example.com.",
        vec![
            a("example.com.", [1, 2, 3, 4], 60),
            a("example.com.", [5, 6, 7, 8], 120),
        ],
    );
    let got = reported(&bytes).unwrap();
    assert_eq!(
        got,
        [
            Answer {
                ip: Ipv4Addr::new(1, 2, 3, 4),
                ttl: 60
            },
            Answer {
                ip: Ipv4Addr::new(5, 6, 7, 8),
                ttl: 120
            }
        ]
    );
    assert!(parse(&bytes).unwrap().header.response);
}

#[test]
fn cname_chain_in_any_order() {
    let bytes = answer_msg(
        "a.domain.com.",
        vec![
            a("c.cdn.net.", [10, 0, 0, 1], 30),
            a("x.other.", [9, 9, 9, 9], 30),
            cname("b.cdn.net.", "c.cdn.net."),
            a("c.cdn.net.", [10, 0, 0, 2], 30),
            cname("a.domain.com.", "b.cdn.net."),
        ],
    );
    // The encoder compressed the names: `cdn` is written once.
    assert_eq!(bytes.windows(4).filter(|w| w == b"\x03cdn").count(), 1);
    let got = reported(&bytes).unwrap();
    assert_eq!(
        ips(&got),
        [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]
    );
}

#[test]
fn cname_chain_stops_after_the_limit() {
    let names: Vec<String> = (0..=MAX_CNAME_CHAIN + 1)
        .map(|i| format!("n{i}.example."))
        .collect();
    let mut records: Vec<Record> = names
        .windows(2)
        .rev()
        .map(|w| cname(&w[0], &w[1]))
        .collect();
    // Reached through MAX_CNAME_CHAIN links: reported; one more: not.
    records.push(a(&names[MAX_CNAME_CHAIN], [1, 1, 1, 1], 5));
    records.push(a(&names[MAX_CNAME_CHAIN + 1], [2, 2, 2, 2], 5));
    let got = reported(&answer_msg(&names[0], records)).unwrap();
    assert_eq!(ips(&got), [Ipv4Addr::new(1, 1, 1, 1)]);
}

#[test]
fn cname_loop_ends() {
    let bytes = answer_msg(
        "a.example.",
        vec![
            cname("a.example.", "b.example."),
            cname("b.example.", "a.example."),
            a("b.example.", [3, 3, 3, 3], 5),
        ],
    );
    assert_eq!(ips(&reported(&bytes).unwrap()), [Ipv4Addr::new(3, 3, 3, 3)]);
}

#[test]
fn aaaa_is_validated_not_reported() {
    let v6 = Record::from_rdata(
        hname("example.com."),
        60,
        RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
    );
    let bytes = answer_msg(
        "example.com.",
        vec![v6, a("example.com.", [1, 2, 3, 4], 60)],
    );
    assert_eq!(ips(&reported(&bytes).unwrap()), [Ipv4Addr::new(1, 2, 3, 4)]);
    // An AAAA rdata of 15 bytes.
    let mut bad = raw(1, QUESTION_A);
    bad.extend_from_slice(&[0xc0, 12, 0, 28, 0, 1, 0, 0, 0, 60, 0, 15]);
    bad.extend_from_slice(&[0; 15]);
    assert_eq!(reported(&bad), Err(DropReason::DnsMalformed));
}

#[test]
fn other_sections_are_validated() {
    let mut m = query_msg(9, "example.com.", RecordType::MX);
    m.metadata.message_type = MessageType::Response;
    let mx = MX::new(10, hname("mail.example.com."));
    m.add_answer(Record::from_rdata(hname("example.com."), 60, RData::MX(mx)));
    let soa = SOA::new(
        hname("ns.example.com."),
        hname("root.example.com."),
        1,
        2,
        3,
        4,
        5,
    );
    m.add_authority(Record::from_rdata(
        hname("example.com."),
        60,
        RData::SOA(soa),
    ));
    m.add_additional(a("mail.example.com.", [4, 4, 4, 4], 60));
    m.set_edns(Edns::new());
    let bytes = m.to_vec().unwrap();
    // The A record is in the additional section: validated, not reported.
    assert_eq!(reported(&bytes), Ok(vec![]));
    // The last record (the OPT) cut short.
    assert_eq!(
        reported(&bytes[..bytes.len() - 1]),
        Err(DropReason::DnsMalformed)
    );
    // Trailing bytes after the last record are fine.
    let mut long = bytes.clone();
    long.extend_from_slice(&[0xff; 5]);
    assert_eq!(reported(&long), Ok(vec![]));
}

#[test]
fn cname_rdata_must_be_exactly_a_name() {
    let mut bytes = raw(1, QUESTION_A);
    bytes.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 4, 1, b'b', 0, 0]);
    assert_eq!(reported(&bytes), Err(DropReason::DnsMalformed));
    let mut bytes = raw(1, QUESTION_A);
    bytes.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 3, 1, b'b', 0]);
    assert_eq!(reported(&bytes), Ok(vec![]));
}

fn malformed(bytes: &[u8]) -> bool {
    reported(bytes) == Err(DropReason::DnsMalformed)
}

#[test]
fn truncated_messages() {
    let bytes = answer_msg("example.com.", vec![a("example.com.", [1, 2, 3, 4], 60)]);
    let qend = parse(&bytes).unwrap().question_end();
    assert!(malformed(&bytes[..11]));
    assert!(malformed(&bytes[..12]));
    for cut in 12..qend {
        assert!(malformed(&bytes[..cut]), "question cut at {cut}");
    }
    for cut in qend..bytes.len() {
        assert!(parse(&bytes[..cut]).is_ok());
        assert!(malformed(&bytes[..cut]), "answer cut at {cut}");
    }
    assert!(!malformed(&bytes));
}

#[test]
fn compression_loops_and_forward_pointers() {
    // The question's name a pointer to itself.
    assert!(malformed(&raw(0, &[0xc0, 12, 0, 1, 0, 1])));
    // Two pointers at each other.
    assert!(malformed(&raw(0, &[0xc0, 14, 0xc0, 12, 0, 1, 0, 1])));
    // "a" then a pointer back to its own start.
    assert!(malformed(&raw(0, &[1, b'a', 0xc0, 12, 0, 1, 0, 1])));
    // A forward pointer to a valid name.
    assert!(malformed(&raw(0, &[1, b'a', 0xc0, 18, 0, 1, 0, 1, 0, 0])));
    // In an answer: owners pointing at each other.
    let mut b = raw(2, QUESTION_A);
    b.extend_from_slice(&raw_a(&[0xc0, 35], 1));
    b.extend_from_slice(&raw_a(&[0xc0, 19], 2));
    assert_eq!(b[35], 0xc0);
    assert!(malformed(&b));
    // A pointer into the header, which holds no name.
    assert!(malformed(&raw(0, &[1, b'a', 0xc0, 2, 0, 1, 0, 1])));
    let mut b = raw(1, QUESTION_A);
    b.extend_from_slice(&raw_a(&[0xc0, 11], 1));
    assert!(malformed(&b));
    // A backward pointer is fine.
    let mut b = raw(1, QUESTION_A);
    b.extend_from_slice(&raw_a(&[0xc0, 12], 1));
    assert_eq!(ips(&reported(&b).unwrap()), [Ipv4Addr::new(10, 0, 0, 1)]);
}

/// Record k's owner is `x` and a pointer to record k-1's owner: k + 1 pointers.
fn pointer_ladder(records: usize) -> Vec<u8> {
    let mut b = raw(records as u16, QUESTION_A);
    let mut prev = 12u16;
    for _ in 0..records {
        let at = u16::try_from(b.len()).unwrap();
        let [hi, lo] = prev.to_be_bytes();
        b.extend_from_slice(&raw_a(&[1, b'x', 0xc0 | hi, lo], 1));
        prev = at;
    }
    b
}

#[test]
fn pointer_limit() {
    assert!(reported(&pointer_ladder(MAX_POINTERS)).is_ok());
    assert!(malformed(&pointer_ladder(MAX_POINTERS + 1)));
}

#[test]
fn counts_larger_than_the_records() {
    let mut bytes = answer_msg("example.com.", vec![a("example.com.", [1, 2, 3, 4], 60)]);
    assert!(!malformed(&bytes));
    bytes[7] = 2;
    assert!(malformed(&bytes));
    bytes[7] = 1;
    bytes[11] = 1;
    assert!(malformed(&bytes));
    let mut q = query_msg(1, "example.com.", RecordType::A)
        .to_vec()
        .unwrap();
    q[5] = 0;
    assert_eq!(parse(&q).err(), Some(DropReason::DnsMalformed));
    q[5] = 2;
    assert_eq!(parse(&q).err(), Some(DropReason::DnsMalformed));
}

fn question_of(labels: &[usize]) -> Vec<u8> {
    let mut q = Vec::new();
    for &n in labels {
        q.push(u8::try_from(n).unwrap());
        q.extend(std::iter::repeat_n(b'x', n));
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    raw(0, &q)
}

#[test]
fn label_and_name_lengths() {
    assert!(parse(&question_of(&[63])).is_ok());
    assert!(parse(&question_of(&[64])).is_err());
    // 255 bytes on the wire, then 256.
    let name = parse(&question_of(&[63, 63, 63, 61]))
        .unwrap()
        .question
        .name;
    assert_eq!(name.as_bytes().len(), 254);
    assert!(parse(&question_of(&[63, 63, 63, 62])).is_err());
    assert!(parse(&question_of(&[63; 5])).is_err());
    // Fits the wire, but not the presentation buffer once escaped.
    let mut q = vec![63];
    q.extend_from_slice(&[1; 63]);
    q.extend_from_slice(&[2, 1, 1, 0, 0, 1, 0, 1]);
    assert!(parse(&raw(0, &q)).is_err());
    // An extended label type (0x40).
    assert!(parse(&raw(0, &[0x41, b'x', 0, 0, 1, 0, 1])).is_err());
}

#[test]
fn refuse_rewrites_the_query() {
    let mut m = query_msg(0x4242, "Blocked.Example.com.", RecordType::A);
    m.metadata.authentic_data = true;
    m.metadata.checking_disabled = true;
    m.metadata.op_code = OpCode::Status;
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    m.set_edns(edns);
    let mut buf = m.to_vec().unwrap();
    buf[3] |= 0x40; // Z
    let (qend, question) = {
        let msg = parse(&buf).unwrap();
        assert_eq!(msg.header.arcount, 1);
        (msg.question_end(), msg.question)
    };
    assert!(qend < buf.len());
    let n = refuse(&mut buf, qend, RCODE_REFUSED);
    assert_eq!(n, qend);
    let out = &buf[..n];
    let msg = parse(out).unwrap();
    assert_eq!(msg.header.id, 0x4242);
    assert!(msg.header.response);
    assert_eq!(msg.header.opcode, u8::from(OpCode::Status));
    assert_eq!(msg.header.rcode, 5);
    assert_eq!(
        (msg.header.ancount, msg.header.nscount, msg.header.arcount),
        (0, 0, 0)
    );
    assert_eq!(msg.question, question);
    assert_eq!(out[2] & 0x07, 0x01, "RD kept, AA and TC clear");
    assert_eq!(out[3] & 0xf0, 0x80, "RA set, Z, AD and CD clear");
    let h = HMessage::from_vec(out).expect("hickory decodes it");
    assert_eq!(h.metadata.response_code, ResponseCode::Refused);
    assert!(h.metadata.recursion_available);
    assert_eq!(h.queries.len(), 1);
    assert!(h.edns.is_none());
    assert_eq!(rcode_name(u16::from(msg.header.rcode)), "REFUSED");
}

#[test]
fn refuse_on_a_short_buffer_writes_nothing() {
    let bytes = query_msg(1, "example.com.", RecordType::A)
        .to_vec()
        .unwrap();
    let qend = parse(&bytes).unwrap().question_end();
    let mut short = bytes[..qend - 1].to_vec();
    assert_eq!(refuse(&mut short, qend, RCODE_NXDOMAIN), 0);
    assert_eq!(short, bytes[..qend - 1]);
    assert_eq!(refuse(&mut [0; 4], 4, RCODE_NXDOMAIN), 0);
    let mut ok = bytes.clone();
    assert_eq!(refuse(&mut ok, qend, RCODE_NXDOMAIN), qend);
    assert_eq!(parse(&ok).unwrap().header.rcode, RCODE_NXDOMAIN);
}

fn framed(msgs: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        out.extend_from_slice(&u16::try_from(m.len()).unwrap().to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

#[test]
fn tcp_framing() {
    let q1 = query_msg(1, "a.example.", RecordType::A).to_vec().unwrap();
    let q2 = query_msg(2, "b.example.", RecordType::A).to_vec().unwrap();
    let seg = framed(&[&q1, &q2]);
    let ranges: Vec<_> = tcp_messages(&seg).collect::<Result<_, _>>().unwrap();
    assert_eq!(ranges, [2..2 + q1.len(), 4 + q1.len()..seg.len()]);
    assert_eq!(parse(&seg[ranges[1].clone()]).unwrap().header.id, 2);

    let all = |p: &[u8]| tcp_messages(p).collect::<Vec<_>>();
    let bad = || -> Result<Range<usize>, DropReason> { Err(DropReason::DnsMalformed) };
    assert!(all(&[]).is_empty());
    // Half a message: one whole, then an oversized prefix.
    assert_eq!(all(&seg[..seg.len() - 3]), [Ok(2..2 + q1.len()), bad()]);
    assert_eq!(all(&[0, 5, 1, 2]), [bad()]);
    assert_eq!(all(&[0, 0, 1, 2]), [bad()]);
    // A lone trailing byte after a whole message.
    assert_eq!(all(&[0, 1, 9, 0]), [Ok(2..3), bad()]);
    assert_eq!(all(&[0]), [bad()]);
}

#[test]
fn mnemonics() {
    assert_eq!(type_name(1), "A");
    assert_eq!(type_name(28), "AAAA");
    assert_eq!(type_name(5), "CNAME");
    assert_eq!(type_name(65280), "TYPE65280");
    assert_eq!(rcode_name(0), "NOERROR");
    assert_eq!(rcode_name(3), "NXDOMAIN");
    assert_eq!(rcode_name(5), "REFUSED");
    assert_eq!(rcode_name(16), "BADVERS");
    assert_eq!(rcode_name(12), "RCODE12");
}

/// The fuzz target's seeds (`fuzz/seeds/make_dns_seeds.py`), after their control byte, are
/// what their names say.
#[test]
fn fuzz_seeds() {
    let seed = |b: &'static [u8]| &b[1..];
    let query = seed(include_bytes!("../../fuzz/seeds/dns/query"));
    let msg = parse(query).unwrap();
    assert_eq!(msg.question.name.as_str(), "www.example.com.");
    assert_eq!(msg.header.arcount, 1);
    let answer = seed(include_bytes!("../../fuzz/seeds/dns/answer-cname-chain"));
    assert_eq!(
        ips(&reported(answer).unwrap()),
        [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]
    );
    let escaped = seed(include_bytes!("../../fuzz/seeds/dns/escaped-name"));
    assert_eq!(
        parse(escaped).unwrap().question.name.as_str(),
        "a\\046\\032\\255-._tcp."
    );
    for bad in [
        seed(include_bytes!("../../fuzz/seeds/dns/compression-loop")),
        seed(include_bytes!("../../fuzz/seeds/dns/compression-mutual")),
        seed(include_bytes!("../../fuzz/seeds/dns/truncated")),
        seed(include_bytes!("../../fuzz/seeds/dns/count-too-large")),
    ] {
        assert!(malformed(bad));
    }
    let two = seed(include_bytes!("../../fuzz/seeds/dns/tcp-two-messages"));
    let ranges: Vec<_> = tcp_messages(two).collect::<Result<_, _>>().unwrap();
    assert_eq!(ranges.len(), 2);
    assert!(reported(&two[ranges[1].clone()]).is_ok());
    let half = seed(include_bytes!("../../fuzz/seeds/dns/tcp-half-message"));
    assert!(tcp_messages(half).any(|r| r.is_err()));
}
