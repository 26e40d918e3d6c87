//! What a frame is and what the dataplane changed in it, for people: a description of its
//! headers, and the fields that differ between the captured and the sent frame.

use std::net::Ipv4Addr;

use xylem_dataplane::tables::MacAddr;
use xylem_dataplane::wire::ethernet::{self, EtherType};
use xylem_dataplane::wire::ipv4;

use super::*;

/// The IPv4 header of an Ethernet frame, if it has one: (header, everything after it up to
/// the total length, or to the end of the frame when that is shorter). Checked by the wire
/// layer's header-only view, so a frame cut short by the capture is still described.
fn ipv4(frame: &[u8]) -> Option<(&[u8], &[u8])> {
    if ethernet::Frame::new_checked(frame).ok()?.ethertype() != EtherType::IPV4 {
        return None;
    }
    let l3 = frame.get(ethernet::HEADER_LEN..)?;
    let ip = ipv4::Packet::new_checked_header(l3).ok()?;
    let header_len = ip.header_len();
    let end = usize::from(ip.total_len()).clamp(header_len, l3.len());
    Some((&l3[..header_len], &l3[header_len..end]))
}

pub(crate) fn tcp_flags(f: u8) -> String {
    let mut s: String = [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x20, 'U'),
    ]
    .iter()
    .filter(|(b, _)| f & b != 0)
    .map(|&(_, c)| c)
    .collect();
    if f & 0x10 != 0 {
        s.push('.');
    }
    if s.is_empty() { "none".into() } else { s }
}

fn icmp_name(t: u8, c: u8) -> String {
    match (t, c) {
        (0, _) => "echo-reply".into(),
        (8, _) => "echo-request".into(),
        (3, c) => format!("unreachable code {c}"),
        (11, 0) => "time-exceeded in transit".into(),
        (11, c) => format!("time-exceeded code {c}"),
        (t, c) => format!("type {t} code {c}"),
    }
}

/// The headers of `frame`, described. Every read is bounds-checked: any bytes give a
/// description, never a panic.
pub fn describe(frame: &[u8]) -> Flow {
    let mut f = Flow::default();
    let Some(t) = frame.get(12..14) else {
        f.proto = "-".into();
        f.summary = format!("{} bytes: shorter than an Ethernet header", frame.len());
        return f;
    };
    let ethertype = u16::from_be_bytes([t[0], t[1]]);
    match ethertype {
        0x0806 => {
            f.proto = "ARP".into();
            let arp = &frame[14..];
            let ip = |o: usize| {
                arp.get(o..o + 4)
                    .map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            };
            // Ethernet/IPv4 ARP: sender IP at 14, target IP at 24.
            f.src = ip(14);
            f.dst = ip(24);
            let op = arp.get(6..8).map(|o| u16::from_be_bytes([o[0], o[1]]));
            let show = |a: Option<Ipv4Addr>| a.map_or("?".into(), |a| a.to_string());
            f.summary = match op {
                Some(1) => format!("ARP who-has {} tell {}", show(f.dst), show(f.src)),
                Some(2) => format!("ARP reply {} is-at", show(f.src)),
                Some(o) => format!("ARP op {o}"),
                None => "ARP (truncated)".into(),
            };
        }
        0x86dd => {
            f.proto = "IPv6".into();
            f.summary = "IPv6".into();
        }
        0x0800 => {
            let Some((h, l4)) = ipv4(frame) else {
                f.proto = "IPv4".into();
                f.summary = "IPv4 (malformed header)".into();
                return f;
            };
            let (src, dst) = (
                Ipv4Addr::new(h[12], h[13], h[14], h[15]),
                Ipv4Addr::new(h[16], h[17], h[18], h[19]),
            );
            f.src = Some(src);
            f.dst = Some(dst);
            let later_fragment = u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0;
            let proto = h[9];
            let ports = if later_fragment {
                None
            } else {
                l4.get(0..4).map(|p| {
                    (
                        u16::from_be_bytes([p[0], p[1]]),
                        u16::from_be_bytes([p[2], p[3]]),
                    )
                })
            };
            match proto {
                6 | 17 => {
                    f.proto = if proto == 6 { "TCP" } else { "UDP" }.into();
                    f.sport = ports.map(|p| p.0);
                    f.dport = ports.map(|p| p.1);
                    if proto == 6 && !later_fragment {
                        f.tcp_flags = l4.get(13).map(|&b| tcp_flags(b));
                    }
                    f.summary = match ports {
                        Some((s, d)) => format!("{} {src}:{s} → {dst}:{d}", f.proto),
                        None => format!("{} {src} → {dst}", f.proto),
                    };
                    if let Some(fl) = &f.tcp_flags {
                        f.summary.push_str(&format!(" [{fl}]"));
                    }
                }
                1 => {
                    f.proto = "ICMP".into();
                    if !later_fragment {
                        f.icmp_type = l4.first().copied();
                        f.icmp_code = l4.get(1).copied();
                    }
                    f.summary = format!("ICMP {src} → {dst}");
                    if let (Some(t), Some(c)) = (f.icmp_type, f.icmp_code) {
                        f.summary.push(' ');
                        f.summary.push_str(&icmp_name(t, c));
                        if matches!(t, 0 | 8)
                            && let Some(b) = l4.get(4..8)
                        {
                            f.summary.push_str(&format!(
                                " id {} seq {}",
                                u16::from_be_bytes([b[0], b[1]]),
                                u16::from_be_bytes([b[2], b[3]])
                            ));
                        }
                    }
                }
                p => {
                    f.proto = format!("IP proto {p}");
                    f.summary = format!("IP proto {p} {src} → {dst}");
                }
            }
            if later_fragment {
                f.summary.push_str(" (fragment)");
            }
        }
        t => {
            f.proto = format!("ethertype {t:#06x}");
            f.summary = f.proto.clone();
        }
    }
    f
}

#[derive(Clone, Copy)]
enum Fmt {
    Mac,
    Ip,
    Dec,
    Hex,
}

/// Named fields of `frame`'s headers: (name, offset, length, how to show it), then the
/// payload's offset.
fn layout(frame: &[u8]) -> (Vec<(&'static str, usize, usize, Fmt)>, usize) {
    let mut v = vec![
        ("eth.dst", 0, 6, Fmt::Mac),
        ("eth.src", 6, 6, Fmt::Mac),
        ("eth.type", 12, 2, Fmt::Hex),
    ];
    let Some((h, _)) = ipv4(frame) else {
        return (v, 14);
    };
    let ihl = h.len();
    for (name, off, len, fmt) in [
        ("ip.tos", 1, 1, Fmt::Hex),
        ("ip.len", 2, 2, Fmt::Dec),
        ("ip.id", 4, 2, Fmt::Dec),
        ("ip.frag", 6, 2, Fmt::Hex),
        ("ip.ttl", 8, 1, Fmt::Dec),
        ("ip.proto", 9, 1, Fmt::Dec),
        ("ip.csum", 10, 2, Fmt::Hex),
        ("ip.src", 12, 4, Fmt::Ip),
        ("ip.dst", 16, 4, Fmt::Ip),
    ] {
        v.push((name, 14 + off, len, fmt));
    }
    if ihl > 20 {
        v.push(("ip.options", 34, ihl - 20, Fmt::Hex));
    }
    let l4 = 14 + ihl;
    if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
        return (v, l4);
    }
    let fields: &[(&'static str, usize, usize, Fmt)] = match h[9] {
        6 => &[
            ("tcp.sport", 0, 2, Fmt::Dec),
            ("tcp.dport", 2, 2, Fmt::Dec),
            ("tcp.seq", 4, 4, Fmt::Dec),
            ("tcp.ack", 8, 4, Fmt::Dec),
            ("tcp.flags", 12, 2, Fmt::Hex),
            ("tcp.window", 14, 2, Fmt::Dec),
            ("tcp.csum", 16, 2, Fmt::Hex),
            ("tcp.urg", 18, 2, Fmt::Dec),
        ],
        17 => &[
            ("udp.sport", 0, 2, Fmt::Dec),
            ("udp.dport", 2, 2, Fmt::Dec),
            ("udp.len", 4, 2, Fmt::Dec),
            ("udp.csum", 6, 2, Fmt::Hex),
        ],
        1 => &[
            ("icmp.type", 0, 1, Fmt::Dec),
            ("icmp.code", 1, 1, Fmt::Dec),
            ("icmp.csum", 2, 2, Fmt::Hex),
            ("icmp.rest", 4, 4, Fmt::Hex),
        ],
        _ => &[],
    };
    let mut end = l4;
    for &(name, off, len, fmt) in fields {
        v.push((name, l4 + off, len, fmt));
        end = l4 + off + len;
    }
    (v, end)
}

fn show(b: &[u8], fmt: Fmt) -> String {
    match fmt {
        Fmt::Mac if b.len() == 6 => MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]]).to_string(),
        Fmt::Ip if b.len() == 4 => Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
        Fmt::Dec if b.len() <= 8 => b
            .iter()
            .fold(0u64, |a, &x| (a << 8) | u64::from(x))
            .to_string(),
        _ => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("0x{hex}")
        }
    }
}

/// The fields that differ between `input` and `output`, named by `input`'s headers. Bytes
/// beyond the named headers are compared as `payload`; a change of length is `frame.len`.
pub fn rewrite(input: &[u8], output: &[u8]) -> Vec<Change> {
    let (fields, payload) = layout(input);
    let mut out = Vec::new();
    for (name, off, len, fmt) in fields {
        let (Some(a), Some(b)) = (input.get(off..off + len), output.get(off..off + len)) else {
            continue;
        };
        if a != b {
            out.push(Change {
                field: name.into(),
                from: show(a, fmt),
                to: show(b, fmt),
            });
        }
    }
    let (a, b) = (
        input.get(payload..).unwrap_or(&[]),
        output.get(payload..).unwrap_or(&[]),
    );
    let differ: Vec<usize> = a
        .iter()
        .zip(b)
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i)
        .collect();
    if let (Some(&lo), Some(&hi)) = (differ.first(), differ.last()) {
        out.push(Change {
            field: "payload".into(),
            from: format!("{} bytes differ", differ.len()),
            to: format!("at payload bytes {lo}..={hi}"),
        });
    }
    if input.len() != output.len() {
        out.push(Change {
            field: "frame.len".into(),
            from: input.len().to_string(),
            to: output.len().to_string(),
        });
    }
    out
}
