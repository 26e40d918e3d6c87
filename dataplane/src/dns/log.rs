//! The DNS log: what the DNS stage saw, carried from the workers to the control side.
//!
//! Each inspected query and answer becomes one [`DnsRecord`], a fixed-size value (no heap), and
//! is pushed on one bounded lock-free queue ([`DnsLog`]) shared by every worker. The agent
//! drains it for two consumers: the FQDN cache (names and the addresses learned for them, which
//! it keeps across restarts) and `xylem monitor --type dns`. When the queue is full the record
//! is dropped and counted ([`DnsStats::lost`]); a worker never waits. A lost record costs
//! visibility only: the addresses were learned in the dataplane before the answer went on.
//!
//! What it does not do: decide anything, or keep history (the agent does).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam::queue::ArrayQueue;

use crate::policy::RuleRef;
use crate::wire::dns::Name;

/// Most IPv4 answers a record carries; an answer with more carries the first ones.
pub const MAX_RECORD_ANSWERS: usize = 64;

/// What the DNS stage did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsAction {
    /// An allowed query, or an answer to one, sent on.
    Forwarded,
    /// A denied query answered by the dataplane itself (the record's `rcode` says REFUSED or
    /// NXDOMAIN); the server never saw it.
    Refused,
}

/// One inspected DNS message. Addresses and ports are the packet's as the pod sees them.
#[derive(Clone, Copy, Debug)]
pub struct DnsRecord {
    /// When (the worker's clock, ns).
    pub time_ns: u64,
    /// The worker's index ([`crate::conntrack::Conntrack::worker`]).
    pub worker: u16,
    /// The pod the message came from (a query) or goes to (an answer).
    pub endpoint: Ipv4Addr,
    /// The packet's source.
    pub src: Ipv4Addr,
    /// The packet's destination.
    pub dst: Ipv4Addr,
    /// The packet's source port.
    pub sport: u16,
    /// The packet's destination port.
    pub dport: u16,
    /// IP protocol (TCP or UDP).
    pub proto: u8,
    /// The DNS message ID.
    pub id: u16,
    /// An answer (QR set), else a query.
    pub response: bool,
    /// The question's name.
    pub qname: Name,
    /// The question's type.
    pub qtype: u16,
    /// The rcode: the answer's, or the one the dataplane answered a denied query with (0 for an
    /// allowed query).
    pub rcode: u16,
    /// What the stage did.
    pub action: DnsAction,
    /// The `rules.dns` rule that allowed the query (or whose names the answer's question
    /// matched); `None` for a refused query.
    pub rule: Option<RuleRef>,
    /// IPv4 addresses answering the question (directly or through CNAMEs), with their TTLs
    /// in seconds; the first `answer_count` entries are meaningful.
    pub answers: [(Ipv4Addr, u32); MAX_RECORD_ANSWERS],
    /// How many of `answers` are set.
    pub answer_count: u8,
    /// Addresses learned as allowed destinations, from this answer (0 for a query).
    pub learned: u8,
}

impl DnsRecord {
    /// The answers that are set.
    pub fn answers(&self) -> &[(Ipv4Addr, u32)] {
        &self.answers[..usize::from(self.answer_count)]
    }
}

/// The DNS stage's counters, shared by every worker: relaxed adds, on DNS messages only.
#[derive(Debug, Default)]
struct Counters {
    queries_forwarded: AtomicU64,
    queries_refused: AtomicU64,
    answers: AtomicU64,
    learned: AtomicU64,
    lost: AtomicU64,
}

/// A snapshot of the DNS stage's counters ([`DnsLog::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DnsStats {
    /// Queries a policy allowed, sent on.
    pub queries_forwarded: u64,
    /// Queries a policy denied, answered by the dataplane (REFUSED or NXDOMAIN).
    pub queries_refused: u64,
    /// Answers inspected and sent on.
    pub answers: u64,
    /// Addresses learned (or refreshed) from answers as allowed destinations.
    pub learned: u64,
    /// Records dropped because the log was full.
    pub lost: u64,
}

/// The bounded queue of [`DnsRecord`]s. See the module documentation.
#[derive(Debug)]
pub struct DnsLog {
    queue: ArrayQueue<DnsRecord>,
    counters: Counters,
}

impl DnsLog {
    /// A queue of `capacity` records (at least one), allocated here.
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: ArrayQueue::new(capacity.max(1)),
            counters: Counters::default(),
        }
    }

    /// Counts `record` and pushes it, or drops and counts it when the queue is full. Never
    /// waits.
    #[inline]
    pub fn push(&self, record: DnsRecord) {
        let c = &self.counters;
        let counter = match (record.response, record.action) {
            (true, _) => &c.answers,
            (false, DnsAction::Forwarded) => &c.queries_forwarded,
            (false, DnsAction::Refused) => &c.queries_refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if record.learned > 0 {
            c.learned
                .fetch_add(u64::from(record.learned), Ordering::Relaxed);
        }
        if self.queue.push(record).is_err() {
            c.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters.
    pub fn stats(&self) -> DnsStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DnsStats {
            queries_forwarded: l(&c.queries_forwarded),
            queries_refused: l(&c.queries_refused),
            answers: l(&c.answers),
            learned: l(&c.learned),
            lost: l(&c.lost),
        }
    }

    /// The oldest record, if any (the control side).
    pub fn pop(&self) -> Option<DnsRecord> {
        self.queue.pop()
    }

    /// The most records it holds.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether none are waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}
