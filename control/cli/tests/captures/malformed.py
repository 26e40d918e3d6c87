#!/usr/bin/env python3
"""Sends, from a pod's eth0 (run it in the pod's network namespace as root), one frame of each
kind the dataplane must drop or answer: `malformed.py GATEWAY_MAC DST_IP SRC_IP`. Used to make
malformed.pcap; the replay tests do not run it."""
import socket
import struct
import sys
import time


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src, dst, proto, payload, ttl=64, ihl=5, total=None, fix_csum=True):
    total = 20 + len(payload) if total is None else total
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 0x1234, 0x4000, ttl, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    c = csum(h) if fix_csum else (csum(h) ^ 0x5555)
    return h[:10] + struct.pack("!H", c) + h[12:] + payload


def udp(sport, dport, data):
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def main():
    gw = bytes.fromhex(sys.argv[1].replace(":", ""))
    dst = sys.argv[2]
    me = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
    src = sys.argv[3]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("eth0", 0))
    eth = lambda d, t=0x0800: d + me + struct.pack("!H", t)
    frames = [
        # TTL 1: answered with ICMP time exceeded.
        eth(gw) + ipv4(src, dst, 17, udp(40001, 7, b"ttl one"), ttl=1),
        # A bad IPv4 header checksum.
        eth(gw) + ipv4(src, dst, 17, udp(40002, 7, b"bad csum"), fix_csum=False),
        # Total length beyond the frame.
        eth(gw) + ipv4(src, dst, 17, udp(40003, 7, b"short"), total=200),
        # IHL 4.
        eth(gw) + ipv4(src, dst, 17, udp(40004, 7, b"ihl four"), ihl=4),
        # Only 6 bytes of an IPv4 header.
        eth(gw) + ipv4(src, dst, 17, b"")[:6],
        # An EtherType the dataplane does not handle (IEEE local experimental).
        eth(gw, 0x88B5) + b"local experimental payload",
        # IPv6 (not handled yet).
        eth(gw, 0x86DD) + bytes([0x60, 0, 0, 0, 0, 8, 17, 64]) + bytes(32) + udp(1, 2, b""),
        # Not addressed to the gateway's MAC.
        eth(b"\x02\x00\x00\x00\x00\x99") + ipv4(src, dst, 17, udp(40005, 7, b"wrong mac")),
        # No route: an address no pod has.
        eth(gw) + ipv4(src, "10.200.0.99", 17, udp(40006, 7, b"nobody")),
        # ARP for an address that is not the gateway's.
        eth(b"\xff" * 6, 0x0806) + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, me,
                                                socket.inet_aton(src), bytes(6),
                                                socket.inet_aton("10.200.0.77")),
    ]
    for f in frames:
        s.send(f)
        time.sleep(0.01)


main()
