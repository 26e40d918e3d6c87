//! The health checker: a control-side thread that probes every service backend with a health
//! check, through the slow path ([`xylem_dataplane::slowpath::probe`]: the probes leave from
//! the gateway's address and pass the backend's policy as the node's connections), applies the
//! check's rise and fall thresholds, and reports each verdict to the services state
//! ([`AgentState::set_backend_health`]), which republishes the tables when a backend's health
//! changes; each change also goes to the monitor as an `agent` event.
//!
//! Every tick ([`TICK`]) it re-reads the targets ([`AgentState::health_targets`]), so services
//! imported or deleted since are probed or forgotten within a tick; it starts the probes that
//! are due (one in flight per target, one every `interval_ms`) and takes the results. A backend
//! starts `unknown` (usable); `fall` consecutive failures mark it `down` and `rise` consecutive
//! successes `up`. It holds the agent only for the length of a tick (a `Weak` between ticks),
//! so the agent's shutdown, which stops and joins it first, can take the state back.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xylem_dataplane::slowpath::probe::{ProbeKind, ProbeQueues, ProbeRequest, ProbeResult};
use xylem_services::{HealthCheck, HealthCheckKind};

use super::AgentState;
use super::status::AgentEvent;
use crate::Error;

/// How often the checker looks at its targets and results: the resolution of intervals and
/// timeouts (a result waits at most this long to be counted).
pub const TICK: Duration = Duration::from_millis(50);

/// How long past its timeout a probe may stay without a result before it counts as failed:
/// the slow path always answers, so only a stalled slow-path thread gets there.
const LOST_PROBE_GRACE: Duration = Duration::from_secs(2);

/// Probes waiting or in flight in the slow path at once (the probe queues' capacity).
pub const MAX_PROBES: usize = 256;

/// Consecutive results of one backend's probes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Thresholds {
    successes: u32,
    failures: u32,
}

impl Thresholds {
    /// Counts one probe's result; returns the verdict the check's thresholds give now:
    /// `Some(true)` after `rise` consecutive successes, `Some(false)` after `fall` consecutive
    /// failures, `None` until either (the backend keeps the health it has). The verdict is
    /// given again on every further result in the same direction, so a services state that
    /// forgot the backend's health (a service deleted and imported again) hears it anew.
    pub fn record(&mut self, healthy: bool, rise: u32, fall: u32) -> Option<bool> {
        if healthy {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (self.successes >= rise.max(1)).then_some(true)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.failures >= fall.max(1)).then_some(false)
        }
    }
}

/// One probed backend.
#[derive(Debug)]
struct Target {
    check: HealthCheck,
    counts: Thresholds,
    next_due: Instant,
    /// The probe in flight: its id and when it was asked for.
    in_flight: Option<(u64, Instant)>,
}

type Key = (String, SocketAddrV4);

/// The checker's state between ticks.
struct Checker {
    probes: ProbeQueues,
    targets: BTreeMap<Key, Target>,
    by_id: HashMap<u64, Key>,
    next_id: u64,
}

fn probe_kind(kind: &HealthCheckKind) -> ProbeKind {
    match kind {
        HealthCheckKind::Tcp => ProbeKind::Tcp,
        HealthCheckKind::Http {
            path,
            expect_status,
        } => ProbeKind::Http {
            path: path.clone(),
            expect_status: *expect_status,
        },
    }
}

impl Checker {
    /// Takes in the current targets: new ones are due at once, gone ones forgotten (a result
    /// still on its way is then ignored), and a changed check starts its counts afresh.
    fn sync(&mut self, agent: &AgentState, now: Instant) {
        let current = agent.health_targets();
        let keys: std::collections::BTreeSet<Key> = current
            .iter()
            .map(|t| (t.service.clone(), t.backend))
            .collect();
        self.targets.retain(|k, _| keys.contains(k));
        for t in current {
            let key = (t.service, t.backend);
            let fresh = Target {
                check: t.check.clone(),
                counts: Thresholds::default(),
                next_due: now,
                in_flight: None,
            };
            match self.targets.get_mut(&key) {
                Some(known) if known.check == t.check => {}
                Some(known) => *known = fresh,
                None => {
                    self.targets.insert(key, fresh);
                }
            }
        }
        self.by_id.retain(|_, k| self.targets.contains_key(k));
    }

    /// Asks the slow path for every probe that is due.
    fn start_due(&mut self, now: Instant) {
        for (key, t) in &mut self.targets {
            if t.in_flight.is_some() || now < t.next_due {
                continue;
            }
            let req = ProbeRequest {
                id: self.next_id,
                target: key.1,
                kind: probe_kind(&t.check.kind),
                timeout: Duration::from_millis(t.check.timeout_ms.max(1)),
            };
            if self.probes.submit(req).is_err() {
                // The slow path has its hands full: the rest wait for the next tick.
                return;
            }
            self.by_id.insert(self.next_id, key.clone());
            t.in_flight = Some((self.next_id, now));
            t.next_due = now + Duration::from_millis(t.check.interval_ms.max(1));
            self.next_id += 1;
        }
    }

    /// Counts the results that came back (and probes lost past their timeout as failures);
    /// returns the verdicts to report, as (service, backend, up).
    fn collect(&mut self, now: Instant) -> Vec<(String, SocketAddrV4, bool)> {
        let mut verdicts = Vec::new();
        let mut results: Vec<(Key, bool)> = Vec::new();
        while let Some(ProbeResult { id, outcome, .. }) = self.probes.take_result() {
            if let Some(key) = self.by_id.remove(&id) {
                if !outcome.healthy() {
                    tracing::debug!(service = %key.0, backend = %key.1, %outcome, "probe failed");
                }
                results.push((key, outcome.healthy()));
            }
        }
        for (key, t) in &self.targets {
            if let Some((id, asked)) = t.in_flight {
                let limit = Duration::from_millis(t.check.timeout_ms) + LOST_PROBE_GRACE;
                if now.duration_since(asked) > limit && self.by_id.remove(&id).is_some() {
                    tracing::warn!(service = %key.0, backend = %key.1, "probe got no result from the slow path");
                    results.push((key.clone(), false));
                }
            }
        }
        for (key, healthy) in results {
            let Some(t) = self.targets.get_mut(&key) else {
                continue;
            };
            t.in_flight = None;
            if let Some(up) = t.counts.record(healthy, t.check.rise, t.check.fall) {
                verdicts.push((key.0, key.1, up));
            }
        }
        verdicts
    }
}

/// Reports `verdicts` to the services state; every change becomes a monitor event.
fn report(agent: &AgentState, verdicts: Vec<(String, SocketAddrV4, bool)>) {
    for (service, backend, up) in verdicts {
        match agent.set_backend_health(&service, backend, up) {
            Ok(Some((from, to))) => {
                agent.agent_event(AgentEvent::backend_health(service, backend, from, to))
            }
            Ok(None) => {}
            Err(r) => {
                tracing::warn!(%service, %backend, up, error = %r.why, "recording a backend's health failed")
            }
        }
    }
}

/// Starts the checker's thread, probing through `probes` until `stop` is set or the agent is
/// gone.
pub(super) fn start(
    agent: Weak<AgentState>,
    probes: ProbeQueues,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, Error> {
    let mut checker = Checker {
        probes,
        targets: BTreeMap::new(),
        by_id: HashMap::new(),
        next_id: 0,
    };
    std::thread::Builder::new()
        .name("xylem-health".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(agent) = agent.upgrade() else {
                    return;
                };
                let now = Instant::now();
                checker.sync(&agent, now);
                let verdicts = checker.collect(now);
                report(&agent, verdicts);
                checker.start_due(now);
                drop(agent);
                std::thread::sleep(TICK);
            }
        })
        .map_err(|source| Error::Io {
            what: "starting the health-check thread".into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_failures_take_a_backend_down_and_rise_successes_bring_it_up() {
        let mut t = Thresholds::default();
        let (rise, fall) = (2, 3);
        // Unknown (usable) until the thresholds say otherwise.
        assert_eq!(t.record(false, rise, fall), None);
        assert_eq!(t.record(false, rise, fall), None);
        assert_eq!(t.record(false, rise, fall), Some(false));
        assert_eq!(t.record(false, rise, fall), Some(false));
        // One success is not enough, and a failure between starts the count again.
        assert_eq!(t.record(true, rise, fall), None);
        assert_eq!(t.record(false, rise, fall), None);
        assert_eq!(t.record(true, rise, fall), None);
        assert_eq!(t.record(true, rise, fall), Some(true));
        // A single failure after that does not take it down.
        assert_eq!(t.record(false, rise, fall), None);
        assert_eq!(t.record(true, rise, fall), None);
    }

    #[test]
    fn thresholds_of_zero_act_as_one() {
        let mut t = Thresholds::default();
        assert_eq!(t.record(true, 0, 0), Some(true));
        assert_eq!(t.record(false, 0, 0), Some(false));
    }

    #[test]
    fn probe_kinds_follow_the_check() {
        assert_eq!(probe_kind(&HealthCheckKind::Tcp), ProbeKind::Tcp);
        assert_eq!(
            probe_kind(&HealthCheckKind::Http {
                path: "/healthz".into(),
                expect_status: 204
            }),
            ProbeKind::Http {
                path: "/healthz".into(),
                expect_status: 204
            }
        );
    }
}
