//! DNS messages (RFC 1035): a bounds-checked view of a query or an answer, and the answer the
//! dataplane builds itself for a denied query.
//!
//! What it does:
//! - [`parse`] reads the header (with `hickory-proto`'s [`BinDecoder`] and its `Header`) and
//!   the one question a query or an answer carries; a message with QDCOUNT other than 1 is
//!   malformed.
//! - [`Message::answers`] validates every record of the answer, authority and additional
//!   sections, then calls back with each A record (class IN) of the answer section whose owner
//!   is the question's name or a name reached from it through a CNAME chain of at most
//!   [`MAX_CNAME_CHAIN`] links, in whatever order the records come.
//! - [`refuse`] rewrites a query in place into its answer with a given rcode and no records.
//! - [`tcp_messages`] splits one TCP segment's payload into its length-prefixed messages.
//! - [`type_name`] and [`rcode_name`] give the mnemonics the control side prints.
//!
//! Names are decoded label by label into a fixed [`Name`] in presentation form (lowercase,
//! fully qualified, odd bytes escaped `\DDD`). A compression pointer is followed only to an
//! offset past the header and strictly before the start of the label sequence it ends, so
//! pointers only ever go backwards and a loop cannot be built; at most [`MAX_POINTERS`] per
//! name.
//!
//! What it does not do: allocate on the per-packet path (everything but [`type_name`] and
//! [`rcode_name`]), decide anything (the pipeline's DNS stage does), read EDNS options or the
//! extended rcode, report AAAA records (validated only: the dataplane is IPv4-only), accept the
//! obsolete extended label types (`0x40`, `0x80`: malformed), or reassemble a DNS message split
//! over TCP segments (a segment must hold whole messages).
//!
//! Every error is [`DropReason::DnsMalformed`].

use std::fmt;
use std::net::Ipv4Addr;
use std::ops::Range;

use hickory_proto::op::{Header as WireHeader, MessageType, ResponseCode};
use hickory_proto::rr::RecordType;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::{DropReason, put16};

/// Room for a name in presentation form.
pub const NAME_BUF: usize = 256;
/// Most compression pointers followed in one name.
pub const MAX_POINTERS: usize = 16;
/// Most CNAME links followed from the question's name.
pub const MAX_CNAME_CHAIN: usize = 8;
/// rcode NXDOMAIN.
pub const RCODE_NXDOMAIN: u8 = 3;
/// rcode REFUSED.
pub const RCODE_REFUSED: u8 = 5;
/// The DNS port.
pub const PORT: u16 = 53;

const MALFORMED: DropReason = DropReason::DnsMalformed;
const HEADER_LEN: usize = 12;
const MAX_LABEL: usize = 63;
/// A name's wire length, the root label's zero byte included (RFC 1035 section 3.1).
const MAX_WIRE_NAME: usize = 255;
const CLASS_IN: u16 = 1;
const TYPE_A: u16 = 1;
const TYPE_NS: u16 = 2;
const TYPE_CNAME: u16 = 5;
const TYPE_SOA: u16 = 6;
const TYPE_PTR: u16 = 12;
const TYPE_MX: u16 = 15;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;
const TYPE_DNAME: u16 = 39;

/// A domain name in presentation form: lowercase, labels joined by `.`, fully qualified (`.`
/// for the root), every byte outside `[-a-z0-9_]` within a label written `\DDD`. Fixed size.
#[derive(Clone, Copy)]
pub struct Name {
    len: u16,
    buf: [u8; NAME_BUF],
}

/// The header fields the dataplane reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// ID.
    pub id: u16,
    /// QR: an answer.
    pub response: bool,
    /// OPCODE (0: a standard query).
    pub opcode: u8,
    /// RCODE (low 4 bits).
    pub rcode: u8,
    /// QDCOUNT.
    pub qdcount: u16,
    /// ANCOUNT.
    pub ancount: u16,
    /// NSCOUNT.
    pub nscount: u16,
    /// ARCOUNT.
    pub arcount: u16,
}

/// The question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Question {
    /// QNAME.
    pub name: Name,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
}

/// A parsed message: its header and question; the records are walked on demand.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    bytes: &'a [u8],
    /// The header.
    pub header: Header,
    /// The question (a message with QDCOUNT other than 1 is refused by [`parse`]).
    pub question: Question,
    question_end: usize,
}

/// An A record answering the question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The address.
    pub ip: Ipv4Addr,
    /// Its TTL, seconds.
    pub ttl: u32,
}

impl Name {
    /// The root name, `.`.
    pub const fn root() -> Name {
        let mut buf = [0; NAME_BUF];
        buf[0] = b'.';
        Name { len: 1, buf }
    }

    const fn empty() -> Name {
        Name {
            len: 0,
            buf: [0; NAME_BUF],
        }
    }

    /// The name's bytes (ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into the buffer.
        std::str::from_utf8(self.as_bytes()).unwrap_or("?")
    }

    /// Whether this is the root name.
    pub fn is_root(&self) -> bool {
        self.as_bytes() == b"."
    }

    /// Normalizes a name written with dots (`"WWW.Example.com"`, with or without the trailing
    /// dot; `""` and `"."` are the root) into the form the wire gives: lowercase, fully
    /// qualified, bytes outside `[-a-z0-9_]` escaped `\DDD`. An escape already written `\DDD`
    /// is read as the byte it stands for, so `from_dotted(n.as_str())` gives `n` back.
    ///
    /// `None` for an empty label, a `\` not followed by three digits up to 255, a label over 63
    /// bytes, a name over 255 bytes on the wire, or one whose text does not fit [`NAME_BUF`].
    pub fn from_dotted(s: &str) -> Option<Name> {
        let s = s.as_bytes();
        let body = s.strip_suffix(b".").unwrap_or(s);
        if body.is_empty() {
            return Some(Name::root());
        }
        let mut name = Name::empty();
        let mut wire = 1;
        // A `.` byte within a label can only be written `\046`, so splitting on dots is exact.
        for label in body.split(|&b| b == b'.') {
            let mut rest = label;
            let mut label_len = 0;
            while let Some((&b, tail)) = rest.split_first() {
                let (byte, tail) = if b == b'\\' {
                    (escaped(tail)?, tail.get(3..)?)
                } else {
                    (b, tail)
                };
                name.push_label_byte(byte).ok()?;
                label_len += 1;
                rest = tail;
            }
            if label_len == 0 || label_len > MAX_LABEL {
                return None;
            }
            wire += 1 + label_len;
            name.push(b'.').ok()?;
        }
        (wire <= MAX_WIRE_NAME).then_some(name)
    }

    fn push(&mut self, b: u8) -> Result<(), DropReason> {
        let slot = self.buf.get_mut(usize::from(self.len)).ok_or(MALFORMED)?;
        *slot = b;
        self.len += 1;
        Ok(())
    }

    /// Appends one byte of a label: lowercased, or escaped `\DDD` when outside `[-a-z0-9_]`,
    /// so that a `.` byte in a label is never read as a label separator.
    fn push_label_byte(&mut self, b: u8) -> Result<(), DropReason> {
        let b = b.to_ascii_lowercase();
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' {
            return self.push(b);
        }
        self.push(b'\\')?;
        self.push(b'0' + b / 100)?;
        self.push(b'0' + b / 10 % 10)?;
        self.push(b'0' + b % 10)
    }
}

/// The byte written `\DDD`, given the bytes after the `\`.
fn escaped(digits: &[u8]) -> Option<u8> {
    let d = digits.get(..3)?;
    if !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = d.iter().fold(0u16, |v, &c| v * 10 + u16::from(c - b'0'));
    u8::try_from(v).ok()
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Name {}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads the name at `at` into `out` and returns the offset just after it (after its first
/// pointer, when it has one).
///
/// Not `hickory_proto::rr::Name`: that one allocates for long names, and this runs for every
/// name of every inspected message on the per-packet path, which must not allocate.
///
/// A pointer must point strictly before the start of the label sequence it ends (the name's
/// start, or the previous pointer's target): targets then strictly decrease, so a loop or a
/// forward pointer is refused by construction, and [`MAX_POINTERS`] bounds the work. It must
/// not point into the header either, which holds no name: [`refuse`] rewrites the header, and
/// the question's name must read the same after it.
fn read_name(msg: &[u8], at: usize, out: &mut Name) -> Result<usize, DropReason> {
    *out = Name::empty();
    let mut pos = at;
    let mut sequence_start = at;
    let mut end = None;
    let mut pointers = 0;
    let mut wire = 0;
    loop {
        let len = *msg.get(pos).ok_or(MALFORMED)?;
        match len & 0xC0 {
            0xC0 => {
                let low = *msg.get(pos + 1).ok_or(MALFORMED)?;
                let target = usize::from(u16::from_be_bytes([len & 0x3F, low]));
                if pointers == MAX_POINTERS || target < HEADER_LEN || target >= sequence_start {
                    return Err(MALFORMED);
                }
                pointers += 1;
                end.get_or_insert(pos + 2);
                pos = target;
                sequence_start = target;
            }
            0x00 if len == 0 => {
                if out.len == 0 {
                    out.push(b'.')?;
                }
                return Ok(end.unwrap_or(pos + 1));
            }
            0x00 => {
                let n = usize::from(len);
                let label = msg.get(pos + 1..pos + 1 + n).ok_or(MALFORMED)?;
                wire += 1 + n;
                // The root label's byte still has to fit.
                if wire + 1 > MAX_WIRE_NAME {
                    return Err(MALFORMED);
                }
                for &b in label {
                    out.push_label_byte(b)?;
                }
                out.push(b'.')?;
                pos += 1 + n;
            }
            // 0x40 and 0x80: a label over 63 bytes, or an extended label type.
            _ => return Err(MALFORMED),
        }
    }
}

/// The offset just after the name at `at`, without decoding it: for names [`read_name`] has
/// already validated. Still bounds-checked, and it only moves forward, so it ends.
fn skip_name(msg: &[u8], mut at: usize) -> Result<usize, DropReason> {
    loop {
        let len = *msg.get(at).ok_or(MALFORMED)?;
        match len & 0xC0 {
            0xC0 => {
                return if at + 2 <= msg.len() {
                    Ok(at + 2)
                } else {
                    Err(MALFORMED)
                };
            }
            0x00 if len == 0 => return Ok(at + 1),
            0x00 => at += 1 + usize::from(len),
            _ => return Err(MALFORMED),
        }
    }
}

/// Parses the header and the question of `bytes`, one DNS message (a UDP payload, or one
/// message of a TCP segment, see [`tcp_messages`]).
///
/// Malformed: shorter than the 12-byte header, QDCOUNT other than 1, a bad or truncated
/// question. The records are not looked at: see [`Message::answers`].
pub fn parse(bytes: &[u8]) -> Result<Message<'_>, DropReason> {
    let mut decoder = BinDecoder::new(bytes);
    let wire = WireHeader::read(&mut decoder).map_err(|_| MALFORMED)?;
    let header = Header {
        id: wire.metadata.id,
        response: wire.metadata.message_type == MessageType::Response,
        opcode: u8::from(wire.metadata.op_code),
        rcode: wire.metadata.response_code.low(),
        qdcount: wire.counts.queries,
        ancount: wire.counts.answers,
        nscount: wire.counts.authorities,
        arcount: wire.counts.additionals,
    };
    if header.qdcount != 1 {
        return Err(MALFORMED);
    }
    let mut name = Name::empty();
    let name_end = read_name(bytes, HEADER_LEN, &mut name)?;
    let mut fixed = BinDecoder::new(bytes.get(name_end..).ok_or(MALFORMED)?);
    let qtype = read_u16(&mut fixed)?;
    let qclass = read_u16(&mut fixed)?;
    Ok(Message {
        bytes,
        header,
        question: Question {
            name,
            qtype,
            qclass,
        },
        question_end: name_end + fixed.index(),
    })
}

fn read_u16(d: &mut BinDecoder<'_>) -> Result<u16, DropReason> {
    Ok(d.read_u16().map_err(|_| MALFORMED)?.unverified())
}

/// A record's fixed fields, where its name ends and its rdata lies.
struct Record {
    rtype: u16,
    class: u16,
    ttl: u32,
    rdata: Range<usize>,
}

/// Reads the fixed part of the record whose owner name ends at `name_end`.
fn read_record(msg: &[u8], name_end: usize) -> Result<Record, DropReason> {
    let mut d = BinDecoder::new(msg.get(name_end..).ok_or(MALFORMED)?);
    let rtype = read_u16(&mut d)?;
    let class = read_u16(&mut d)?;
    let ttl = d.read_u32().map_err(|_| MALFORMED)?.unverified();
    let rdlength = read_u16(&mut d)?;
    d.read_slice(usize::from(rdlength)).map_err(|_| MALFORMED)?;
    let end = name_end + d.index();
    Ok(Record {
        rtype,
        class,
        ttl,
        rdata: end - usize::from(rdlength)..end,
    })
}

/// Checks the rdata of the record types that hold names or have a fixed size. A name in rdata
/// may be compressed, but must end within the rdata.
fn check_rdata(msg: &[u8], r: &Record, scratch: &mut Name) -> Result<(), DropReason> {
    let rd = r.rdata.clone();
    // Where the names start within the rdata, and the fixed bytes that follow the last one.
    let (skip, names, tail) = match r.rtype {
        TYPE_A => {
            return if rd.len() == 4 {
                Ok(())
            } else {
                Err(MALFORMED)
            };
        }
        TYPE_AAAA => {
            return if rd.len() == 16 {
                Ok(())
            } else {
                Err(MALFORMED)
            };
        }
        TYPE_NS | TYPE_CNAME | TYPE_PTR | TYPE_DNAME => (0, 1, 0),
        TYPE_MX => (2, 1, 0),
        TYPE_SRV => (6, 1, 0),
        TYPE_SOA => (0, 2, 20),
        _ => return Ok(()),
    };
    let mut at = rd.start + skip;
    for _ in 0..names {
        if at >= rd.end {
            return Err(MALFORMED);
        }
        at = read_name(msg, at, scratch)?;
    }
    if at + tail == rd.end {
        Ok(())
    } else {
        Err(MALFORMED)
    }
}

impl<'a> Message<'a> {
    /// The whole message.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The offset just after the question: the length of the answer [`refuse`] builds.
    pub fn question_end(&self) -> usize {
        self.question_end
    }

    /// Validates every record of the answer, authority and additional sections, then calls `f`
    /// with each A record (class IN) of the answer section that answers the question: its owner
    /// is the question's name, or a name the question's name leads to through CNAME records of
    /// the answer section (at most [`MAX_CNAME_CHAIN`] links, in any order). Returns how many
    /// it reported. `f` is not called at all when the message is malformed.
    ///
    /// Malformed: a count larger than the records present, a record or its rdata cut short, a
    /// bad name anywhere, an A or AAAA rdata of the wrong size. Bytes after the last record are
    /// ignored.
    pub fn answers(&self, mut f: impl FnMut(Answer)) -> Result<usize, DropReason> {
        self.validate()?;
        // The chain, with the question's name first; fixed-size, as nothing here allocates.
        let mut chain = [Name::empty(); MAX_CNAME_CHAIN + 1];
        chain[0] = self.question.name;
        let mut links = 0;
        while links < MAX_CNAME_CHAIN {
            match self.cname_of(&chain[links])? {
                Some(next) if !chain[..=links].contains(&next) => {
                    links += 1;
                    chain[links] = next;
                }
                _ => break,
            }
        }
        let chain = &chain[..=links];
        let mut reported = 0;
        let mut owner = Name::empty();
        self.each_answer(|msg, owner_at, r| {
            if r.rtype != TYPE_A || r.class != CLASS_IN {
                return Ok(false);
            }
            read_name(msg, owner_at, &mut owner)?;
            if chain.contains(&owner) {
                let ip = msg.get(r.rdata.clone()).ok_or(MALFORMED)?;
                let ip = <[u8; 4]>::try_from(ip).map_err(|_| MALFORMED)?;
                f(Answer {
                    ip: Ipv4Addr::from(ip),
                    ttl: r.ttl,
                });
                reported += 1;
            }
            Ok(false)
        })?;
        Ok(reported)
    }

    /// Walks every record of the three sections, decoding every name.
    fn validate(&self) -> Result<(), DropReason> {
        let h = &self.header;
        let total = usize::from(h.ancount) + usize::from(h.nscount) + usize::from(h.arcount);
        let mut at = self.question_end;
        let mut scratch = Name::empty();
        for _ in 0..total {
            let name_end = read_name(self.bytes, at, &mut scratch)?;
            let r = read_record(self.bytes, name_end)?;
            check_rdata(self.bytes, &r, &mut scratch)?;
            at = r.rdata.end;
        }
        Ok(())
    }

    /// Calls `visit` with each record of the answer section (the message being validated)
    /// and the offset of its owner name, until `visit` returns `true`.
    fn each_answer(
        &self,
        mut visit: impl FnMut(&'a [u8], usize, &Record) -> Result<bool, DropReason>,
    ) -> Result<(), DropReason> {
        let mut at = self.question_end;
        for _ in 0..self.header.ancount {
            let r = read_record(self.bytes, skip_name(self.bytes, at)?)?;
            if visit(self.bytes, at, &r)? {
                break;
            }
            at = r.rdata.end;
        }
        Ok(())
    }

    /// The target of the first CNAME record (class IN) of the answer section owned by `owner`.
    fn cname_of(&self, owner: &Name) -> Result<Option<Name>, DropReason> {
        let mut found = None;
        let mut name = Name::empty();
        self.each_answer(|msg, owner_at, r| {
            if r.rtype != TYPE_CNAME || r.class != CLASS_IN {
                return Ok(false);
            }
            read_name(msg, owner_at, &mut name)?;
            if name != *owner {
                return Ok(false);
            }
            read_name(msg, r.rdata.start, &mut name)?;
            found = Some(name);
            Ok(true)
        })?;
        Ok(found)
    }
}

/// Rewrites the query in `buf` in place into its answer with `rcode` and no records, and
/// returns the answer's length, `question_end` (the bytes after it, EDNS OPT record included,
/// are dropped).
///
/// The answer keeps the ID, the opcode, RD and the question; it sets QR and RA, clears AA, TC,
/// Z, AD and CD, writes the low 4 bits of `rcode` as RCODE, and sets QDCOUNT to 1 and the
/// other counts to 0.
///
/// Precondition: `buf` starts with the message [`parse`] accepted and `question_end` is its
/// [`Message::question_end`]. If `buf` is too short for that (or `question_end` is shorter
/// than a header), nothing is written and 0 is returned: there is no answer to send.
pub fn refuse(buf: &mut [u8], question_end: usize, rcode: u8) -> usize {
    if question_end < HEADER_LEN || buf.len() < question_end {
        return 0;
    }
    // QR | OPCODE | AA | TC | RD: keep the opcode and RD.
    buf[2] = 0x80 | (buf[2] & 0x79);
    // RA | Z | AD | CD | RCODE.
    buf[3] = 0x80 | (rcode & 0x0F);
    put16(buf, 4, 1);
    put16(buf, 6, 0);
    put16(buf, 8, 0);
    put16(buf, 10, 0);
    question_end
}

/// The messages of one TCP segment's payload, each behind its 2-byte length prefix (RFC 1035
/// section 4.2.2); see [`tcp_messages`].
#[derive(Clone, Debug)]
pub struct TcpMessages<'a> {
    payload: &'a [u8],
    at: usize,
    failed: bool,
}

/// The messages of one TCP segment's payload, as ranges of `payload` without their length
/// prefix. The inspection stage wants a segment to hold whole messages: a zero length prefix,
/// a prefix larger than what remains of the segment, or a lone trailing byte gives one `Err`,
/// and then the iterator ends. An empty payload gives nothing.
pub fn tcp_messages(payload: &[u8]) -> TcpMessages<'_> {
    TcpMessages {
        payload,
        at: 0,
        failed: false,
    }
}

impl Iterator for TcpMessages<'_> {
    type Item = Result<Range<usize>, DropReason>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.payload.get(self.at..)?;
        if self.failed || rest.is_empty() {
            return None;
        }
        let len = match rest.split_first_chunk::<2>() {
            Some((prefix, body)) => Some(usize::from(u16::from_be_bytes(*prefix)))
                .filter(|&len| len != 0 && len <= body.len()),
            None => None,
        };
        let Some(len) = len else {
            self.failed = true;
            return Some(Err(MALFORMED));
        };
        let start = self.at + 2;
        self.at = start + len;
        Some(Ok(start..self.at))
    }
}

/// A record type's mnemonic (`"A"`, `"AAAA"`, `"CNAME"`), or `"TYPE<n>"` (RFC 3597) for one
/// `hickory-proto` does not know. Allocates: for the control side.
pub fn type_name(qtype: u16) -> String {
    let known = RecordType::from(qtype);
    if matches!(known, RecordType::Unknown(_)) || u16::from(known) != qtype {
        format!("TYPE{qtype}")
    } else {
        known.to_string()
    }
}

/// An rcode's mnemonic, upper case as `dig` prints it (`"NOERROR"`, `"NXDOMAIN"`,
/// `"REFUSED"`), or `"RCODE<n>"` for an unassigned one. Allocates: for the control side.
///
/// Mapped here rather than through `ResponseCode`'s `Display`, which gives descriptions
/// (`"Non-Existent Domain"`), not mnemonics.
pub fn rcode_name(rcode: u16) -> String {
    let name = match <ResponseCode as From<u16>>::from(rcode) {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        // 16 is BADSIG only in a TSIG record; as a message's (extended) rcode it is BADVERS.
        ResponseCode::BADVERS | ResponseCode::BADSIG => "BADVERS",
        ResponseCode::BADKEY => "BADKEY",
        ResponseCode::BADTIME => "BADTIME",
        ResponseCode::BADMODE => "BADMODE",
        ResponseCode::BADNAME => "BADNAME",
        ResponseCode::BADALG => "BADALG",
        ResponseCode::BADTRUNC => "BADTRUNC",
        ResponseCode::BADCOOKIE => "BADCOOKIE",
        ResponseCode::Unknown(n) => return format!("RCODE{n}"),
    };
    name.to_owned()
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
