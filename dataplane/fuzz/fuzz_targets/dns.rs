//! Fuzzes `xylem_dataplane::wire::dns` with arbitrary bytes.
//!
//! Input layout:
//! - byte 0: the mode (high bit: the rest is one TCP segment's payload, split with
//!   `tcp_messages`, else one UDP message) and the rcode `refuse` writes (low 4 bits);
//! - the rest is the payload.
//!
//! Checks, beyond "does not panic":
//! - `tcp_messages`: every range is non-empty, within the payload, right after the previous
//!   one's end and its 2-byte prefix, and says the length the prefix says; nothing follows an
//!   `Err`; the ranges and prefixes cover the payload exactly when there is no `Err`;
//! - `parse`: the question ends within the message, after the header; the question's name is
//!   ASCII, fully qualified, fits `NAME_BUF` and survives `Name::from_dotted` unchanged;
//! - `answers`: reports as many records as it says, gives the same result twice, and never
//!   reports from a message it calls malformed;
//! - `refuse` (on a copy): returns `question_end`; its output parses again with the same ID,
//!   opcode and question, QR and RA set, the rcode asked for, no records; a buffer cut short of
//!   the question gets 0 and is left alone.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xylem_dataplane::wire::dns::{self, Message, NAME_BUF, Name};

fn check_name(name: &Name) {
    let b = name.as_bytes();
    assert!(b.is_ascii(), "a name with non-ASCII text");
    assert!(b.len() <= NAME_BUF);
    assert_eq!(b.last(), Some(&b'.'), "a name that is not fully qualified");
    assert!(
        name.is_root() || !b.starts_with(b"."),
        "an empty first label"
    );
    assert!(!b.windows(2).any(|w| w == b".."), "an empty label");
    assert!(!b.iter().any(u8::is_ascii_uppercase), "an uppercase name");
    assert_eq!(
        Name::from_dotted(name.as_str()).as_ref(),
        Some(name),
        "from_dotted does not round-trip"
    );
}

fn check_answers(msg: &Message<'_>) {
    let mut seen = Vec::new();
    let first = msg.answers(|a| seen.push(a));
    match first {
        Ok(n) => assert_eq!(n, seen.len()),
        Err(_) => assert!(seen.is_empty(), "reported from a malformed message"),
    }
    let mut again = Vec::new();
    assert_eq!(msg.answers(|a| again.push(a)), first);
    assert_eq!(again, seen);
}

fn check_refuse(msg: &Message<'_>, rcode: u8) {
    let qend = msg.question_end();
    let mut buf = msg.bytes().to_vec();
    assert_eq!(dns::refuse(&mut buf, qend, rcode), qend);
    let out = dns::parse(&buf[..qend]).expect("a refused query parses again");
    assert_eq!(out.header.id, msg.header.id);
    assert_eq!(out.header.opcode, msg.header.opcode);
    assert!(out.header.response);
    assert_eq!(out.header.rcode, rcode);
    assert_eq!(
        (out.header.ancount, out.header.nscount, out.header.arcount),
        (0, 0, 0)
    );
    assert_eq!(out.question, msg.question);
    assert_eq!(out.question_end(), qend);
    assert_eq!(out.answers(|_| panic!("a refusal has no answers")), Ok(0));

    let mut short = msg.bytes()[..qend - 1].to_vec();
    assert_eq!(dns::refuse(&mut short, qend, rcode), 0);
    assert_eq!(short, msg.bytes()[..qend - 1]);
}

fn check_message(bytes: &[u8], rcode: u8) {
    let Ok(msg) = dns::parse(bytes) else { return };
    let qend = msg.question_end();
    assert!(qend >= 12 + 1 + 4 && qend <= bytes.len());
    assert_eq!(msg.header.qdcount, 1);
    check_name(&msg.question.name);
    check_answers(&msg);
    check_refuse(&msg, rcode);
}

fn check_tcp(payload: &[u8], rcode: u8) {
    let mut next = 0;
    let mut failed = false;
    for item in dns::tcp_messages(payload) {
        assert!(!failed, "an item after an error");
        match item {
            Ok(r) => {
                assert_eq!(r.start, next + 2);
                assert!(r.start < r.end && r.end <= payload.len());
                let prefix = u16::from_be_bytes([payload[next], payload[next + 1]]);
                assert_eq!(usize::from(prefix), r.len());
                next = r.end;
                check_message(&payload[r], rcode);
            }
            Err(_) => failed = true,
        }
    }
    assert!(
        failed || next == payload.len(),
        "bytes left unread without an error"
    );
}

fuzz_target!(|data: &[u8]| {
    let [control, payload @ ..] = data else {
        return;
    };
    let rcode = control & 0x0f;
    if control & 0x80 != 0 {
        check_tcp(payload, rcode);
    } else {
        check_message(payload, rcode);
    }
});
