//! Requests from the control side to a running worker, each with its own reply.
//!
//! The control side [`Mailbox::post`]s a request, wakes the worker, and waits on the
//! [`Ticket`] it got back. The worker [`Mailbox::take`]s requests between two batches (an empty
//! mailbox costs it one atomic load) and [`Letter::answer`]s each one. A reply goes to the
//! ticket of its own request and nowhere else: a caller that stopped waiting (a time-out, a
//! dropped connection) leaves its ticket behind, and the late reply is dropped with it instead
//! of answering the next request.
//!
//! What it does not do: order requests between workers, or retry. The worker never blocks on
//! it: answering is a `try_send` into a one-slot channel that only this reply uses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender};
use crossbeam::queue::ArrayQueue;

/// Requests waiting for a worker. Cheap to clone: clones share the queue.
#[derive(Debug)]
pub struct Mailbox<Req, Rep> {
    queue: Arc<ArrayQueue<Letter<Req, Rep>>>,
}

impl<Req, Rep> Clone for Mailbox<Req, Rep> {
    fn clone(&self) -> Self {
        Mailbox {
            queue: Arc::clone(&self.queue),
        }
    }
}

/// One request as the worker takes it, with where its reply goes.
#[derive(Debug)]
pub struct Letter<Req, Rep> {
    /// What the control side asks for.
    pub request: Req,
    reply_to: Sender<Rep>,
}

impl<Req, Rep> Letter<Req, Rep> {
    /// Sends the reply to this request's ticket; dropped if nobody waits any more.
    pub fn answer(self, reply: Rep) {
        // The channel has one slot and only this letter sends on it: the send cannot find it
        // full, and fails only when the ticket is gone, which is when the reply has no reader.
        let _ = self.reply_to.try_send(reply);
    }
}

/// The control side's hold on one posted request.
#[derive(Debug)]
pub struct Ticket<Rep> {
    reply: Receiver<Rep>,
}

/// Why [`Ticket::wait`] came back without a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoReply {
    /// The worker did not answer in time.
    TimedOut,
    /// The worker stopped (or dropped the request) without answering.
    WorkerGone,
}

impl<Req, Rep> Mailbox<Req, Rep> {
    /// A mailbox holding up to `capacity` unanswered requests.
    pub fn new(capacity: usize) -> Self {
        Mailbox {
            queue: Arc::new(ArrayQueue::new(capacity.max(1))),
        }
    }

    /// Posts `request`. Gives it back if the mailbox is full.
    pub fn post(&self, request: Req) -> Result<Ticket<Rep>, Req> {
        let (reply_to, reply) = channel::bounded(1);
        match self.queue.push(Letter { request, reply_to }) {
            Ok(()) => Ok(Ticket { reply }),
            Err(letter) => Err(letter.request),
        }
    }

    /// The oldest request, if any (the worker's side).
    pub fn take(&self) -> Option<Letter<Req, Rep>> {
        self.queue.pop()
    }

    /// Whether no request waits: one atomic load, for the worker's check per batch.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

impl<Rep> Ticket<Rep> {
    /// Waits up to `timeout` for the reply, checking every few milliseconds that `alive()` (the
    /// worker still runs) holds.
    pub fn wait(self, timeout: Duration, alive: impl Fn() -> bool) -> Result<Rep, NoReply> {
        let deadline = Instant::now() + timeout;
        loop {
            // A reply already there counts, whatever the time left (a zero timeout polls).
            if let Ok(r) = self.reply.try_recv() {
                return Ok(r);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NoReply::TimedOut);
            }
            match self.reply.recv_timeout(left.min(Duration::from_millis(5))) {
                Ok(r) => return Ok(r),
                Err(RecvTimeoutError::Disconnected) => return Err(NoReply::WorkerGone),
                Err(RecvTimeoutError::Timeout) if !alive() => {
                    // A reply sent just before the worker stopped still counts.
                    return self.reply.try_recv().map_err(|_| NoReply::WorkerGone);
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reply_reaches_its_own_request() {
        let m: Mailbox<u32, u32> = Mailbox::new(4);
        let a = m.post(1).unwrap();
        let b = m.post(2).unwrap();
        let la = m.take().unwrap();
        let lb = m.take().unwrap();
        assert!(m.take().is_none());
        // Answered out of order, still each to its own.
        let (ra, rb) = (la.request * 10, lb.request * 10);
        lb.answer(rb);
        la.answer(ra);
        assert_eq!(b.wait(Duration::from_secs(1), || true), Ok(20));
        assert_eq!(a.wait(Duration::from_secs(1), || true), Ok(10));
    }

    #[test]
    fn a_late_reply_never_answers_the_next_request() {
        let m: Mailbox<&str, &str> = Mailbox::new(4);
        let first = m.post("first").unwrap();
        assert_eq!(
            first.wait(Duration::from_millis(20), || true),
            Err(NoReply::TimedOut)
        );
        // The worker gets to the first request only now, after its caller gave up.
        let late = m.take().unwrap();
        late.answer("reply to first");
        let second = m.post("second").unwrap();
        let l = m.take().unwrap();
        assert_eq!(l.request, "second");
        l.answer("reply to second");
        assert_eq!(
            second.wait(Duration::from_secs(1), || true),
            Ok("reply to second")
        );
    }

    #[test]
    fn a_full_mailbox_gives_the_request_back() {
        let m: Mailbox<u8, ()> = Mailbox::new(1);
        let _t = m.post(1).unwrap();
        assert_eq!(m.post(2).unwrap_err(), 2);
    }

    #[test]
    fn a_dropped_request_or_a_stopped_worker_is_not_a_time_out() {
        let m: Mailbox<u8, u8> = Mailbox::new(2);
        let t = m.post(1).unwrap();
        drop(m.take());
        assert_eq!(
            t.wait(Duration::from_secs(5), || true),
            Err(NoReply::WorkerGone)
        );
        let t = m.post(2).unwrap();
        assert_eq!(
            t.wait(Duration::from_secs(5), || false),
            Err(NoReply::WorkerGone)
        );
    }
}
