#!/usr/bin/env python3
"""Writes the pipeline fuzz target's seed inputs (seeds/pipeline/*): real frames against the
target's tables (gateway 02:00:00:00:00:01 / 10.0.0.1, pods 10.0.0.2..=9), each prefixed with
the target's two control bytes. Run it from this directory; the output is committed."""
import os
import struct

GW_MAC = bytes([2, 0, 0, 0, 0, 1])


def mac(i):
    return bytes([2, 0, 0, 0, 0, i])


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip(src, dst, proto, payload, ttl=64, frag=0):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, frag, ttl, proto, 0,
                    bytes(src), bytes(dst))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload


def l4_sum(src, dst, proto, seg):
    return csum(bytes(src) + bytes(dst) + struct.pack("!BBH", 0, proto, len(seg)) + seg)


def tcp(src, dst, sport, dport, flags, data=b""):
    seg = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + data
    c = l4_sum(src, dst, 6, seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def udp(src, dst, sport, dport, data=b"x"):
    seg = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    c = l4_sum(src, dst, 17, seg)
    return seg[:6] + struct.pack("!H", c) + seg[8:]


def icmp(t, code, rest):
    m = struct.pack("!BBH", t, code, 0) + rest
    return m[:2] + struct.pack("!H", csum(m)) + m[4:]


def eth(src_mac, payload, ethertype=0x0800, dst=GW_MAC):
    return dst + src_mac + struct.pack("!H", ethertype) + payload


def pod(i):
    return [10, 0, 0, i]


SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04
seeds = {
    # control: full mode + 64 spare bytes; flags: repair checksum, enforced policy, twice.
    "tcp-syn-allowed": (0xC0, 0x07, eth(mac(3), ip(pod(3), pod(2), 6, tcp(pod(3), pod(2), 40000, 80, SYN)))),
    "tcp-synack-reply": (0xC0, 0x07, eth(mac(2), ip(pod(2), pod(3), 6, tcp(pod(2), pod(3), 80, 40000, SYN | ACK)))),
    "tcp-denied-peer": (0xC0, 0x06, eth(mac(4), ip(pod(4), pod(2), 6, tcp(pod(4), pod(2), 40000, 80, SYN)))),
    "tcp-fin": (0xC0, 0x06, eth(mac(3), ip(pod(3), pod(2), 6, tcp(pod(3), pod(2), 40000, 80, FIN | ACK)))),
    "tcp-rst": (0xC0, 0x06, eth(mac(3), ip(pod(3), pod(2), 6, tcp(pod(3), pod(2), 40000, 80, RST)))),
    "tcp-ssh-deny-rule": (0xC0, 0x06, eth(mac(5), ip(pod(5), pod(6), 6, tcp(pod(5), pod(6), 40000, 22, SYN)))),
    "udp-range": (0xC0, 0x06, eth(mac(7), ip(pod(7), pod(2), 17, udp(pod(7), pod(2), 5000, 1500)))),
    "udp-passthrough": (0x40, 0x00, eth(mac(2), ip(pod(2), pod(3), 17, udp(pod(2), pod(3), 5000, 53)))),
    "udp-to-cidr": (0xC0, 0x06, eth(mac(5), ip(pod(5), [192, 168, 1, 1], 17, udp(pod(5), [192, 168, 1, 1], 5000, 53)))),
    "ping-gateway": (0xC0, 0x06, eth(mac(5), ip(pod(5), [10, 0, 0, 1], 1, icmp(8, 0, struct.pack("!HH", 7, 1) + b"ping")))),
    "ping-pod": (0xC0, 0x06, eth(mac(3), ip(pod(3), pod(2), 1, icmp(8, 0, struct.pack("!HH", 7, 1) + b"ping")))),
    "ttl-one": (0xC0, 0x00, eth(mac(3), ip(pod(3), pod(4), 17, udp(pod(3), pod(4), 5000, 53), ttl=1))),
    "ttl-one-no-room": (0x80, 0x00, eth(mac(3), ip(pod(3), pod(4), 17, udp(pod(3), pod(4), 5000, 53), ttl=1))),
    "later-fragment": (0xC0, 0x06, eth(mac(3), ip(pod(3), pod(2), 17, b"fragment-bytes", frag=0x0010))),
    # The first fragment of a datagram an allowed port takes (more fragments set), judged twice.
    "udp-first-fragment": (0xC0, 0x07, eth(mac(7), ip(pod(7), pod(2), 17, udp(pod(7), pod(2), 5000, 1500, b"x" * 64), frag=0x2000))),
    "icmp-error-quoting-tcp": (0xC0, 0x06, eth(mac(2), ip(pod(2), pod(3), 1, icmp(3, 3, b"\0\0\0\0" + ip(pod(3), pod(2), 6, tcp(pod(3), pod(2), 40000, 80, SYN))[:28])))),
    "arp-request": (0x40, 0x00, eth(mac(3), struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac(3), bytes(pod(3)), bytes(6), bytes([10, 0, 0, 1])), 0x0806, b"\xff" * 6)),
    "ipv6": (0x40, 0x00, eth(mac(3), bytes(40), 0x86DD, bytes([0x33, 0x33, 0, 0, 0, 1]))),
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipeline")
os.makedirs(out, exist_ok=True)
for name, (control, flags, frame) in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([control, flags]) + frame)
print(f"{len(seeds)} seeds in {out}")
