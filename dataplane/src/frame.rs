//! A frame being decided: a mutable view of one buffer (a UMEM frame, or a test's array), with
//! room in front of the packet for headers to be prepended.
//!
//! The I/O backends build a [`Frame`] around the whole writable area of a descriptor's buffer
//! and hand it to the pipeline; wherever the pipeline leaves the packet's first byte and its
//! length becomes the descriptor's address and length. Prepending outer headers (ESP tunnel
//! mode: Ethernet + IPv4 + ESP + IV in front of the packet) writes into the headroom and moves
//! the packet's first byte back, instead of moving the packet; stripping them (decapsulation)
//! moves it forward.
//!
//! Every accessor works relative to the packet's first byte, so code that never prepends does
//! not see the headroom at all. The frame knows nothing of descriptors or rings: keeping the
//! head position with the descriptor is the backend's job (see [`crate::io::Backend::with_frame`]).

/// A frame being processed: a mutable view of a buffer.
///
/// ```text
/// buf: [ headroom (head bytes) | packet (len bytes) | tailroom ]
///        ^ buf[0]               ^ buf[head]
/// ```
///
/// Invariant, established by the constructors and kept by every method: `head + len <=
/// buf.len()`. The accessors rely on it and never check bounds again, so none of them can
/// panic.
#[derive(Debug)]
pub struct Frame<'a> {
    buf: &'a mut [u8],
    /// Offset in `buf` of the packet's first byte: the headroom.
    head: usize,
    /// Packet length.
    len: usize,
}

impl<'a> Frame<'a> {
    /// A frame of `len` bytes at the start of `buf`, without headroom; `len` is clamped to
    /// `buf.len()`.
    #[inline]
    pub fn new(buf: &'a mut [u8], len: usize) -> Self {
        Self::with_headroom(buf, 0, len)
    }

    /// A frame whose packet starts `headroom` bytes into `buf` and is `len` bytes long.
    /// `headroom` is clamped to `buf.len()`, then `len` to what is left after it.
    #[inline]
    pub fn with_headroom(buf: &'a mut [u8], headroom: usize, len: usize) -> Self {
        let head = headroom.min(buf.len());
        let len = len.min(buf.len() - head);
        Self { buf, head, len }
    }

    /// The frame's bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        debug_assert!(self.head + self.len <= self.buf.len());
        // SAFETY: `head + len <= buf.len()` is the type's invariant (see the type's doc), so
        // the range is inside `buf`.
        unsafe { self.buf.get_unchecked(self.head..self.head + self.len) }
    }

    /// The frame's bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        debug_assert!(self.head + self.len <= self.buf.len());
        // SAFETY: as in `data`.
        unsafe { self.buf.get_unchecked_mut(self.head..self.head + self.len) }
    }

    /// The frame's length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame has no bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The largest length the frame can grow to from its current first byte: the bytes from
    /// the packet's start to the end of the buffer.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.buf.len() - self.head
    }

    /// Sets the frame's length, clamped to [`Frame::capacity`]. Bytes beyond the old length keep
    /// whatever the buffer held.
    #[inline]
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.capacity());
    }

    /// The room in front of the packet: how many bytes [`Frame::prepend`] can still add.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.head
    }

    /// Grows the frame by `n` bytes at the front and returns them, to be written (they hold
    /// whatever the buffer held). Returns `None` and changes nothing when the headroom is
    /// smaller than `n`.
    #[inline]
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.head {
            return None;
        }
        // `head + len` is unchanged, so the invariant still holds.
        self.head -= n;
        self.len += n;
        // SAFETY: `head + n` is the old `head`, and the old `head <= buf.len()` by the
        // invariant, so the range is inside `buf`.
        Some(unsafe { self.buf.get_unchecked_mut(self.head..self.head + n) })
    }

    /// Removes `n` bytes from the front of the frame (they become headroom). Returns false and
    /// changes nothing when the frame is shorter than `n`.
    #[inline]
    #[must_use = "a frame shorter than the bytes to strip is left unchanged"]
    pub fn strip_front(&mut self, n: usize) -> bool {
        if n > self.len {
            return false;
        }
        // `head + len` is unchanged, so the invariant still holds.
        self.head += n;
        self.len -= n;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn new_has_no_headroom_and_clamps_the_length() {
        let mut b = buf();
        let f = Frame::new(&mut b, 100);
        assert_eq!(f.headroom(), 0);
        assert_eq!(f.len(), 32);
        assert_eq!(f.capacity(), 32);
        assert_eq!(f.data(), &buf()[..]);
    }

    #[test]
    fn with_headroom_starts_the_packet_after_it_and_clamps() {
        let mut b = buf();
        let f = Frame::with_headroom(&mut b, 8, 10);
        assert_eq!(f.headroom(), 8);
        assert_eq!(f.len(), 10);
        assert_eq!(f.capacity(), 24);
        assert_eq!(f.data(), &buf()[8..18]);

        let mut b = buf();
        let f = Frame::with_headroom(&mut b, 8, 1000);
        assert_eq!((f.headroom(), f.len()), (8, 24));

        let mut b = buf();
        let f = Frame::with_headroom(&mut b, 1000, 1000);
        assert_eq!((f.headroom(), f.len(), f.capacity()), (32, 0, 0));
        assert!(f.data().is_empty());
    }

    #[test]
    fn set_len_is_relative_to_the_packet_start() {
        let mut b = buf();
        let mut f = Frame::with_headroom(&mut b, 12, 4);
        f.set_len(100);
        assert_eq!(f.len(), 20);
        assert_eq!(f.data(), &buf()[12..]);
        f.set_len(0);
        assert!(f.is_empty());
    }

    #[test]
    fn prepend_writes_in_front_of_the_packet() {
        let mut b = buf();
        let mut f = Frame::with_headroom(&mut b, 10, 6);
        let front = f.prepend(4).expect("room for 4");
        assert_eq!(front.len(), 4);
        front.copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(f.headroom(), 6);
        assert_eq!(f.len(), 10);
        assert_eq!(f.capacity(), 26);
        assert_eq!(f.data(), &[0xaa, 0xbb, 0xcc, 0xdd, 10, 11, 12, 13, 14, 15]);
        // All of the headroom can be used, and the packet's bytes stay where they were.
        assert!(f.prepend(6).is_some());
        assert_eq!(f.headroom(), 0);
        assert_eq!(f.len(), 16);
        assert_eq!(&f.data()[10..], &[10, 11, 12, 13, 14, 15]);
    }

    #[test]
    fn prepend_beyond_the_headroom_fails_without_change() {
        let mut b = buf();
        let mut f = Frame::with_headroom(&mut b, 3, 5);
        assert!(f.prepend(4).is_none());
        assert_eq!((f.headroom(), f.len()), (3, 5));
        assert_eq!(f.data(), &buf()[3..8]);
        let mut b = buf();
        let mut f = Frame::new(&mut b, 5);
        assert!(f.prepend(1).is_none());
        assert_eq!(f.prepend(0).map(|s| s.len()), Some(0));
    }

    #[test]
    fn strip_front_turns_packet_bytes_into_headroom() {
        let mut b = buf();
        let mut f = Frame::with_headroom(&mut b, 4, 10);
        assert!(f.strip_front(3));
        assert_eq!((f.headroom(), f.len()), (7, 7));
        assert_eq!(f.data(), &buf()[7..14]);
        assert!(!f.strip_front(8), "only 7 bytes left");
        assert_eq!((f.headroom(), f.len()), (7, 7));
        assert!(f.strip_front(7));
        assert!(f.is_empty());
        assert_eq!(f.headroom(), 14);
        // What was stripped can be prepended again.
        assert_eq!(
            f.prepend(14).map(|s| s.to_vec()),
            Some(buf()[..14].to_vec())
        );
    }

    /// Random operations against a model (an offset and a length over a copy of the buffer):
    /// the view, the headroom and the capacity always agree, and nothing panics.
    #[test]
    fn random_operations_match_a_model() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let size = (next() % 64) as usize;
            let mut b: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let mut model = b.clone();
            let h0 = (next() % 80) as usize;
            let l0 = (next() % 80) as usize;
            let mut f = Frame::with_headroom(&mut b, h0, l0);
            let mut head = h0.min(size);
            let mut len = l0.min(size - head);
            for _ in 0..50 {
                let n = (next() % 24) as usize;
                match next() % 3 {
                    0 => {
                        let byte = next() as u8;
                        match f.prepend(n) {
                            Some(front) => {
                                assert!(n <= head);
                                front.fill(byte);
                                head -= n;
                                len += n;
                                model[head..head + n].fill(byte);
                            }
                            None => assert!(n > head),
                        }
                    }
                    1 => {
                        if f.strip_front(n) {
                            assert!(n <= len);
                            head += n;
                            len -= n;
                        } else {
                            assert!(n > len);
                        }
                    }
                    _ => {
                        f.set_len(n);
                        len = n.min(size - head);
                    }
                }
                assert_eq!(f.headroom(), head);
                assert_eq!(f.len(), len);
                assert_eq!(f.capacity(), size - head);
                assert_eq!(f.data(), &model[head..head + len]);
            }
        }
    }
}
