//! Privileged: the kernel's counters of a real AF_XDP socket (veth, native XDP, copy mode)
//! reach the backend. A pod sends frames to a socket whose fill ring holds none: the kernel
//! drops each one, which no pipeline counter can see, and `kernel_stats` reports them. Once the
//! fill ring holds frames, the pod's frames are received and nothing more is dropped.
//!
//! Builds its own namespaces behind a guard that deletes them even on panic. Skips, saying
//! why, when not root.

mod common;

use std::time::{Duration, Instant};

use common::{
    GW_MAC, Lab, PacketSocket, attach_redirector, bind_sockets, enter, port_specs, root_or_skip,
    wait_for,
};
use etherparse::PacketBuilder;
use xsk_rs::FrameDesc;
use xylem_dataplane::io::{Backend, KernelStats};

/// Sends `n` UDP frames to the gateway from `pod`'s `eth0`, on a thread of its own (the
/// caller's stays in the node's namespace).
fn send_from(pod: &str, n: usize) {
    let pod = pod.to_string();
    std::thread::spawn(move || {
        enter(&pod);
        let s = PacketSocket::bind("eth0");
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x10], GW_MAC)
            .ipv4([10, 201, 0, 10], [10, 201, 0, 11], 64)
            .udp(40000, 9)
            .write(&mut frame, &[7; 64])
            .unwrap();
        for _ in 0..n {
            assert!(s.send(&frame), "the pod could not send");
        }
    })
    .join()
    .expect("the sender");
}

#[test]
fn frames_the_kernel_drops_at_a_socket_are_counted() {
    if !root_or_skip("frames_the_kernel_drops_at_a_socket_are_counted") {
        return;
    }
    let lab = Lab::new("ks", &[("dpa", "10.201.0.10/32")]);
    enter(&lab.node);
    let mut r = attach_redirector(&["dpa"]).unwrap_or_else(|e| panic!("{e}"));
    let mut b =
        bind_sockets(&mut r, &port_specs(&["dpa"], 0), 64, 64).unwrap_or_else(|e| panic!("{e}"));
    let stats = |b: &xylem_dataplane::io::afxdp::XskBackend| {
        b.kernel_stats(0).expect("an open socket has counters")
    };
    assert_eq!(
        stats(&b),
        KernelStats::default(),
        "a new socket starts at zero"
    );

    // Nothing in the fill ring: every frame is dropped by the kernel.
    send_from(&lab.pods[0], 5);
    assert!(
        wait_for(Duration::from_secs(5), || stats(&b).rx_dropped >= 5),
        "{:?}",
        stats(&b)
    );
    let before = stats(&b);
    assert!(before.rx_fill_ring_empty_descs >= 5, "{before:?}");
    assert_eq!(before.rx_ring_full, 0, "{before:?}");

    // Frames in the fill ring: the next ones arrive, and the drop count stands still.
    let free = b.take_frames();
    let room = b.fill_room(0, 32) as usize;
    // SAFETY: fresh from `take_frames`, each once; not touched again in this test.
    assert_eq!(unsafe { b.fill(0, &free[..room]) }, room);
    send_from(&lab.pods[0], 5);
    let mut got = 0;
    let mut rx = [FrameDesc::default(); 16];
    let deadline = Instant::now() + Duration::from_secs(5);
    while got < 5 && Instant::now() < deadline {
        got += b.rx(0, &mut rx);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(got >= 5, "only {got} of 5 frames arrived");
    assert_eq!(stats(&b).rx_dropped, before.rx_dropped, "{:?}", stats(&b));
}
