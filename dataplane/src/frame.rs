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

use std::marker::PhantomData;
use std::ptr::NonNull;

/// A frame being processed: a mutable view of a buffer.
///
/// ```text
/// buffer: [ headroom (head bytes) | packet (len bytes) | tailroom ]
///                                  ^ data
///                                  <------------ cap ------------->
/// ```
///
/// It is a `&mut [u8]` kept as a pointer to the packet's first byte with the room on either
/// side, so that reading the packet costs what reading a slice does (no offset to add, no
/// bounds to check) however often the pipeline asks. Invariants, established by the
/// constructors and kept by every method: `data` is `head` bytes into the buffer the frame
/// was made from, `head + cap` is that buffer's length, and `len <= cap`. The accessors rely
/// on them and never check bounds again, so none of them can panic.
pub struct Frame<'a> {
    /// The packet's first byte.
    data: NonNull<u8>,
    /// Packet length.
    len: usize,
    /// Bytes from `data` to the end of the buffer.
    cap: usize,
    /// Bytes from the start of the buffer to `data`: the headroom.
    head: usize,
    /// The frame holds the buffer's exclusive borrow for `'a`.
    _buf: PhantomData<&'a mut [u8]>,
}

// SAFETY: a `Frame` is an exclusive borrow of a byte buffer (the pointer is only ever used
// within that borrow), so it may move to or be shared with another thread exactly as the
// `&mut [u8]` it was made from may.
unsafe impl Send for Frame<'_> {}
// SAFETY: as above; `&Frame` gives only `&[u8]` access.
unsafe impl Sync for Frame<'_> {}

impl std::fmt::Debug for Frame<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("headroom", &self.head)
            .field("len", &self.len)
            .field("capacity", &self.cap)
            .finish()
    }
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
        let cap = buf.len() - head;
        // From the whole buffer, so that the pointer may move back over the headroom later.
        let start = NonNull::from(buf).cast::<u8>();
        // SAFETY: `head <= buf.len()`, so this stays inside the buffer (or one past its end).
        let data = unsafe { start.add(head) };
        Self {
            data,
            len: len.min(cap),
            cap,
            head,
            _buf: PhantomData,
        }
    }

    /// The frame's bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        debug_assert!(self.len <= self.cap);
        // SAFETY: `data` points `head` bytes into the buffer borrowed for `'a`, with `cap >=
        // len` bytes after it (the type's invariants); `&self` lends it shared.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr(), self.len) }
    }

    /// The frame's bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        debug_assert!(self.len <= self.cap);
        // SAFETY: as in `data`; `&mut self` lends it exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr(), self.len) }
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
        self.cap
    }

    /// Sets the frame's length, clamped to [`Frame::capacity`]. Bytes beyond the old length keep
    /// whatever the buffer held.
    #[inline]
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.cap);
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
        // SAFETY: `n <= head`, and `data` is `head` bytes into the buffer, so `data - n` is
        // still inside it.
        self.data = unsafe { self.data.sub(n) };
        self.head -= n;
        self.cap += n;
        self.len += n;
        // SAFETY: the `n` bytes from the new `data` are inside the buffer (they end at the old
        // `data`), borrowed exclusively through `&mut self`.
        Some(unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr(), n) })
    }

    /// Removes `n` bytes from the front of the frame (they become headroom). Returns false and
    /// changes nothing when the frame is shorter than `n`.
    #[inline]
    #[must_use = "a frame shorter than the bytes to strip is left unchanged"]
    pub fn strip_front(&mut self, n: usize) -> bool {
        if n > self.len {
            return false;
        }
        // SAFETY: `n <= len <= cap`, so `data + n` is still inside the buffer (or one past its
        // end).
        self.data = unsafe { self.data.add(n) };
        self.head += n;
        self.cap -= n;
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
