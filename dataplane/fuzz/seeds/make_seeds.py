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


def on_port(flags, sender):
    """The flags byte with the ingress port set to pod `sender`'s (10.0.0.2 is port 0)."""
    return flags | ((sender - 2) << 3)


def arp(sender_mac, sender_ip, target_ip, eth_src=None):
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, sender_mac, bytes(sender_ip), bytes(6),
                       bytes(target_ip))
    return eth(eth_src or sender_mac, body, 0x0806, b"\xff" * 6)


def vlan(vid, inner_ethertype, payload, src_mac, dst=GW_MAC):
    return eth(src_mac, struct.pack("!HH", vid, inner_ethertype) + payload, 0x8100, dst)


SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04
MF = 0x2000
DATAGRAM = udp(pod(7), pod(2), 5000, 1500, b"y" * 64)
GW = [10, 0, 0, 1]
VIP, VIP_EMPTY = [10, 96, 0, 10], [10, 96, 0, 11]
seeds = {
    # control: full mode + 64 spare bytes; flags: repair checksum, enforced policy, twice, and
    # the port of the sending pod.
    "tcp-syn-allowed": (0xC0, on_port(0x07, 3), eth(mac(3), ip(pod(3), pod(2), 6, tcp(pod(3), pod(2), 40000, 80, SYN)))),
    "tcp-synack-reply": (0xC0, on_port(0x07, 2), eth(mac(2), ip(pod(2), pod(3), 6, tcp(pod(2), pod(3), 80, 40000, SYN | ACK)))),
    "tcp-denied-peer": (0xC0, on_port(0x06, 4), eth(mac(4), ip(pod(4), pod(2), 6, tcp(pod(4), pod(2), 40000, 80, SYN)))),
    "tcp-fin": (0xC0, on_port(0x06, 3), eth(mac(3), ip(pod(3), pod(2), 6, tcp(pod(3), pod(2), 40000, 80, FIN | ACK)))),
    "tcp-rst": (0xC0, on_port(0x06, 3), eth(mac(3), ip(pod(3), pod(2), 6, tcp(pod(3), pod(2), 40000, 80, RST)))),
    "tcp-ssh-deny-rule": (0xC0, on_port(0x06, 5), eth(mac(5), ip(pod(5), pod(6), 6, tcp(pod(5), pod(6), 40000, 22, SYN)))),
    "udp-range": (0xC0, on_port(0x06, 7), eth(mac(7), ip(pod(7), pod(2), 17, udp(pod(7), pod(2), 5000, 1500)))),
    "udp-passthrough": (0x40, on_port(0x00, 2), eth(mac(2), ip(pod(2), pod(3), 17, udp(pod(2), pod(3), 5000, 53)))),
    "udp-to-cidr": (0xC0, on_port(0x06, 5), eth(mac(5), ip(pod(5), [192, 168, 1, 1], 17, udp(pod(5), [192, 168, 1, 1], 5000, 53)))),
    "ping-gateway": (0xC0, on_port(0x06, 5), eth(mac(5), ip(pod(5), GW, 1, icmp(8, 0, struct.pack("!HH", 7, 1) + b"ping")))),
    "ping-pod": (0xC0, on_port(0x06, 3), eth(mac(3), ip(pod(3), pod(2), 1, icmp(8, 0, struct.pack("!HH", 7, 1) + b"ping")))),
    "ttl-one": (0xC0, on_port(0x00, 3), eth(mac(3), ip(pod(3), pod(4), 17, udp(pod(3), pod(4), 5000, 53), ttl=1))),
    "ttl-one-no-room": (0x80, on_port(0x00, 3), eth(mac(3), ip(pod(3), pod(4), 17, udp(pod(3), pod(4), 5000, 53), ttl=1))),
    "first-fragment": (0xC0, on_port(0x06, 7), eth(mac(7), ip(pod(7), pod(2), 17, DATAGRAM[:40], frag=MF))),
    "later-fragment": (0xC0, on_port(0x06, 7), eth(mac(7), ip(pod(7), pod(2), 17, DATAGRAM[40:], frag=5))),
    "icmp-error-quoting-tcp": (0xC0, on_port(0x06, 2), eth(mac(2), ip(pod(2), pod(3), 1, icmp(3, 3, b"\0\0\0\0" + ip(pod(3), pod(2), 6, tcp(pod(3), pod(2), 40000, 80, SYN))[:28])))),
    "arp-request": (0x40, on_port(0x00, 3), arp(mac(3), pod(3), GW)),
    "ipv6": (0x40, on_port(0x00, 3), eth(mac(3), bytes(40), 0x86DD, bytes([0x33, 0x33, 0, 0, 0, 1]))),
    # Forged frames: a pod claiming another's address, the gateway's, another MAC, another's
    # ARP identity; frames aimed around the pipeline (VLAN 0, LLDP); an ICMP error whose outer
    # addresses are not the quoted flow's.
    "forged-source-ip": (0xC0, on_port(0x06, 4), eth(mac(4), ip(pod(2), pod(3), 17, udp(pod(2), pod(3), 80, 40000)))),
    "forged-gateway-ip": (0xC0, on_port(0x06, 4), eth(mac(4), ip(GW, pod(3), 6, tcp(GW, pod(3), 80, 40000, SYN)))),
    "forged-source-mac": (0xC0, on_port(0x06, 4), eth(mac(9), ip(pod(4), pod(3), 17, udp(pod(4), pod(3), 5000, 53)))),
    "forged-arp-sender": (0x40, on_port(0x00, 4), arp(mac(4), pod(2), GW)),
    "forged-arp-eth-source": (0x40, on_port(0x00, 4), arp(mac(4), pod(4), GW, eth_src=mac(9))),
    "vlan0-to-gateway": (0xC0, on_port(0x06, 3), vlan(0, 0x0800, ip(pod(3), GW, 17, udp(pod(3), GW, 5000, 53)), mac(3))),
    "lldp": (0x40, on_port(0x00, 3), eth(mac(3), bytes(32), 0x88CC, bytes([0x01, 0x80, 0xC2, 0, 0, 0x0E]))),
    "vlan0-broadcast": (0xC0, on_port(0x01, 2), vlan(0, 0x0800, ip(pod(2), pod(3), 17, udp(pod(2), pod(3), 5000, 53)), mac(2), b"\xff" * 6)),
    "qinq-to-gateway": (0xC0, on_port(0x01, 2), GW_MAC + mac(2) + struct.pack("!HHHHH", 0x88A8, 5, 0x8100, 0, 0x0800) + ip(pod(2), pod(3), 17, udp(pod(2), pod(3), 5000, 53))),
    "forged-icmp-error": (0xC0, on_port(0x06, 4), eth(mac(4), ip(pod(4), pod(3), 1, icmp(3, 3, b"\0\0\0\0" + ip(pod(3), pod(2), 6, tcp(pod(3), pod(2), 40000, 80, SYN))[:28])))),
    # Services: a new connection to a frontend (balanced), its backend's reply, UDP to a
    # frontend, and a connection to a frontend with no backend (a RST back).
    "service-tcp-syn": (0xC0, on_port(0x05, 3), eth(mac(3), ip(pod(3), VIP, 6, tcp(pod(3), VIP, 40000, 80, SYN)))),
    "service-backend-reply": (0xC0, on_port(0x05, 6), eth(mac(6), ip(pod(6), pod(3), 6, tcp(pod(6), pod(3), 8080, 40000, SYN | ACK)))),
    "service-udp": (0xC0, on_port(0x05, 3), eth(mac(3), ip(pod(3), VIP, 17, udp(pod(3), VIP, 5000, 53)))),
    "service-udp-first-fragment": (0xC0, on_port(0x05, 3), eth(mac(3), ip(pod(3), VIP, 17, udp(pod(3), VIP, 5000, 53, b"q" * 64)[:40], frag=MF))),
    "service-no-backend": (0xC0, on_port(0x05, 3), eth(mac(3), ip(pod(3), VIP_EMPTY, 6, tcp(pod(3), VIP_EMPTY, 40000, 80, SYN)))),
}


def dns_name(name):
    return b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"


def dns(flags, name, answers=b"", ancount=0, qdcount=1):
    return struct.pack("!HHHHHH", 0x1234, flags, qdcount, ancount, 0, 0) + dns_name(name) + b"\0\1\0\1" + answers


def rr_a(addr, ttl=30, owner=b"\xc0\x0c"):
    return owner + struct.pack("!HHIH", 1, 1, ttl, 4) + bytes(addr)


def rr_cname(target, owner=b"\xc0\x0c"):
    t = dns_name(target)
    return owner + struct.pack("!HHIH", 5, 1, 300, len(t)) + t


def tcp_dns(src, dst, sport, dport, msg):
    return tcp(src, dst, sport, dport, ACK | 0x08, struct.pack("!H", len(msg)) + msg)


# DNS: pod 9 asks pod 8 (its DNS rule allows *.domain.com and example.net); flags bit 6
# (0x40) primes the flow with the mirrored frame, so an answer is a reply.
WEB = [192, 0, 2, 80]
QUERY = dns(0x0100, "a.domain.com")
ANSWER = dns(0x8180, "a.domain.com", rr_a(WEB), 1)
seeds.update({
    "dns-query-allowed": (0xC0, on_port(0x07, 9), eth(mac(9), ip(pod(9), pod(8), 17, udp(pod(9), pod(8), 40000, 53, QUERY)))),
    "dns-query-denied": (0xC0, on_port(0x07, 9), eth(mac(9), ip(pod(9), pod(8), 17, udp(pod(9), pod(8), 40000, 53, dns(0x0100, "example.org"))))),
    "dns-query-via-service": (0xC0, on_port(0x07, 9), eth(mac(9), ip(pod(9), VIP, 17, udp(pod(9), VIP, 40000, 53, QUERY)))),
    "dns-query-tcp": (0xC0, on_port(0x07, 9), eth(mac(9), ip(pod(9), pod(8), 6, tcp_dns(pod(9), pod(8), 40000, 53, QUERY)))),
    "dns-query-tcp-oversized-prefix": (0xC0, on_port(0x07, 9), eth(mac(9), ip(pod(9), pod(8), 6, tcp(pod(9), pod(8), 40000, 53, ACK, struct.pack("!H", 900) + QUERY)))),
    "dns-query-compression-loop": (0xC0, on_port(0x07, 9), eth(mac(9), ip(pod(9), pod(8), 17, udp(pod(9), pod(8), 40000, 53, struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\0\1\0\1")))),
    "dns-answer": (0xC0, on_port(0x47, 8), eth(mac(8), ip(pod(8), pod(9), 17, udp(pod(8), pod(9), 53, 40000, ANSWER)))),
    "dns-answer-cname": (0xC0, on_port(0x47, 8), eth(mac(8), ip(pod(8), pod(9), 17, udp(pod(8), pod(9), 53, 40000, dns(0x8180, "b.domain.com", rr_cname("c.cdn.net") + rr_a(WEB, owner=dns_name("c.cdn.net")), 2))))),
    "dns-answer-tcp": (0xC0, on_port(0x47, 8), eth(mac(8), ip(pod(8), pod(9), 6, tcp_dns(pod(8), pod(9), 53, 40000, ANSWER)))),
})
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipeline")
os.makedirs(out, exist_ok=True)
for name, (control, flags, frame) in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([control, flags]) + frame)
print(f"{len(seeds)} seeds in {out}")
