//! The lock-free ESP anti-replay window (RFC 4303 §3.4.3), shared by every worker of one SA.

use core::sync::atomic::{AtomicU64, Ordering};

/// How many sequence numbers back from the highest one accepted are still accepted (once).
pub const REPLAY_WINDOW: u32 = 2048;

/// Sequence numbers per slot: each slot word is a 32-bit block tag over a 32-bit bitmap.
const BLOCK_BITS: u32 = 32;
/// Slots in the ring. Twice the window, so that a block still inside the window never shares
/// its slot with a newer block that was accepted (see [`ReplayWindow`]).
const SLOTS: usize = 2 * (REPLAY_WINDOW / BLOCK_BITS) as usize;

/// The anti-replay window of one inbound SA: the last [`REPLAY_WINDOW`] sequence numbers, each
/// accepted at most once, shared by several workers through `&self` (atomics only).
///
/// Layout: sequence number `s` belongs to block `b = s / 32`, kept in slot `b % SLOTS` as one
/// `AtomicU64` word `b << 32 | bitmap` (bit `s % 32` set: `s` was accepted). `top` is the
/// highest sequence number accepted.
///
/// Why a packet can never be accepted twice, whatever the interleaving: accepting `s` is one
/// successful compare-and-swap on its slot, from a word whose tag is `b` with bit `s % 32`
/// clear, or whose tag is older than `b`, to a word with tag `b` and that bit set. A slot's
/// tag only ever grows (a swap to a smaller tag is refused), and within one tag bits are only
/// ever set. So once `s` is accepted its slot holds tag `b` with the bit set, or a newer tag,
/// and every later attempt finds one of these and fails. Because the bitmap and its tag live in
/// one word, no worker can clear a bit another just set when it recycles a slot for a newer
/// block: recycling is that same compare-and-swap.
///
/// What a race can do is reject a valid packet: `top` is only a hint for the "too old" check
/// and is raised after the slot, so a worker may see it late or early by a few packets; and a
/// packet more than `SLOTS * 32 - 32` behind the newest block finds its slot taken. Both only
/// happen to packets at the far edge of the window.
#[derive(Debug)]
pub struct ReplayWindow {
    top: AtomicU64,
    slots: [AtomicU64; SLOTS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow::new()
    }
}

impl ReplayWindow {
    /// An empty window: every sequence number but 0 (never sent, RFC 4303 §3.3.3) is new.
    pub fn new() -> ReplayWindow {
        ReplayWindow {
            top: AtomicU64::new(0),
            slots: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The highest sequence number accepted so far (0: none).
    pub fn top(&self) -> u32 {
        self.top.load(Ordering::Acquire) as u32
    }

    fn place(seq: u32) -> (usize, u64, u64) {
        let block = u64::from(seq / BLOCK_BITS);
        let slot = (block % SLOTS as u64) as usize;
        (slot, block, 1 << (seq % BLOCK_BITS))
    }

    fn too_old(&self, seq: u32) -> bool {
        let top = self.top.load(Ordering::Acquire);
        seq == 0 || u64::from(seq) + u64::from(REPLAY_WINDOW) <= top
    }

    /// Whether `seq` may be new: not 0, not older than the window, not seen. Read-only, for the
    /// check before decryption; only [`ReplayWindow::mark`] decides.
    pub fn check(&self, seq: u32) -> bool {
        if self.too_old(seq) {
            return false;
        }
        let (slot, block, bit) = Self::place(seq);
        let word = self.slots[slot].load(Ordering::Acquire);
        let tag = word >> 32;
        tag < block || (tag == block && word & bit == 0)
    }

    /// Marks `seq` accepted, once its packet's ICV verified. `true` if this call accepted it;
    /// `false` if it was accepted before (by any worker) or is too old: drop the packet.
    pub fn mark(&self, seq: u32) -> bool {
        if self.too_old(seq) {
            return false;
        }
        let (slot, block, bit) = Self::place(seq);
        let cell = &self.slots[slot];
        let mut word = cell.load(Ordering::Acquire);
        loop {
            let tag = word >> 32;
            let new = if tag < block {
                block << 32 | bit
            } else if tag == block && word & bit == 0 {
                word | bit
            } else {
                return false;
            };
            match cell.compare_exchange_weak(word, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => word = now,
            }
        }
        self.top.fetch_max(u64::from(seq), Ordering::AcqRel);
        true
    }
}
