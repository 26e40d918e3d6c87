#!/usr/bin/env python3
"""Merges classic pcap files (tcpdump -w) by timestamp into one pcapng file, one interface per
input, named as given: `merge.py OUT.pcapng pod-a=a.pcap pod-b=b.pcap ...`. Used to make the
committed captures (mergecap does the same where Wireshark is installed); the replay tests do
not run it."""
import struct
import sys


def read_pcap(path):
    data = open(path, "rb").read()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        sys.exit(f"{path}: not a pcap file")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(e + "I", data[20:24])[0]
    if linktype != 1:
        sys.exit(f"{path}: link type {linktype}, not Ethernet")
    pos, out = 24, []
    while pos + 16 <= len(data):
        sec, frac, incl, orig = struct.unpack(e + "IIII", data[pos:pos + 16])
        ns = sec * 1_000_000_000 + (frac if nano else frac * 1000)
        out.append((ns, orig, data[pos + 16:pos + 16 + incl]))
        pos += 16 + incl
    return out


def block(kind, body):
    body += b"\0" * ((4 - len(body) % 4) % 4)
    n = 12 + len(body)
    return struct.pack("<II", kind, n) + body + struct.pack("<I", n)


def option(code, value):
    return struct.pack("<HH", code, len(value)) + value + b"\0" * ((4 - len(value) % 4) % 4)


def main():
    out, inputs = sys.argv[1], sys.argv[2:]
    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    blocks, frames = [shb], []
    for i, spec in enumerate(inputs):
        name, path = spec.split("=", 1)
        # if_name, if_tsresol 9 (nanoseconds), end of options.
        opts = option(2, name.encode()) + option(9, b"\x09") + struct.pack("<HH", 0, 0)
        blocks.append(block(1, struct.pack("<HHI", 1, 0, 0) + opts))
        frames += [(ns, i, orig, d) for ns, orig, d in read_pcap(path)]
    frames.sort(key=lambda f: (f[0], f[1]))
    for ns, iface, orig, d in frames:
        blocks.append(block(6, struct.pack("<IIIII", iface, ns >> 32, ns & 0xFFFFFFFF, len(d), orig) + d))
    open(out, "wb").write(b"".join(blocks))


main()
