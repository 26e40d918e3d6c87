//! A frame being decided: a mutable view of one buffer (a UMEM frame, or a test's array).
//!
//! The I/O backends build a [`Frame`] around the bytes of a descriptor and hand it to the
//! pipeline; whatever length the pipeline leaves on it becomes the descriptor's length.

/// A frame being processed: a mutable view of a buffer (`buf` is the whole writable capacity
/// starting at the first byte of the Ethernet header; `len` bytes are the frame).
#[derive(Debug)]
pub struct Frame<'a> {
    buf: &'a mut [u8],
    /// Invariant: `len <= buf.len()`.
    len: usize,
}

impl<'a> Frame<'a> {
    /// A frame of `len` bytes at the start of `buf`; `len` is clamped to `buf.len()`.
    #[inline]
    pub fn new(buf: &'a mut [u8], len: usize) -> Self {
        let len = len.min(buf.len());
        Self { buf, len }
    }

    /// The frame's bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        // Cannot panic: `len <= buf.len()` is kept by `new` and `set_len`.
        &self.buf[..self.len]
    }

    /// The frame's bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        // Cannot panic: `len <= buf.len()` is kept by `new` and `set_len`.
        &mut self.buf[..self.len]
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

    /// The buffer's capacity: the largest length the frame can grow to.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Sets the frame's length, clamped to [`Frame::capacity`]. Bytes beyond the old length keep
    /// whatever the buffer held.
    #[inline]
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.buf.len());
    }
}
