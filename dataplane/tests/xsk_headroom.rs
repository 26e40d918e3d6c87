//! Privileged: headroom on real AF_XDP sockets (veth, native XDP, copy mode). A frame sent by
//! one pod is received through the redirector, an ESP tunnel-mode outer header (Ethernet +
//! IPv4 + ESP + IV, 50 bytes) is written in the frame's headroom in front of it, and the frame
//! is sent out on the other pod's veth: the other pod must capture exactly the outer header
//! followed by the original frame, which shows the kernel sends a TX descriptor whose address
//! was moved back into the headroom from that address, whole. The completed frame must come
//! back with its full headroom. Runs with the default headroom (the kernel's XDP headroom
//! alone) and with a larger one (which adds UMEM frame headroom, moving where the kernel
//! writes received packets).
//!
//! Builds its own namespaces behind a guard that deletes them even on panic. Skips, saying
//! why, when not root.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    GW_MAC, Lab, PacketSocket, attach_redirector, enter, mac_of, port_specs, root_or_skip, wait_for,
};
use etherparse::{EtherType, Ethernet2Header, IpNumber, Ipv4Header, PacketBuilder};
use xsk_rs::FrameDesc;
use xylem_dataplane::io::afxdp::{XskBackend, XskOptions};
use xylem_dataplane::io::{Backend, DEFAULT_HEADROOM};

const OUTER: usize = 14 + 20 + 8 + 8;

/// The frame pod A sends: UDP to pod B through the gateway.
fn inner_frame(mac_a: [u8; 6], tag: u8) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(mac_a, GW_MAC)
        .ipv4([10, 201, 0, 10], [10, 201, 0, 11], 64)
        .udp(40000, 9)
        .write(&mut v, &[tag; 100])
        .unwrap();
    v
}

/// The tunnel-mode outer header for `inner`: Ethernet to pod B, IPv4 gateway → pod B with
/// protocol ESP, the ESP header (SPI, sequence number) and an 8-byte IV.
fn outer_header(mac_b: [u8; 6], inner_len: usize, tag: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(OUTER);
    v.extend_from_slice(
        &Ethernet2Header {
            source: GW_MAC,
            destination: mac_b,
            ether_type: EtherType::IPV4,
        }
        .to_bytes(),
    );
    let mut ip = Ipv4Header::new(
        (8 + 8 + inner_len) as u16,
        64,
        IpNumber::ENCAPSULATING_SECURITY_PAYLOAD,
        [10, 201, 0, 1],
        [10, 201, 0, 11],
    )
    .unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    v.extend_from_slice(&ip.to_bytes());
    v.extend_from_slice(&0x0000_1001u32.to_be_bytes()); // SPI
    v.extend_from_slice(&u32::from(tag).to_be_bytes()); // sequence number
    v.extend_from_slice(&[0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, tag]); // IV
    assert_eq!(v.len(), OUTER);
    v
}

/// What the dataplane side saw, for the assertions on the main thread.
#[derive(Debug)]
struct Seen {
    headroom: usize,
    rx_headroom: usize,
    tx_invalid_descs: u64,
    completed_headroom: usize,
    same_frame: bool,
}

/// Receives pod A's frame on `dpa`, prepends the outer header, sends it on `dpb` and waits for
/// its completion.
fn dataplane(
    node: String,
    headroom: usize,
    inner: Vec<u8>,
    outer: Vec<u8>,
    ready: Arc<AtomicBool>,
    received: Arc<AtomicBool>,
) -> Result<Seen, String> {
    enter(&node);
    let mut r = attach_redirector(&["dpa", "dpb"])?;
    let specs = port_specs(&["dpa", "dpb"], 0);
    let opts = XskOptions {
        ring_size: 64,
        zero_copy: false,
    };
    let mut b =
        XskBackend::with_headroom(&specs, opts, 64, 0, headroom).map_err(|e| e.to_string())?;
    for (idx, q, fd) in b.socket_fds() {
        r.register_socket(idx, q, fd).map_err(|e| e.to_string())?;
    }
    let mut free = b.take_frames();
    let room = b.fill_room(0, 32) as usize;
    let start = free.len() - room;
    // SAFETY: fresh from `take_frames`, each once; they leave `free` just below.
    if unsafe { b.fill(0, &free[start..]) } != room {
        return Err("the fill ring took no frames".into());
    }
    free.truncate(start);
    ready.store(true, Ordering::Release);

    // Receive until pod A's frame arrives (anything else goes back to the fill ring).
    let mut rx = [FrameDesc::default(); 16];
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut d, rx_headroom) = 'found: loop {
        if Instant::now() > deadline {
            return Err("pod A's frame never reached the socket".into());
        }
        let n = b.rx(0, &mut rx);
        for i in 0..n {
            let mut d = rx[i];
            // SAFETY: `rx` just returned the frame.
            let (ours, h) =
                unsafe { b.with_frame(&mut d, |f| (f.data() == &inner[..], f.headroom())) };
            if ours {
                received.store(true, Ordering::Release);
                // Whatever else arrived goes back to the kernel.
                // SAFETY: the rest of this `rx` batch, not looked at and not kept.
                unsafe { b.fill(0, &rx[i + 1..n]) };
                break 'found (d, h);
            }
            // SAFETY: a frame from `rx` that is not ours, not kept.
            unsafe { b.fill(0, &[d]) };
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let index = b.frame_index(&d);
    // SAFETY: `d` came from `rx` and was not given back.
    let prepended = unsafe {
        b.with_frame(&mut d, |f| match f.prepend(OUTER) {
            Some(front) => {
                front.copy_from_slice(&outer);
                true
            }
            None => false,
        })
    };
    if !prepended {
        return Err(format!(
            "no room for {OUTER} bytes in front of a received frame"
        ));
    }
    if b.desc_len(&d) != OUTER + inner.len() {
        return Err(format!(
            "descriptor length {} after the prepend",
            b.desc_len(&d)
        ));
    }
    // SAFETY: `d` came from `rx`; once queued it is used again only after `complete`.
    if unsafe { b.tx(1, &[d]) } != 1 {
        return Err("the TX ring took nothing".into());
    }
    let mut done = [FrameDesc::default(); 1];
    let completed = wait_for(Duration::from_secs(5), || {
        b.tx_kick(1);
        b.complete(1, &mut done) == 1
    });
    if !completed {
        return Err("the prepended frame never completed".into());
    }
    let mut c = done[0];
    // SAFETY: `complete` handed the frame back.
    let completed_headroom = unsafe { b.with_frame(&mut c, |f| f.headroom()) };
    let stats = b
        .kernel_stats(1)
        .ok_or("port 1's socket has no XDP_STATISTICS")?;
    Ok(Seen {
        headroom: b.headroom(),
        rx_headroom,
        tx_invalid_descs: stats.tx_invalid_descs,
        completed_headroom,
        same_frame: b.frame_index(&c) == index,
    })
}

fn prepend_and_send(lab: &Lab, headroom: usize, mac_a: [u8; 6], mac_b: [u8; 6], tag: u8) {
    let inner = inner_frame(mac_a, tag);
    let outer = outer_header(mac_b, inner.len(), tag);
    let ready = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicBool::new(false));

    // Pod B captures from before anything is sent.
    let pb = lab.pods[1].clone();
    let capturing = Arc::new(AtomicBool::new(false));
    let capturing2 = Arc::clone(&capturing);
    let want = outer[..14].to_vec();
    let capture = std::thread::spawn(move || {
        enter(&pb);
        let s = PacketSocket::bind("eth0");
        capturing2.store(true, Ordering::Release);
        s.recv_until(Instant::now() + Duration::from_secs(15), |f| {
            f.starts_with(&want)
        })
    });
    assert!(wait_for(Duration::from_secs(5), || capturing.load(Ordering::Acquire)));

    let dp = {
        let (node, inner, outer) = (lab.node.clone(), inner.clone(), outer.clone());
        let (ready, received) = (Arc::clone(&ready), Arc::clone(&received));
        std::thread::spawn(move || dataplane(node, headroom, inner, outer, ready, received))
    };
    let up = wait_for(Duration::from_secs(10), || {
        ready.load(Ordering::Acquire) || dp.is_finished()
    });
    assert!(up, "the dataplane thread did not start");

    // Pod A sends its frame until the dataplane has it.
    let pa = lab.pods[0].clone();
    let frame = inner.clone();
    let received2 = Arc::clone(&received);
    let sender = std::thread::spawn(move || {
        enter(&pa);
        let s = PacketSocket::bind("eth0");
        let until = Instant::now() + Duration::from_secs(10);
        while !received2.load(Ordering::Acquire) && Instant::now() < until {
            s.send(&frame);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    sender.join().unwrap();
    let seen = dp
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("headroom {headroom}: {e}"));
    let captured = capture.join().unwrap();
    eprintln!("headroom {headroom}: {seen:?}");

    assert!(seen.headroom >= headroom, "{seen:?}");
    assert_eq!(
        seen.rx_headroom, seen.headroom,
        "where the kernel wrote the packet"
    );
    assert_eq!(seen.completed_headroom, seen.headroom, "{seen:?}");
    assert!(
        seen.same_frame,
        "the completion names another frame: {seen:?}"
    );
    assert_eq!(seen.tx_invalid_descs, 0, "{seen:?}");
    let captured =
        captured.unwrap_or_else(|| panic!("headroom {headroom}: pod B captured nothing"));
    let mut expected = outer;
    expected.extend_from_slice(&inner);
    assert_eq!(captured.len(), expected.len(), "headroom {headroom}");
    assert_eq!(
        captured, expected,
        "headroom {headroom}: the bytes pod B received"
    );
}

#[test]
fn a_frame_prepended_in_the_headroom_goes_out_whole_on_af_xdp() {
    if !root_or_skip("a_frame_prepended_in_the_headroom_goes_out_whole_on_af_xdp") {
        return;
    }
    let lab = Lab::new(
        "hr",
        &[("dpa", "10.201.0.10/32"), ("dpb", "10.201.0.11/32")],
    );
    let mac_a = mac_of(&lab.pods[0], "eth0");
    let mac_b = mac_of(&lab.pods[1], "eth0");
    // The default: the kernel's 256-byte XDP headroom, no UMEM frame headroom.
    prepend_and_send(&lab, DEFAULT_HEADROOM, mac_a, mac_b, 1);
    // More than the XDP headroom: 64 bytes of UMEM frame headroom in front of it.
    prepend_and_send(&lab, 300, mac_a, mac_b, 2);
}
