//! Privileged tests: load, attach, detach, stale cleanup, dropping without a
//! socket and redirecting every ethertype, on veth pairs inside network
//! namespaces this test creates.
//! Each test skips (saying why) when not run as root.

mod common;

use common::{
    Capture, Netns, VB_MAC_TEXT, bound_xsk, every_kind_of_frame, ns_with_veth, object_path,
    send_frames, two_ns,
};
use xdp_redirector::{
    Error, PROGRAM_NAME, Redirector, XdpMode, XdpModeRequest, attached_program, counter,
    detach_stale,
};

fn load() -> Redirector {
    Redirector::load().expect("Redirector::load")
}

fn program_on(ifname: &str) -> Option<(String, XdpMode)> {
    attached_program(ifname)
        .expect("attached_program")
        .map(|p| (p.name, p.mode))
}

/// Attaches the committed object with `ip` (netlink, generic or driver mode),
/// like an old agent or an operator would: an instance with empty maps.
fn ip_attach(ns: &Netns, dev: &str, kind: &str) {
    let obj = object_path();
    ns.ip(&["link", "set", "dev", dev, kind, "obj", &obj, "sec", "xdp"]);
}

#[test]
fn attach_modes_on_veth() {
    require_root!();
    let ns = ns_with_veth("modes");
    ns.enter(|| {
        let mut r = load();
        assert_eq!(
            r.attach("va", XdpModeRequest::Native).unwrap(),
            XdpMode::Native
        );
        let p = attached_program("va").unwrap().expect("program on va");
        assert_eq!(p.name, PROGRAM_NAME);
        assert_eq!(p.mode, XdpMode::Native);
        assert!(p.id > 0);

        assert_eq!(
            r.attach("vb", XdpModeRequest::Generic).unwrap(),
            XdpMode::Generic
        );
        assert_eq!(
            program_on("vb"),
            Some((PROGRAM_NAME.into(), XdpMode::Generic))
        );
        assert_eq!(
            r.attached(),
            vec![
                ("va".into(), XdpMode::Native),
                ("vb".into(), XdpMode::Generic)
            ]
        );

        // Attaching again with a compatible request keeps the attachment.
        assert_eq!(
            r.attach("va", XdpModeRequest::Auto).unwrap(),
            XdpMode::Native
        );
        assert_eq!(attached_program("va").unwrap().map(|q| q.id), Some(p.id));
        // An incompatible request re-attaches in the new mode.
        assert_eq!(
            r.attach("va", XdpModeRequest::Generic).unwrap(),
            XdpMode::Generic
        );
        assert_eq!(
            program_on("va"),
            Some((PROGRAM_NAME.into(), XdpMode::Generic))
        );

        r.detach("va").unwrap();
        assert_eq!(attached_program("va").unwrap(), None);
        assert!(matches!(r.detach("va"), Err(Error::NotAttached { .. })));

        // Auto on a veth means native.
        assert_eq!(
            r.attach("va", XdpModeRequest::Auto).unwrap(),
            XdpMode::Native
        );
        assert_eq!(
            program_on("va"),
            Some((PROGRAM_NAME.into(), XdpMode::Native))
        );
    });
}

#[test]
fn auto_falls_back_to_generic_only_without_native_support() {
    require_root!();
    // Loopback has no native XDP: the driver answers EOPNOTSUPP.
    let ns = Netns::new("lo");
    ns.enter(|| {
        let mut r = load();
        let err = r.attach("lo", XdpModeRequest::Native).unwrap_err();
        assert!(matches!(err, Error::NativeUnsupported { .. }), "{err}");
        assert_eq!(attached_program("lo").unwrap(), None);
        assert_eq!(
            r.attach("lo", XdpModeRequest::Auto).unwrap(),
            XdpMode::Generic
        );
        assert_eq!(
            program_on("lo"),
            Some((PROGRAM_NAME.into(), XdpMode::Generic))
        );
    });
}

#[test]
fn unknown_interface_is_an_error() {
    require_root!();
    let ns = Netns::new("noif");
    ns.enter(|| {
        let mut r = load();
        let err = r.attach("nosuch0", XdpModeRequest::Auto).unwrap_err();
        assert!(matches!(err, Error::InterfaceNotFound { .. }), "{err}");
        assert!(err.to_string().contains("nosuch0 does not exist"), "{err}");
        assert!(r.attached().is_empty());
    });
}

#[test]
fn stale_netlink_program_is_replaced_on_attach() {
    require_root!();
    let ns = ns_with_veth("stale");
    ip_attach(&ns, "va", "xdpgeneric");
    ip_attach(&ns, "vb", "xdpdrv");
    ns.enter(|| {
        let old_va = attached_program("va").unwrap().expect("ip attached va");
        assert_eq!(old_va.mode, XdpMode::Generic);
        let old_vb = attached_program("vb").unwrap().expect("ip attached vb");
        assert_eq!(old_vb.mode, XdpMode::Native);

        let mut r = load();
        assert_eq!(
            r.attach("va", XdpModeRequest::Auto).unwrap(),
            XdpMode::Native
        );
        let now = attached_program("va").unwrap().expect("ours on va");
        assert_ne!(now.id, old_va.id);
        assert_eq!(now.mode, XdpMode::Native);
        assert_eq!(
            r.attach("vb", XdpModeRequest::Native).unwrap(),
            XdpMode::Native
        );
        assert_ne!(
            attached_program("vb").unwrap().map(|p| p.id),
            Some(old_vb.id)
        );

        // Ours detached: nothing of the old generic program is left either.
        r.detach("va").unwrap();
        assert_eq!(attached_program("va").unwrap(), None);
    });
}

#[test]
fn detach_stale_removes_netlink_programs_in_any_mode_then_reports_none() {
    require_root!();
    let ns = ns_with_veth("dstale");
    ip_attach(&ns, "va", "xdpgeneric");
    ip_attach(&ns, "vb", "xdpdrv");
    ns.enter(|| {
        assert!(attached_program("va").unwrap().is_some());
        assert!(detach_stale("va").unwrap());
        assert_eq!(attached_program("va").unwrap(), None);
        assert!(!detach_stale("va").unwrap());

        assert!(detach_stale("vb").unwrap());
        assert_eq!(attached_program("vb").unwrap(), None);
        assert!(!detach_stale("vb").unwrap());
    });
}

#[test]
fn detach_stale_removes_a_program_held_by_a_live_bpf_link() {
    require_root!();
    let ns = ns_with_veth("dlink");
    ns.enter(|| {
        // A Redirector attaches through a bpf_link, which netlink cannot
        // replace (EBUSY): detach_stale must BPF_LINK_DETACH it.
        let mut r = load();
        r.attach("va", XdpModeRequest::Native).unwrap();
        assert!(detach_stale("va").unwrap());
        assert_eq!(attached_program("va").unwrap(), None);
        assert!(!detach_stale("va").unwrap());
        // Dropping the owner of the now-defunct link is fine.
        drop(r);
        assert_eq!(attached_program("va").unwrap(), None);
    });
}

#[test]
fn drop_detaches_everything() {
    require_root!();
    let ns = ns_with_veth("drop");
    ns.enter(|| {
        let mut r = load();
        r.attach("va", XdpModeRequest::Native).unwrap();
        r.attach("vb", XdpModeRequest::Generic).unwrap();
        assert!(attached_program("va").unwrap().is_some());
        assert!(attached_program("vb").unwrap().is_some());
        drop(r);
        assert_eq!(attached_program("va").unwrap(), None);
        assert_eq!(attached_program("vb").unwrap(), None);
    });
}

/// A child forked by another thread holds copies of every descriptor until
/// it execs or exits, the link's among them. Detach and drop must still
/// remove the program at once: CI once saw a generic-mode program outlive
/// `detach` while a parallel test was spawning `ip`.
#[test]
fn detach_is_immediate_while_a_forked_child_holds_the_link() {
    require_root!();
    let ns = ns_with_veth("forked");
    ns.enter(|| {
        let mut r = load();
        r.attach("va", XdpModeRequest::Generic).unwrap();
        r.attach("vb", XdpModeRequest::Native).unwrap();
        let child = HeldDescriptors::fork();
        r.detach("va").unwrap();
        assert_eq!(attached_program("va").unwrap(), None);
        // Changing mode detaches the old link first; the new one must attach.
        assert_eq!(
            r.attach("vb", XdpModeRequest::Generic).unwrap(),
            XdpMode::Generic
        );
        assert_eq!(
            program_on("vb"),
            Some((PROGRAM_NAME.into(), XdpMode::Generic))
        );
        drop(r);
        assert_eq!(attached_program("vb").unwrap(), None);
        drop(child);
    });
}

/// A forked child that sleeps with copies of all the parent's descriptors,
/// killed and reaped on drop.
struct HeldDescriptors(libc::pid_t);

impl HeldDescriptors {
    fn fork() -> Self {
        // SAFETY: the child calls only async-signal-safe functions (`sleep`,
        // `_exit`) before it ends, as a fork in a threaded process requires.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: async-signal-safe; `_exit` skips the parent's atexit
            // handlers and destructors, which the child must not run.
            unsafe {
                libc::sleep(30);
                libc::_exit(0);
            }
        }
        Self(pid)
    }
}

impl Drop for HeldDescriptors {
    fn drop(&mut self) {
        // SAFETY: `self.0` is our own child, not yet reaped.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

#[test]
fn drops_every_frame_without_a_socket() {
    require_root!();
    let (a, b) = two_ns("nosock");
    let vb = b.ifindex("vb");
    assert!(a.ping("10.77.0.2", 3), "baseline ping without the program");
    b.enter(|| {
        let mut r = load();
        r.attach("vb", XdpModeRequest::Auto).unwrap();
        // No slot for the queue: dropped, never passed to the kernel.
        assert!(
            !a.ping("10.77.0.2", 2),
            "ping worked through an interface whose queue has no socket"
        );
        let after = r.counters().unwrap();
        assert!(after.no_socket >= 2, "no_socket did not grow: {after:?}");
        assert_eq!(after.redirected, 0);

        // A slot whose socket was closed (the kernel empties its XSKMAP entry): dropped too.
        let xsk = bound_xsk(vb, 0);
        r.register_socket(vb, 0, std::os::fd::AsFd::as_fd(&xsk.fd))
            .unwrap();
        drop(xsk);
        let before = r.counters().unwrap();
        assert!(!a.ping("10.77.0.2", 2), "ping worked through an empty slot");
        let after = r.counters().unwrap();
        assert!(
            after.no_socket >= before.no_socket + 2,
            "no_socket did not grow: {before:?} -> {after:?}"
        );
        assert_eq!(after.redirected, 0);
        assert_eq!(r.raw_counter(counter::NO_SOCKET).unwrap(), after.no_socket);
    });
    assert!(a.ping("10.77.0.2", 3), "ping after the program is gone");
}

/// Every frame goes to the socket, whatever its ethertype: none reaches the kernel of `b`
/// (a packet socket on `vb` sees none of them) until the program is detached, when all of
/// them do.
#[test]
fn redirects_every_ethertype_to_a_registered_socket() {
    require_root!();
    let (a, b) = two_ns("redir");
    let vb = b.ifindex("vb");
    b.ip(&["link", "set", "vb", "address", VB_MAC_TEXT]);
    let frames = every_kind_of_frame();
    b.enter(|| {
        let mut r = load();
        r.attach("vb", XdpModeRequest::Auto).unwrap();
        // The socket is bound but never given fill buffers: frames redirected to it are
        // consumed (dropped) by the kernel.
        let xsk = bound_xsk(vb, 0);
        let fd = std::os::fd::AsFd::as_fd(&xsk.fd);
        assert_eq!(r.register_socket(vb, 0, fd).unwrap(), 0);
        assert_eq!(
            r.register_socket(vb, 0, fd).unwrap(),
            0,
            "same slot on re-register"
        );
        let capture = Capture::open(vb);
        let before = r.counters().unwrap();
        a.enter(|| send_frames("va", &frames));
        let after = r.counters().unwrap();
        assert!(
            after.redirected >= before.redirected + frames.len() as u64,
            "not every frame was redirected: {before:?} -> {after:?}"
        );
        assert_eq!(after.no_socket, before.no_socket);
        assert_eq!(
            capture.markers_seen(),
            Vec::<u8>::new(),
            "frames that reached the kernel past the program"
        );
        assert!(!a.ping("10.77.0.2", 1), "ping worked past the socket");

        // Without the program the same frames do reach the kernel: the capture sees them.
        r.unregister_socket(vb, 0).unwrap();
        assert!(matches!(
            r.unregister_socket(vb, 0),
            Err(Error::SocketNotRegistered { .. })
        ));
        r.detach("vb").unwrap();
        a.enter(|| send_frames("va", &frames));
        let all: Vec<u8> = (0..frames.len() as u8).collect();
        assert_eq!(capture.markers_seen(), all, "the capture itself works");
    });
}

#[test]
fn slots_are_per_interface_and_queue_and_reused() {
    require_root!();
    let ns = ns_with_veth("slots");
    let (va, vb) = (ns.ifindex("va"), ns.ifindex("vb"));
    ns.enter(|| {
        let mut r = load();
        let sa = bound_xsk(va, 0);
        let sb = bound_xsk(vb, 0);
        let fa = std::os::fd::AsFd::as_fd(&sa.fd);
        let fb = std::os::fd::AsFd::as_fd(&sb.fd);
        assert_eq!(r.register_socket(va, 0, fa).unwrap(), 0);
        assert_eq!(r.register_socket(vb, 0, fb).unwrap(), 1);
        r.unregister_socket(va, 0).unwrap();
        assert_eq!(
            r.register_socket(va, 0, fa).unwrap(),
            0,
            "freed slot reused"
        );
        // detach removes the interface's slots.
        r.attach("vb", XdpModeRequest::Auto).unwrap();
        r.detach("vb").unwrap();
        assert!(matches!(
            r.unregister_socket(vb, 0),
            Err(Error::SocketNotRegistered { .. })
        ));
    });
}

#[test]
fn non_xsk_fd_is_rejected() {
    require_root!();
    let ns = ns_with_veth("badfd");
    let va = ns.ifindex("va");
    ns.enter(|| {
        let mut r = load();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsFd::as_fd(&udp);
        for _ in 0..2 {
            match r.register_socket(va, 0, fd) {
                Err(Error::RegisterSocket { slot, .. }) => {
                    assert_eq!(slot, 0, "a failed registration leaked its slot")
                }
                other => panic!("expected RegisterSocket error, got {other:?}"),
            }
        }
        assert!(matches!(
            r.unregister_socket(va, 0),
            Err(Error::SocketNotRegistered { .. })
        ));
    });
}
