#!/usr/bin/env python3
"""Writes the dns fuzz target's seed inputs (seeds/dns/*): DNS messages, each prefixed with the
target's control byte (high bit: a TCP segment payload, else one UDP message; low 4 bits: the
rcode `refuse` writes). Run it from this directory; the output is committed."""
import struct

UDP_REFUSED = 0x05
TCP_NXDOMAIN = 0x83
A, NS, CNAME, SOA, AAAA, OPT = 1, 2, 5, 6, 28, 41


def header(id_, flags, qd=1, an=0, ns=0, ar=0):
    return struct.pack("!HHHHHH", id_, flags, qd, an, ns, ar)


class Writer:
    """A message under construction, compressing names the way a server does: a suffix
    already written is replaced by a pointer to it."""

    def __init__(self, head):
        self.buf = bytearray(head)
        self.seen = {}

    def name(self, text):
        labels = [l for l in text.split(".") if l]
        for i in range(len(labels)):
            suffix = ".".join(labels[i:]).lower()
            if suffix in self.seen:
                self.buf += struct.pack("!H", 0xC000 | self.seen[suffix])
                return
            if len(self.buf) < 0x4000:
                self.seen[suffix] = len(self.buf)
            self.buf += bytes([len(labels[i])]) + labels[i].encode()
        self.buf += b"\0"

    def question(self, text, qtype=A):
        self.name(text)
        self.buf += struct.pack("!HH", qtype, 1)

    def record(self, owner, rtype, ttl, rdata, cls=1):
        self.name(owner)
        self.buf += struct.pack("!HHIH", rtype, cls, ttl, 0)
        at = len(self.buf)
        if isinstance(rdata, str):
            self.name(rdata)
        else:
            self.buf += rdata
        struct.pack_into("!H", self.buf, at - 2, len(self.buf) - at)

    def opt(self):
        # The EDNS OPT pseudo-record: root owner, payload size in the class field.
        self.buf += b"\0" + struct.pack("!HHIH", OPT, 1232, 0, 0)


def write(name, control, data):
    open("dns/" + name, "wb").write(bytes([control]) + bytes(data))


def tcp(*messages):
    return b"".join(struct.pack("!H", len(m)) + bytes(m) for m in messages)


# A query with RD, AD and an EDNS OPT record.
q = Writer(header(0x1234, 0x0120, ar=1))
q.question("www.Example.com")
q.opt()
query = q.buf
write("query", UDP_REFUSED, query)

# An answer through a CNAME chain, records shuffled, an unrelated A, an AAAA, an SOA in the
# authority section and an OPT.
w = Writer(header(0x1234, 0x8180, an=6, ns=1, ar=1))
w.question("a.domain.com")
w.record("c.cdn.net", A, 30, bytes([10, 0, 0, 1]))
w.record("x.other", A, 30, bytes([9, 9, 9, 9]))
w.record("b.cdn.net", CNAME, 300, "c.cdn.net")
w.record("c.cdn.net", AAAA, 30, bytes(15) + b"\1")
w.record("a.domain.com", CNAME, 300, "b.cdn.net")
w.record("c.cdn.net", A, 30, bytes([10, 0, 0, 2]))
w.record("cdn.net", SOA, 60, b"")
# The SOA's rdata: two names and five numbers, written in place so they compress.
at = len(w.buf)
w.name("ns.cdn.net")
w.name("hostmaster.cdn.net")
w.buf += struct.pack("!IIIII", 1, 7200, 900, 1209600, 60)
struct.pack_into("!H", w.buf, at - 2, len(w.buf) - at)
w.opt()
answer = w.buf
write("answer-cname-chain", UDP_REFUSED, answer)

# Odd bytes in a label: an uppercase letter, a dot, a space, 0xff, and an underscore label.
odd = header(7, 0x0100) + b"\x05A. \xff-\x04_tcp\x00" + struct.pack("!HH", 33, 1)
write("escaped-name", UDP_REFUSED, odd)

# Compression loops: the question's name pointing at itself; two pointers at each other.
write("compression-loop", UDP_REFUSED, header(1, 0x0100) + b"\xc0\x0c" + struct.pack("!HH", A, 1))
write("compression-mutual", UDP_REFUSED,
      header(1, 0x0100) + b"\xc0\x0e\xc0\x0c" + struct.pack("!HH", A, 1))
# A name pointing into the header, which holds no name (and which `refuse` rewrites).
write("pointer-into-header", UDP_REFUSED,
      header(1, 0x0100) + b"\x01a\xc0\x02" + struct.pack("!HH", A, 1))

# The answer cut in the middle of the last record's rdata.
write("truncated", UDP_REFUSED, answer[:len(answer) - 3])

# ANCOUNT one more than the records present.
more = bytearray(answer)
struct.pack_into("!H", more, 6, 7)
write("count-too-large", UDP_REFUSED, more)

# Two whole messages in one TCP segment, and a segment ending in half a message.
write("tcp-two-messages", TCP_NXDOMAIN, tcp(query, answer))
write("tcp-half-message", TCP_NXDOMAIN, tcp(query, answer)[:len(query) + 40])
