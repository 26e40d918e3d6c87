#!/usr/bin/env python3
"""Writes the esp fuzz target's seed inputs (seeds/esp/*): byte 0 the mode (0: open the rest,
1 or 3: seal the rest with AES-128 or AES-256 and open it again, 4: seal the rest as the peer
node and run it through the pipeline's uplink, 8: run the rest through the uplink as it is), then valid ESP packets sealed
with the target's fixed keys (SPI 0x01020304: AES-128-GCM, key and salt bytes 0..19; SPI
0x05060708: AES-256-GCM, bytes 0..35), a few damaged ones, and inner packets. Needs the
`cryptography` package. Run it from this directory; the output is committed."""
import os
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEYS = {0x01020304: bytes(range(20)), 0x05060708: bytes(range(36))}
OUT = "esp"


def ipv4(payload_len, proto=17):
    total = 20 + payload_len
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, proto, 0,
                       bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + bytes(payload_len)


def seal(spi, seq, inner, next_header=4):
    material = KEYS[spi]
    key, salt = material[:-4], material[-4:]
    pad = (4 - (len(inner) + 2) % 4) % 4
    plain = inner + bytes(range(1, pad + 1)) + bytes([pad, next_header])
    head = struct.pack("!II", spi, seq)
    iv = struct.pack("!Q", seq)
    return head + iv + AESGCM(key).encrypt(salt + iv, plain, head)


def checksum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def header(src, dst, proto, payload_len):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, 1, 0, 64, proto, 0,
                    bytes(src), bytes(dst))
    return h[:10] + struct.pack("!H", checksum(h)) + h[12:]


def udp(src, dst, payload):
    """A UDP datagram without a checksum (0: none), whole IPv4 packet."""
    u = struct.pack("!HHHH", 4000, 5001, 8 + len(payload), 0) + payload
    return header(src, dst, 17, len(u)) + u


def uplink_frame(esp):
    """`esp` from the peer node 10.199.0.12 to node 10.199.0.11, as the uplink receives it."""
    eth = bytes([0x0e, 0x78, 0x79, 0x75, 0, 1, 0x0e, 0x78, 0x79, 0x75, 0, 2, 0x08, 0x00])
    return eth + header([10, 199, 0, 12], [10, 199, 0, 11], 50, len(esp)) + esp


PEER_POD, POD = [10, 200, 1, 10], [10, 200, 0, 10]


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def main():
    os.makedirs(OUT, exist_ok=True)
    for spi, tag in ((0x01020304, "128"), (0x05060708, "256")):
        for seq, n in ((1, 0), (7, 8), (1000, 64), (0xFFFFFFFF, 1380)):
            write(f"open-aes{tag}-seq{seq}-len{n}", b"\x00" + seal(spi, seq, ipv4(n)))
        write(f"open-aes{tag}-next-header-udp", b"\x00" + seal(spi, 3, ipv4(5), 17))
        good = bytearray(seal(spi, 5, ipv4(12)))
        good[-1] ^= 1
        write(f"open-aes{tag}-bad-icv", b"\x00" + bytes(good))
        write(f"open-aes{tag}-truncated", b"\x00" + bytes(good[:35]))
        write(f"open-aes{tag}-seq0", b"\x00" + seal(spi, 0, ipv4(4)))
    write("open-unknown-spi", b"\x00" + struct.pack("!II", 0xDEADBEEF, 1) + bytes(40))
    for mode, tag in ((1, "128"), (3, "256")):
        for n in (0, 1, 3, 20, 1500):
            write(f"seal-aes{tag}-len{n}", bytes([mode]) + ipv4(max(n - 20, 0))[:n])
    write("uplink-inner-udp", b"\x04" + udp(PEER_POD, POD, b"hello"))
    write("uplink-inner-foreign-source", b"\x04" + udp([10, 200, 7, 7], POD, b"x"))
    write("uplink-inner-to-nowhere", b"\x04" + udp(PEER_POD, [10, 200, 0, 99], b"x"))
    write("uplink-frame-esp", b"\x08" + uplink_frame(seal(0x01020304, 9, udp(PEER_POD, POD, b"x"))))
    write("uplink-frame-clear", b"\x08" + bytes([0x0e, 0x78, 0x79, 0x75, 0, 1, 0x0e, 0x78, 0x79,
                                                   0x75, 0, 2, 0x08, 0x00]) + udp(PEER_POD, POD, b"x"))


if __name__ == "__main__":
    main()
