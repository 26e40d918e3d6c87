//! The agent's ports at runtime: opening one on every worker (a socket each, the XDP program,
//! the XSKMAP) and closing it again, so that a removed port gives its frames back.

use std::os::fd::AsFd;

use xylem_dataplane::Error as DpError;
use xylem_dataplane::io::afxdp::PortSpec;
use xylem_dataplane::tables::PortId;
use xylem_dataplane::worker::{PortChange, PortRequest};

use super::*;
use crate::Error;
use xylem_api::config::PortConfig;

impl AgentState {
    /// Opens a new port on `record.ifname` while the workers run: asks every worker to bind a
    /// socket on its UMEM (between two batches), attaches the redirector, registers the
    /// sockets in the XSKMAP. The port takes the lowest free id (a removed port's, else the
    /// next), as every worker's backend does, and `record` is what `ports` keeps of it.
    /// Returns the new port id. A failure at any step undoes the steps before it: a worker
    /// that refused the port for want of frames ([`xylem_dataplane::Error::PortBudget`])
    /// leaves everything as it was. Called with the bindings lock held.
    pub(super) fn open_port(&self, record: PortConfig) -> Result<usize, Error> {
        let ifname = record.ifname.clone();
        let idx = ifindex(&ifname)?;
        let mode_req = self.cfg.xdp_mode_request();
        let mut redirector = self
            .redirector
            .lock()
            .map_err(|_| Error::Agent("redirector lock poisoned".into()))?;
        let mut ports = self
            .ports
            .lock()
            .map_err(|_| Error::Agent("ports lock poisoned".into()))?;
        let port = ports
            .iter()
            .position(Option::is_none)
            .unwrap_or(ports.len());
        // The sockets first: a worker that refuses leaves nothing attached to undo.
        let mut replies = self.open_sockets(&ifname, idx)?;
        let opened: Vec<Option<PortId>> = replies
            .iter()
            .map(|r| r.as_ref().ok().map(|c| c.port))
            .collect();
        // Every worker picks the lowest free index, as this does; a worker that did not would
        // route this port's frames to another port.
        if opened.iter().any(|o| *o != Some(port as PortId)) {
            self.abandon_port(&opened);
            let failure = match replies.iter().position(Result::is_err) {
                Some(i) => replies.swap_remove(i).err(),
                None => None,
            };
            return Err(failure.unwrap_or_else(|| {
                Error::Agent(format!(
                    "a worker opened {ifname} at another index than port {port}, which every \
                     worker picks alike: restart the agent"
                ))
            }));
        }
        let attached = redirector
            .attach(&ifname, mode_req)
            .map_err(Error::from)
            .and_then(|mode| {
                for (w, r) in self.workers.iter().zip(&replies) {
                    // The worker's duplicate of its socket goes when `replies` does: kept, it
                    // would keep the socket alive after the worker closed the port.
                    if let Ok(PortChange { fd: Some(fd), .. }) = r {
                        redirector.register_socket(idx, w.id as u32, fd.as_fd())?;
                    }
                }
                Ok(mode)
            });
        drop(replies);
        let mode = match attached {
            Ok(mode) => mode,
            Err(e) => {
                let _ = redirector.detach(&ifname);
                self.abandon_port(&opened);
                return Err(e);
            }
        };
        if port == ports.len() {
            ports.push(None);
        }
        ports[port] = Some((record, idx, mode));
        tracing::info!(%ifname, %mode, port, "port added");
        Ok(port)
    }

    /// Closes again the port each worker opened (`opened[i]`: worker `i`'s index for it, if
    /// it opened one), after a failed [`Self::open_port`].
    fn abandon_port(&self, opened: &[Option<PortId>]) {
        let requests = opened.iter().map(|o| o.map(PortRequest::Remove)).collect();
        let replies = match self.ask_workers(requests) {
            Ok(replies) => replies,
            Err(e) => {
                tracing::error!(error = %e, "closing a half-opened port failed");
                return;
            }
        };
        for (w, r) in self.workers.iter().zip(replies) {
            if let Some(Err(e)) = r {
                tracing::error!(worker = w.id, error = %e, "closing a half-opened port failed");
            }
        }
    }

    /// Removes pod port `port` while the workers run, once no route leads to it: its sockets
    /// leave the XSKMAP, the XDP program leaves the interface (nothing more can arrive), and
    /// every worker closes its socket and takes back the frames on its rings. The id is free
    /// for the next port. Called with the bindings lock held.
    pub(super) fn close_port(&self, port: usize) -> Result<(), Error> {
        let mut redirector = self
            .redirector
            .lock()
            .map_err(|_| Error::Agent("redirector lock poisoned".into()))?;
        let mut ports = self
            .ports
            .lock()
            .map_err(|_| Error::Agent("ports lock poisoned".into()))?;
        let Some((cfg, idx, _)) = ports.get(port).cloned().flatten() else {
            return Ok(());
        };
        // The redirector's part may fail (an interface deleted under the agent took its XDP
        // link with it): the workers still close the port, so that its frames come back.
        let mut first_err = None;
        for w in &self.workers {
            if let Err(e) = redirector.unregister_socket(idx, w.id as u32) {
                first_err.get_or_insert(Error::from(e));
            }
        }
        if let Err(e) = redirector.detach(&cfg.ifname) {
            first_err.get_or_insert(Error::from(e));
        }
        let requests = self
            .workers
            .iter()
            .map(|_| Some(PortRequest::Remove(port as PortId)))
            .collect();
        let replies = self.ask_workers(requests)?.into_iter().flatten().collect();
        self.all_done(&cfg.ifname, replies)?;
        ports[port] = None;
        tracing::info!(ifname = %cfg.ifname, port, "port removed");
        first_err.map_or(Ok(()), Err)
    }

    /// Has every worker bind a socket on queue (worker id) of `ifname` (index `ifindex`).
    /// The kernel frees a queue some time after the socket bound to it closed (after an RCU
    /// grace period, from a work queue), so a pod's interface used again at once can refuse
    /// the bind for a moment: a worker that failed is asked again, for up to
    /// [`BIND_RETRY`].
    /// Returns every worker's answer; none is retried for a refusal for want of frames, which
    /// binding again would not change.
    fn open_sockets(
        &self,
        ifname: &str,
        ifindex: u32,
    ) -> Result<Vec<Result<PortChange, Error>>, Error> {
        let request = |w: &WorkerHandle| {
            PortRequest::Add(PortSpec {
                ifname: ifname.to_string(),
                ifindex,
                queue: w.id as u32,
            })
        };
        let mut replies: Vec<_> = self
            .ask_workers(self.workers.iter().map(|w| Some(request(w))).collect())?
            .into_iter()
            .flatten()
            .collect();
        let retry = |r: &Result<PortChange, Error>| matches!(r, Err(e) if !matches!(e, Error::Dataplane(DpError::PortBudget { .. })));
        let deadline = std::time::Instant::now() + BIND_RETRY;
        while replies.iter().any(retry) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let again = self
                .workers
                .iter()
                .zip(&replies)
                .map(|(w, r)| retry(r).then(|| request(w)))
                .collect();
            for (old, new) in replies.iter_mut().zip(self.ask_workers(again)?) {
                if let Some(new) = new {
                    *old = new;
                }
            }
        }
        Ok(self
            .workers
            .iter()
            .zip(replies)
            .map(|(w, r)| r.map_err(|e| worker_failed(w.id, ifname, e)))
            .collect())
    }

    /// Posts `requests[i]` (if any) to worker `i`, wakes the workers, and waits for every
    /// reply: `None` for a worker given no request.
    fn ask_workers(
        &self,
        requests: Vec<Option<PortRequest<PortSpec>>>,
    ) -> Result<Vec<Option<Result<PortChange, Error>>>, Error> {
        let mut tickets = Vec::with_capacity(self.workers.len());
        for (w, req) in self.workers.iter().zip(requests) {
            let ticket = match req {
                Some(req) => Some(w.ports_ctl.post(req).map_err(|_| {
                    Error::Agent(format!("worker {}'s port mailbox is full", w.id))
                })?),
                None => None,
            };
            tickets.push(ticket);
        }
        self.wake_workers();
        Ok(self
            .workers
            .iter()
            .zip(tickets)
            .map(|(w, ticket)| {
                ticket.map(|t| match t.wait(WORKER_REPLY_TIMEOUT, || w.is_running()) {
                    Ok(Ok(change)) => Ok(change),
                    Ok(Err(e)) => Err(Error::Dataplane(e)),
                    Err(no) => Err(Error::Agent(no_reply(no))),
                })
            })
            .collect())
    }

    /// The workers' changes of port `ifname`, or the first failure. A worker that failed
    /// leaves the workers' ports out of step: that is reported loudly (the agent is then
    /// unhealthy for that port; restart it).
    fn all_done(
        &self,
        ifname: &str,
        replies: Vec<Result<PortChange, Error>>,
    ) -> Result<Vec<PortChange>, Error> {
        self.workers
            .iter()
            .zip(replies)
            .map(|(w, r)| r.map_err(|e| worker_failed(w.id, ifname, e)))
            .collect()
    }
}

/// Worker `id`'s failure to change port `ifname`, logged. A refusal for want of frames is kept
/// as it is, so that the API answers it as such.
fn worker_failed(id: usize, ifname: &str, e: Error) -> Error {
    tracing::error!(worker = id, %ifname, error = %e, "a port change failed");
    match e {
        e @ Error::Dataplane(DpError::PortBudget { .. }) => e,
        e => Error::Agent(format!("worker {id} could not change port {ifname}: {e}")),
    }
}
