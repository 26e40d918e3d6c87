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
