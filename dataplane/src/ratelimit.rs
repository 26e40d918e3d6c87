//! Per-port rate limits on the two things a pod can make the node do for it, beyond
//! forwarding: frames handed to the slow path (ARP and ICMP to the gateway), and ICMP errors the
//! pipeline builds (time exceeded).
//!
//! The slow path's queue is shared by every port of every worker, and the slow-path thread
//! answers one frame at a time: without a limit, one pod flooding the gateway with ARP requests
//! or pings fills the queue, and every other pod's ARP and pings are dropped as `slowpath-full`.
//! With a limit per port, a flood costs its own port's frames (`slowpath-rate-limited`) and
//! leaves the queue to the others. ICMP errors are limited the way the kernel limits its own
//! (`icmp_ratelimit`, `icmp_msgs_per_sec`), per source port instead of per peer, so one pod
//! sending expired packets as fast as it can gets only so many answers, and others still get
//! theirs; the packet is still dropped, and counted `ttl-exceeded-rate-limited`.
//!
//! Each limit is a token bucket per port, kept as the generic cell rate algorithm (GCRA): one
//! `u64` per port (the time the bucket will be full again, in the worker's clock), no division
//! and no clock read per frame (the batch's `now`). A worker has its own buckets, so a port
//! whose frames land on several workers' queues gets the rate on each.

use crate::pipeline::Verdict;
use crate::stats::DropReason;
use crate::tables::PortId;
use crate::worker::MAX_PORTS;

/// A rate: `per_sec` frames per second on average, up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// The sustained rate, in frames per second (at least 1).
    pub per_sec: u32,
    /// How many frames may pass at once after a quiet time (at least 1).
    pub burst: u32,
}

/// The limits a worker applies, per port. `None` is no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Frames handed to the slow path.
    pub slowpath: Option<Rate>,
    /// ICMP errors built for expired packets.
    pub icmp_errors: Option<Rate>,
}

/// The default slow-path rate per port: a pod sends the gateway a few ARP requests a minute
/// and the odd ping; a thousand a second leaves room for a `ping -i 0.001`, and a burst of 100
/// for a pod starting up, while a hundred flooding pods still fit what the slow-path thread
/// answers.
pub const DEFAULT_SLOWPATH_RATE: Rate = Rate {
    per_sec: 1_000,
    burst: 100,
};

/// The default ICMP error rate per port: `traceroute` needs three answers per hop, `mtr` one a
/// second; the kernel's own default (`icmp_ratelimit`) is one a second per peer, bursts of six.
pub const DEFAULT_ICMP_ERROR_RATE: Rate = Rate {
    per_sec: 100,
    burst: 10,
};

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            slowpath: Some(DEFAULT_SLOWPATH_RATE),
            icmp_errors: Some(DEFAULT_ICMP_ERROR_RATE),
        }
    }
}

impl RateLimits {
    /// No limit at all (benchmarks and tests that push floods through on purpose).
    pub const NONE: RateLimits = RateLimits {
        slowpath: None,
        icmp_errors: None,
    };
}

/// One token bucket per port (see the module documentation). Allocated once.
#[derive(Debug)]
pub struct PortBuckets {
    /// Per port, the worker time at which its bucket is full again (in the past: it is full).
    full_at: Box<[u64]>,
    /// Nanoseconds one frame costs (0: no limit).
    cost: u64,
    /// How far ahead of `now` `full_at` may run: the burst, less the frame being admitted.
    slack: u64,
}

impl PortBuckets {
    /// Buckets for [`MAX_PORTS`] ports at `rate` (`None`: every frame passes).
    pub fn new(rate: Option<Rate>) -> Self {
        let (cost, slack) = match rate {
            None => (0, 0),
            Some(r) => {
                let cost = 1_000_000_000 / u64::from(r.per_sec.max(1));
                (cost, cost * u64::from(r.burst.max(1) - 1))
            }
        };
        PortBuckets {
            full_at: vec![0; MAX_PORTS].into_boxed_slice(),
            cost,
            slack,
        }
    }

    /// Whether a frame of `port` passes at `now` (worker clock, ns); if it does, it is charged.
    #[inline]
    pub fn admit(&mut self, port: PortId, now: u64) -> bool {
        let Some(full_at) = self.full_at.get_mut(usize::from(port)) else {
            return false;
        };
        let t = (*full_at).max(now);
        if t - now > self.slack {
            return false;
        }
        *full_at = t + self.cost;
        true
    }

    /// Makes `port`'s bucket full, for a new port at that id: a pod owes nothing for the
    /// frames of the one that held the id before it.
    pub fn reset(&mut self, port: PortId) {
        if let Some(full_at) = self.full_at.get_mut(usize::from(port)) {
            *full_at = 0;
        }
    }
}

/// A worker's buckets for both limits.
#[derive(Debug)]
pub struct Limiter {
    slowpath: PortBuckets,
    icmp_errors: PortBuckets,
}

impl Limiter {
    /// Fresh (full) buckets for `limits`.
    pub fn new(limits: RateLimits) -> Self {
        Limiter {
            slowpath: PortBuckets::new(limits.slowpath),
            icmp_errors: PortBuckets::new(limits.icmp_errors),
        }
    }

    /// Fills both buckets of `port` (see [`PortBuckets::reset`]).
    pub fn reset(&mut self, port: PortId) {
        self.slowpath.reset(port);
        self.icmp_errors.reset(port);
    }

    /// The verdict the worker carries out for a frame that arrived on `port` at `now` and
    /// that the pipeline decided `v` for: `v` itself, or, when it would hand the frame to the
    /// slow path or answer it with an ICMP error over its port's rate, a drop that says so.
    #[inline]
    pub fn admit(&mut self, port: PortId, now: u64, v: Verdict) -> Verdict {
        match v {
            Verdict::SlowPath if !self.slowpath.admit(port, now) => {
                Verdict::Drop(DropReason::SlowPathRateLimited)
            }
            Verdict::IcmpError(_) if !self.icmp_errors.admit(port, now) => {
                Verdict::Drop(DropReason::TtlExceededRateLimited)
            }
            // A too-big packet over the rate is dropped unanswered, still as too big.
            Verdict::TooBig(_) if !self.icmp_errors.admit(port, now) => {
                Verdict::Drop(DropReason::EspTooBig)
            }
            // A refusal goes back to the pod that asked, and shares its rate of ICMP errors:
            // a pod hammering a service with no backend gets its answers at that rate.
            Verdict::Refused { .. } if !self.icmp_errors.admit(port, now) => {
                Verdict::Drop(DropReason::NoServiceBackend)
            }
            v => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn passed(b: &mut PortBuckets, port: PortId, now: u64, n: usize) -> usize {
        (0..n).filter(|_| b.admit(port, now)).count()
    }

    #[test]
    fn a_port_id_used_again_starts_with_a_full_bucket() {
        let rate = Some(Rate {
            per_sec: 10,
            burst: 3,
        });
        let mut b = PortBuckets::new(rate);
        assert_eq!(passed(&mut b, 4, 0, 10), 3, "the burst");
        assert_eq!(
            passed(&mut b, 4, MS, 10),
            0,
            "then nothing before the rate allows"
        );
        b.reset(4);
        assert_eq!(
            passed(&mut b, 4, MS, 10),
            3,
            "a new port gets its own burst"
        );
    }

    #[test]
    fn a_burst_passes_then_the_rate() {
        let mut b = PortBuckets::new(Some(Rate {
            per_sec: 1000,
            burst: 5,
        }));
        let t0 = 7 * 1_000_000_000;
        assert_eq!(passed(&mut b, 0, t0, 100), 5, "the burst");
        assert_eq!(passed(&mut b, 0, t0 + MS / 2, 100), 0, "half a token");
        assert_eq!(passed(&mut b, 0, t0 + MS, 100), 1, "one per millisecond");
        assert_eq!(
            passed(&mut b, 0, t0 + 11 * MS, 100),
            5,
            "never more than the burst"
        );
        // A steady sender over one second gets the rate, plus the burst it started with.
        let mut total = 0;
        for ms in 0..1000 {
            total += passed(&mut b, 1, t0 + ms * MS, 10);
        }
        assert_eq!(total, 5 + 999);
    }

    #[test]
    fn ports_do_not_share_a_bucket() {
        let mut b = PortBuckets::new(Some(Rate {
            per_sec: 10,
            burst: 2,
        }));
        assert_eq!(passed(&mut b, 3, 0, 50), 2);
        assert_eq!(
            passed(&mut b, 4, 0, 50),
            2,
            "a flood on port 3 costs port 4 nothing"
        );
        assert_eq!(passed(&mut b, (MAX_PORTS - 1) as PortId, 0, 1), 1);
        assert_eq!(passed(&mut b, MAX_PORTS as PortId, 0, 1), 0, "no such port");
    }

    #[test]
    fn without_a_rate_everything_passes() {
        let mut b = PortBuckets::new(None);
        assert_eq!(passed(&mut b, 0, 0, 10_000), 10_000);
    }

    #[test]
    fn the_limiter_turns_only_slow_path_and_icmp_errors_over_the_rate_into_drops() {
        let one = Some(Rate {
            per_sec: 1,
            burst: 1,
        });
        let mut l = Limiter::new(RateLimits {
            slowpath: one,
            icmp_errors: one,
        });
        let limited = [
            (Verdict::SlowPath, DropReason::SlowPathRateLimited),
            (Verdict::IcmpError(2), DropReason::TtlExceededRateLimited),
        ];
        for (v, reason) in limited {
            assert_eq!(l.admit(0, 0, v), v);
            assert_eq!(l.admit(0, 0, v), Verdict::Drop(reason));
            assert_eq!(l.admit(1, 0, v), v, "another port");
        }
        for v in [Verdict::Forward(1), Verdict::Drop(DropReason::NoRoute)] {
            for _ in 0..10 {
                assert_eq!(l.admit(0, 0, v), v);
            }
        }
    }
}
