//! Internet checksum arithmetic: the RFC 1071 one's-complement sum and the RFC 1624 incremental
//! update. Pure functions on byte slices, no allocation.
//!
//! The sum is accumulated over native-endian 32-bit words in a `u64` and byte-swapped once at the
//! end, which RFC 1071 §2(B) shows is equivalent to summing big-endian 16-bit words ("byte order
//! independence"). All values taken and returned by this module are in host order, as read with
//! `u16::from_be_bytes` from the wire.

/// A running RFC 1071 sum. Feed it slices with [`Sum::add_bytes`]; only the last slice may have an odd
/// length (an odd slice is padded with one zero byte, which is only right at the end).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sum(u64);

impl Sum {
    /// An empty sum.
    #[inline]
    pub const fn new() -> Self {
        Sum(0)
    }

    /// Adds `data` as 16-bit words (a trailing odd byte is the high byte of a zero-padded word).
    #[inline]
    pub fn add_bytes(self, data: &[u8]) -> Self {
        let mut acc = self.0;
        let mut words = data.chunks_exact(4);
        for w in &mut words {
            // `chunks_exact(4)` yields 4-byte slices, so the conversion cannot fail.
            let w: [u8; 4] = w.try_into().unwrap_or([0; 4]);
            acc += u64::from(u32::from_ne_bytes(w));
        }
        let rest = words.remainder();
        let mut tail = [0u8; 4];
        tail[..rest.len()].copy_from_slice(rest);
        acc += u64::from(u32::from_ne_bytes(tail));
        Sum(acc)
    }

    /// Adds one 16-bit word given in host order.
    #[inline]
    pub fn add_u16(self, word: u16) -> Self {
        Sum(self.0 + u64::from(u16::from_ne_bytes(word.to_be_bytes())))
    }

    /// The folded one's-complement sum (not complemented), in host order. Never 0 unless
    /// everything added was zero.
    #[inline]
    pub fn fold(self) -> u16 {
        let mut s = self.0;
        s = (s & 0xffff_ffff) + (s >> 32);
        s = (s & 0xffff_ffff) + (s >> 32);
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        // `s` now fits in 16 bits; it is the sum in native byte order, turn it into host order.
        #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
        let ne = s as u16;
        u16::from_be_bytes(ne.to_ne_bytes())
    }

    /// The checksum to store: the complement of the folded sum.
    #[inline]
    pub fn checksum(self) -> u16 {
        !self.fold()
    }
}

/// The RFC 1071 checksum of `data` (the value to store in a checksum field that was zero while
/// summing).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    Sum::new().add_bytes(data).checksum()
}

/// Whether `data` (a header including its checksum field) verifies: its folded sum is `0xFFFF`.
#[inline]
pub fn verify(data: &[u8]) -> bool {
    Sum::new().add_bytes(data).fold() == 0xffff
}

/// The sum of the IPv4 pseudo-header of TCP/UDP (RFC 793, RFC 768): source, destination, zero,
/// protocol and L4 length.
#[inline]
pub fn ipv4_pseudo_header(src: [u8; 4], dst: [u8; 4], protocol: u8, l4_len: u16) -> Sum {
    let l = l4_len.to_be_bytes();
    let ph = [
        src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], 0, protocol, l[0], l[1],
    ];
    Sum::new().add_bytes(&ph)
}

/// RFC 1624 incremental update: the new checksum after one 16-bit word covered by checksum `hc`
/// changed from `old` to `new`. Uses equation 3, `HC' = ~(~HC + ~m + m')`, which (unlike eqn. 2)
/// gives the same result as a full recomputation, the `0x0000`/`0xFFFF` corner included.
#[inline]
pub fn update_u16(hc: u16, old: u16, new: u16) -> u16 {
    let mut s = u32::from(!hc) + u32::from(!old) + u32::from(new);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
    let folded = s as u16;
    !folded
}

/// Changes to several 16-bit words that one checksum covers, summed, so the checksum is
/// updated once for all of them: RFC 1624 equation 3, `HC' = ~(~HC + Σ(~m + m'))`, which is
/// what updating it word by word gives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u64);

impl Delta {
    /// No change.
    pub const fn new() -> Self {
        Delta(0)
    }

    /// This and the word that changed from `old` to `new`.
    #[inline(always)]
    #[must_use]
    pub fn word(self, old: u16, new: u16) -> Self {
        Delta(self.0 + u64::from(!old) + u64::from(new))
    }

    /// Checksum `hc` after the changes.
    #[inline(always)]
    pub fn apply(self, hc: u16) -> u16 {
        let mut s = u64::from(!hc) + self.0;
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
        let folded = s as u16;
        !folded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic RNG for tests.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// The textbook definition: big-endian 16-bit words, end-around carry, one at a time.
    fn reference_fold(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in data.chunks(2) {
            let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
            s += u32::from(w);
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2 (folded).
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(Sum::new().add_bytes(&d).fold(), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    #[test]
    fn known_ipv4_header() {
        // The classic example header (Wikipedia "IPv4 header checksum"): checksum b861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert!(verify(&h));
        h[8] = 0x3f;
        assert!(!verify(&h));
    }

    #[test]
    fn matches_reference_for_all_lengths_and_split_points() {
        let mut r = XorShift(0x1234_5678_9abc_def1);
        for len in 0..200 {
            let d = r.bytes(len);
            assert_eq!(
                Sum::new().add_bytes(&d).fold(),
                reference_fold(&d),
                "len {len}"
            );
            // Even split points give the same sum as one pass.
            for split in (0..=len).step_by(2) {
                let s = Sum::new().add_bytes(&d[..split]).add_bytes(&d[split..]);
                assert_eq!(s.fold(), Sum::new().add_bytes(&d).fold());
            }
        }
        // Many 0xff bytes: exercises carries out of the 64-bit accumulator's low half.
        let d = vec![0xffu8; 65536];
        assert_eq!(Sum::new().add_bytes(&d).fold(), 0xffff);
    }

    #[test]
    fn matches_etherparse_ipv4_header_checksum() {
        let mut r = XorShift(42);
        for _ in 0..2000 {
            let h = etherparse::Ipv4Header::new(
                (r.next() % 1400) as u16,
                r.next() as u8,
                etherparse::IpNumber(r.next() as u8),
                r.next().to_be_bytes()[..4].try_into().unwrap(),
                r.next().to_be_bytes()[..4].try_into().unwrap(),
            )
            .unwrap();
            let mut bytes = h.to_bytes();
            bytes[10] = 0;
            bytes[11] = 0;
            assert_eq!(checksum(&bytes), h.calc_header_checksum());
        }
    }

    #[test]
    fn matches_etherparse_udp_and_tcp_checksums() {
        let mut r = XorShift(7);
        for i in 0..500 {
            let src: [u8; 4] = r.next().to_be_bytes()[..4].try_into().unwrap();
            let dst: [u8; 4] = r.next().to_be_bytes()[..4].try_into().unwrap();
            let payload = r.bytes(i % 97 + (i % 3) * 500);
            // UDP
            let udp = etherparse::UdpHeader {
                source_port: r.next() as u16,
                destination_port: r.next() as u16,
                length: (8 + payload.len()) as u16,
                checksum: 0,
            };
            let want = udp.calc_checksum_ipv4_raw(src, dst, &payload).unwrap();
            let mut seg = udp.to_bytes().to_vec();
            seg.extend_from_slice(&payload);
            let mut got = ipv4_pseudo_header(src, dst, 17, seg.len() as u16)
                .add_bytes(&seg)
                .checksum();
            if got == 0 {
                got = 0xffff;
            }
            assert_eq!(got, want);
            // TCP
            let tcp =
                etherparse::TcpHeader::new(r.next() as u16, r.next() as u16, r.next() as u32, 1000);
            let want = tcp.calc_checksum_ipv4_raw(src, dst, &payload).unwrap();
            let mut seg = tcp.to_bytes().to_vec();
            seg.extend_from_slice(&payload);
            let got = ipv4_pseudo_header(src, dst, 6, seg.len() as u16)
                .add_bytes(&seg)
                .checksum();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn incremental_update_equals_full_recompute() {
        let mut r = XorShift(99);
        for _ in 0..200_000 {
            let mut h = r.bytes(20);
            h[10] = 0;
            h[11] = 0;
            let c = checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            let word = r.next() as usize % 10;
            if word == 5 {
                continue; // the checksum field itself
            }
            let off = word * 2;
            let old = u16::from_be_bytes([h[off], h[off + 1]]);
            let new = r.next() as u16;
            h[off..off + 2].copy_from_slice(&new.to_be_bytes());
            let inc = update_u16(c, old, new);
            h[10] = 0;
            h[11] = 0;
            let full = checksum(&h);
            assert_eq!(inc, full, "old {old:04x} new {new:04x} hc {c:04x}");
        }
        // Construct the corner explicitly: a header whose checksum becomes 0x0000 (folded sum
        // 0xFFFF) after a TTL decrement.
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[8] = 2; // TTL 2, protocol 0
        // Choose word 1 so that the sum after TTL 2 -> 1 is 0xFFFF.
        let after_rest = u32::from(0x4500u16) + u32::from(0x0100u16);
        let w1 = (0xffff - after_rest) as u16;
        h[2..4].copy_from_slice(&w1.to_be_bytes());
        let c = checksum(&h);
        assert_eq!(c, 0xfeff);
        let inc = update_u16(c, 0x0200, 0x0100);
        assert_eq!(inc, 0x0000);
        h[8] = 1;
        assert_eq!(checksum(&h), inc);
        // And back: from checksum 0x0000 to its neighbour.
        h[10..12].copy_from_slice(&inc.to_be_bytes());
        assert!(verify(&h));
        h[8] = 0;
        h[10] = 0;
        h[11] = 0;
        assert_eq!(update_u16(0x0000, 0x0100, 0x0000), checksum(&h));
    }

    #[test]
    fn a_delta_of_several_words_is_the_word_by_word_update() {
        let mut r = XorShift(0x5eed);
        for _ in 0..10_000 {
            let hc = r.next() as u16;
            let changes: Vec<(u16, u16)> = (0..1 + r.next() % 4)
                .map(|_| (r.next() as u16, r.next() as u16))
                .collect();
            let one_by_one = changes
                .iter()
                .fold(hc, |c, &(old, new)| update_u16(c, old, new));
            let at_once = changes
                .iter()
                .fold(Delta::new(), |d, &(old, new)| d.word(old, new))
                .apply(hc);
            assert_eq!(at_once, one_by_one, "{hc:#x} {changes:?}");
        }
    }
}
