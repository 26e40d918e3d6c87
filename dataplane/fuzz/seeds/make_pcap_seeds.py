#!/usr/bin/env python3
"""Writes the pcap fuzz target's seeds (seeds/pcap/*) beside the three lab captures copied from
control/tests/captures: the same frames in other encodings, and files cut or altered where the
reader must give an error. Run it from this directory; the output is committed."""
import struct

lab = open("pcap/malformed.pcap", "rb").read()
frames, pos = [], 24
while pos + 16 <= len(lab):
    sec, usec, incl, orig = struct.unpack("<IIII", lab[pos:pos + 16])
    frames.append((sec, usec, lab[pos + 16:pos + 16 + incl]))
    pos += 16 + incl


def pcap(endian, magic, link, records):
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 262144, link)
    for sec, frac, data, orig in records:
        out += struct.pack(endian + "IIII", sec, frac, len(data), orig) + data
    return out


def write(name, data):
    open("pcap/" + name, "wb").write(data)


# Big-endian, nanosecond timestamps: the UDP with TTL 1 and the answer.
write("nanosecond-big-endian.pcap",
      pcap(">", 0xA1B23C4D, 1, [(s, u * 1000, d, len(d)) for s, u, d in frames[:2]]))
write("header-only.pcap", pcap("<", 0xA1B2C3D4, 1, []))
# Linux cooked capture (tcpdump -i any): refused.
write("linux-sll.pcap", pcap("<", 0xA1B2C3D4, 113, [(s, u, d, len(d)) for s, u, d in frames[:1]]))
# A frame cut by the snap length: reported, not processed.
write("snaplen.pcap", pcap("<", 0xA1B2C3D4, 1, [(s, u, d[:30], len(d)) for s, u, d in frames[:3]]))
# Cut in the middle of a record, and of a pcapng block.
write("cut.pcap", lab[:len(lab) - 7])
ng = open("pcap/basic.pcapng", "rb").read()
write("cut.pcapng", ng[:len(ng) // 2 + 3])

# IPv4 fragments against the committed policy (pod-b accepts UDP 5353 from pod-a): a datagram to
# 5353 in three fragments (all forwarded), one to 5354 (all dropped, policy-denied), a later
# fragment with no first fragment, and one that comes before its first (both frag-no-head).
GW = bytes.fromhex("0e78796c0001")
A_MAC, A_IP = bytes.fromhex("d6d8c2f30229"), bytes([10, 200, 0, 10])
B_IP = bytes([10, 200, 0, 11])


def csum(b):
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def fragment(ident, off, more, payload):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident,
                    (off // 8) | (0x2000 if more else 0), 64, 17, 0, A_IP, B_IP)
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return GW + A_MAC + b"\x08\x00" + h + payload


def datagram(ident, dport, length):
    l4 = struct.pack("!HHHH", 40000, dport, 8 + length, 0) + bytes(i % 251 for i in range(length))
    chunks = [l4[i:i + 1480] for i in range(0, len(l4), 1480)]
    return [fragment(ident, i * 1480, i + 1 < len(chunks), c) for i, c in enumerate(chunks)]


late = datagram(0x3003, 5353, 2000)
fragments = (datagram(0x1001, 5353, 4000) + datagram(0x2002, 5354, 4000)
             + [fragment(0x4242, 1480, False, b"\x5a" * 64)] + late[1:] + late[:1])
write("fragments.pcap",
      pcap("<", 0xA1B2C3D4, 1, [(1000, i * 1000, f, len(f)) for i, f in enumerate(fragments)]))
