//! Privileged: a `shared` worker with `realtime` on, on real AF_XDP sockets (veth, native XDP,
//! copy mode), sharing CPU 0 with a busy `nice 19` task as a busy pod would:
//! - while the core is contended, it waits for frames at `SCHED_FIFO`, so that the kernel's
//!   wake-up preempts the busy task instead of waiting for it to use up its time slice;
//! - flooded for longer than [`RT_BUSY_BUDGET_NS`] without an empty poll, it returns to normal
//!   priority and counts it (`priority_drops`);
//! - once the busy task is gone, it polls after traffic at normal priority again;
//! - every frame it received is counted once.
//!
//! Builds its own namespaces behind a guard that deletes them even on panic. Skips, saying
//! why, when not root or when the kernel refuses `SCHED_FIFO` to this process.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use xylem_dataplane::slowpath::Signal;
use xylem_dataplane::tables::{Gateway, MacAddr, Mode, Neighbor, Tables};
use xylem_dataplane::worker::{Placement, RT_BUSY_BUDGET_NS, Worker, WorkerConfig, WorkerLink};

use common::{
    GW_MAC, Lab, PacketSocket, attach_redirector, bind_sockets, enter, mac_of, port_specs,
    root_or_skip, wait_for,
};

/// The CPU the worker, the busy task and nothing else of this test's share.
const CPU: usize = 0;

/// The scheduling policy of thread `tid`.
fn policy_of(tid: i32) -> i32 {
    // SAFETY: sched_getscheduler reads no memory of ours; a stale tid gives -1.
    unsafe { libc::sched_getscheduler(tid) }
}

/// Whether this process may use `SCHED_FIFO` (root alone is not enough in a cgroup without
/// realtime runtime). Probes on a throwaway thread so that the test thread keeps its policy.
fn realtime_allowed() -> Result<(), String> {
    std::thread::spawn(|| {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: `param` is valid for the call; pid 0 is this (throwaway) thread.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().to_string())
        }
    })
    .join()
    .unwrap()
}

/// A UDP frame from pod a to pod b through the gateway.
fn frame(mac_a: [u8; 6], seq: u16) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac_a, GW_MAC)
        .ipv4([10, 201, 0, 10], [10, 201, 0, 11], 64)
        .udp(40000 + (seq % 64), 9)
        .write(&mut v, &[0x5a; 64])
        .unwrap();
    v
}

#[test]
fn a_shared_worker_waits_at_realtime_priority_on_a_busy_core_and_yields_it_under_a_flood() {
    let name =
        "a_shared_worker_waits_at_realtime_priority_on_a_busy_core_and_yields_it_under_a_flood";
    if !root_or_skip(name) {
        return;
    }
    if let Err(e) = realtime_allowed() {
        xylem_testkit::skip(name, &format!("SCHED_FIFO refused to this process ({e})"));
        return;
    }
    let lab = Lab::new(
        "rt",
        &[("dpa", "10.201.0.10/32"), ("dpb", "10.201.0.11/32")],
    );
    let (mac_a, mac_b) = (mac_of(&lab.pods[0], "eth0"), mac_of(&lab.pods[1], "eth0"));
    let mut t = Tables::new(
        1,
        Mode::Passthrough,
        Gateway {
            mac: MacAddr(GW_MAC),
            ipv4: "10.201.0.1".parse().unwrap(),
        },
    );
    for (addr, port, mac) in [("10.201.0.10", 0, mac_a), ("10.201.0.11", 1, mac_b)] {
        let neighbor = Neighbor {
            port,
            mac: MacAddr(mac),
        };
        t.add_route(addr.parse().unwrap(), neighbor).unwrap();
    }
    let link = WorkerLink::new(
        Arc::new(ArcSwap::from_pointee(t)),
        Arc::new(ArrayQueue::new(64)),
        Arc::new(Signal::default()),
    );
    let stats = Arc::clone(&link.stats);
    let stop = Arc::clone(&link.stop);
    let tid = Arc::new(AtomicI32::new(0));

    let node = lab.node.clone();
    let tid2 = Arc::clone(&tid);
    let worker_thread = std::thread::spawn(move || -> Result<(), String> {
        enter(&node);
        let mut r = attach_redirector(&["dpa", "dpb"])?;
        let backend = bind_sockets(&mut r, &port_specs(&["dpa", "dpb"], 0), 512, 256)?;
        let cfg = WorkerConfig {
            core: Some(CPU),
            placement: Placement::Shared,
            realtime: true,
            ..WorkerConfig::default()
        };
        let w = Worker::new(cfg, backend, link).map_err(|e| e.to_string())?;
        // SAFETY: gettid has no preconditions.
        tid2.store(unsafe { libc::gettid() }, Ordering::Release);
        w.run().map_err(|e| e.to_string())?;
        drop(r);
        Ok(())
    });
    assert!(
        wait_for(Duration::from_secs(10), || tid.load(Ordering::Acquire) != 0
            || worker_thread.is_finished()),
        "the worker did not start"
    );
    let tid = tid.load(Ordering::Acquire);
    assert_ne!(tid, 0, "the worker failed: {:?}", worker_thread.join());

    // The busy pod: a `nice 19` spin loop on the worker's CPU.
    let busy = Arc::new(AtomicBool::new(true));
    let busy2 = Arc::clone(&busy);
    let spinner = std::thread::spawn(move || {
        assert!(core_affinity::set_for_current(core_affinity::CoreId {
            id: CPU
        }));
        // SAFETY: setpriority on this thread's own id; no memory is passed.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as u32, 19) };
        while busy2.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
    });

    // Pod a sends a frame every millisecond on another CPU; `until` decides when to stop.
    let trickle = |until: &(dyn Fn() -> bool + Sync)| {
        let pa = lab.pods[0].clone();
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&pa);
                let sock = PacketSocket::bind("eth0");
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut seq = 0u16;
                while !until() && Instant::now() < deadline {
                    sock.send(&frame(mac_a, seq));
                    seq = seq.wrapping_add(1);
                    std::thread::sleep(Duration::from_millis(1));
                }
                until()
            })
            .join()
            .unwrap()
        })
    };

    // 1. Contended core: the worker's yields come back late, and it then waits at SCHED_FIFO.
    let waited_rt = trickle(&|| policy_of(tid) == libc::SCHED_FIFO);
    assert!(
        waited_rt,
        "the worker never waited at SCHED_FIFO next to a busy task: {:?}",
        stats.snapshot()
    );

    // 2. A flood: pod a sends as fast as it can, from two threads, until the worker has been
    //    busy for longer than its budget and returned to normal priority.
    let flooding = AtomicBool::new(true);
    std::thread::scope(|s| {
        for k in 0..2u16 {
            let (pa, flooding) = (lab.pods[0].clone(), &flooding);
            s.spawn(move || {
                enter(&pa);
                let sock = PacketSocket::bind("eth0");
                let frames: Vec<Vec<u8>> = (0..64).map(|i| frame(mac_a, k * 64 + i)).collect();
                while flooding.load(Ordering::Relaxed) {
                    for f in &frames {
                        sock.send(f);
                    }
                }
            });
        }
        let dropped = wait_for(Duration::from_secs(20), || stats.priority_drops.get() > 0);
        flooding.store(false, Ordering::Relaxed);
        assert!(
            dropped,
            "flooded, the worker never gave up realtime priority (budget {RT_BUSY_BUDGET_NS} ns): {:?}",
            stats.snapshot()
        );
    });

    // 3. The busy task is gone: after traffic the worker polls at normal priority again (once
    //    the second it waits at once after a contended yield has passed).
    busy.store(false, Ordering::Relaxed);
    spinner.join().unwrap();
    let normal = trickle(&|| policy_of(tid) == libc::SCHED_OTHER);
    assert!(
        normal,
        "on an idle core the worker stayed at realtime priority: {:?}",
        stats.snapshot()
    );

    // A blocked worker notices within its 100 ms wait.
    stop.store(true, Ordering::Relaxed);
    worker_thread
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the worker failed: {e}"));
    let s = stats.snapshot();
    eprintln!("worker {s:?}");
    assert!(s.forwarded > 0, "{s:?}");
    assert_eq!(s.rx_packets, s.verdicts(), "{s:?}");
}
