//! Frame accounting: every UMEM frame is in exactly one place at any moment.
//!
//! A worker owns a fixed set of frames (one UMEM region shared by all of its ports). Each frame
//! is always in exactly one of four places:
//!
//! | place  | who owns it | rings it may sit in |
//! |--------|-------------|---------------------|
//! | `Free` | the worker, idle in its free list | none |
//! | `Fill` | the kernel, waiting for a packet | fill ring, then RX ring |
//! | `Held` | the worker, being processed | none |
//! | `Tx`   | the kernel, being sent | TX ring, then completion ring |
//!
//! The [`Ledger`] counts frames per place; every move names where the frame comes from and goes
//! to. In debug builds it also records the place of each individual frame and asserts every
//! move, so a double free, a double submit or a frame that the kernel hands back twice stops the
//! test at the faulty line. [`Ledger::check`] verifies the totals at any time; the worker's
//! quiescence check compares them with the kernel's ring occupancy.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

/// Where a frame is. See the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Place {
    /// Idle in the worker's free list.
    Free = 0,
    /// Given to the kernel through a fill ring; comes back through an RX ring.
    Fill = 1,
    /// Held by the worker while it decides.
    Held = 2,
    /// Given to the kernel through a TX ring; comes back through a completion ring.
    Tx = 3,
}

impl Place {
    /// Every place, in order.
    pub const ALL: [Place; 4] = [Place::Free, Place::Fill, Place::Held, Place::Tx];

    /// The place's name, for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Place::Free => "free",
            Place::Fill => "fill",
            Place::Held => "held",
            Place::Tx => "tx",
        }
    }
}

/// Counts of frames per place, and (debug builds) the place of every frame.
#[derive(Clone)]
pub struct Ledger {
    total: u32,
    counts: [u32; 4],
    #[cfg(debug_assertions)]
    places: Vec<Place>,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("total", &self.total)
            .field("free", &self.count(Place::Free))
            .field("fill", &self.count(Place::Fill))
            .field("held", &self.count(Place::Held))
            .field("tx", &self.count(Place::Tx))
            .finish()
    }
}

/// A broken accounting invariant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "frame accounting broken: {detail} (counts: free {free}, fill {fill}, held {held}, tx {tx}; total {total})"
)]
pub struct LedgerError {
    /// What does not add up.
    pub detail: String,
    /// Frames free.
    pub free: u32,
    /// Frames in fill or RX rings.
    pub fill: u32,
    /// Frames held by the worker.
    pub held: u32,
    /// Frames in TX or completion rings.
    pub tx: u32,
    /// All frames.
    pub total: u32,
}

impl Ledger {
    /// A ledger of `total` frames, all free.
    pub fn new(total: u32) -> Self {
        Ledger {
            total,
            counts: [total, 0, 0, 0],
            #[cfg(debug_assertions)]
            places: vec![Place::Free; total as usize],
        }
    }

    /// Records that frame `index` moved from `from` to `to`.
    ///
    /// In debug builds this panics if the frame was not in `from`: that is a bug in the worker
    /// (or a kernel handing back a frame it was never given), and continuing would corrupt
    /// packets. In release builds only the counts are kept.
    #[inline]
    pub fn moved(&mut self, index: u32, from: Place, to: Place) {
        #[cfg(debug_assertions)]
        {
            let slot = &mut self.places[index as usize];
            assert_eq!(
                *slot, from,
                "frame {index} moved {from:?} -> {to:?} but it was {:?}",
                *slot
            );
            *slot = to;
        }
        #[cfg(not(debug_assertions))]
        let _ = index;
        self.counts[from as usize] -= 1;
        self.counts[to as usize] += 1;
    }

    /// How many frames are in `place`.
    #[inline]
    pub fn count(&self, place: Place) -> u32 {
        self.counts[place as usize]
    }

    /// All frames.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Checks that the counts add up to the total and (debug builds) agree with the per-frame
    /// record.
    pub fn check(&self) -> Result<(), LedgerError> {
        let sum: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        if sum != u64::from(self.total) {
            return Err(self.error(format!("places add up to {sum}")));
        }
        #[cfg(debug_assertions)]
        {
            let mut recount = [0u32; 4];
            for p in &self.places {
                recount[*p as usize] += 1;
            }
            if recount != self.counts {
                return Err(self.error(format!("per-frame record says {recount:?}")));
            }
        }
        Ok(())
    }

    /// Builds an error carrying the current counts.
    pub fn error(&self, detail: String) -> LedgerError {
        LedgerError {
            detail,
            free: self.count(Place::Free),
            fill: self.count(Place::Fill),
            held: self.count(Place::Held),
            tx: self.count(Place::Tx),
            total: self.total,
        }
    }
}

/// How many of a worker's frames are in each place, as the control side sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameCounts {
    /// All the worker's frames.
    pub total: u32,
    /// In its free list.
    pub free: u32,
    /// In fill and RX rings.
    pub fill: u32,
    /// Held while it decides.
    pub held: u32,
    /// In TX and completion rings.
    pub tx: u32,
}

/// A worker's [`FrameCounts`], published at the end of every batch (relaxed stores, one per
/// place) for the control side to read: where its frames went, e.g. that a removed port's
/// came back. A read between two stores may be off by the frames of one batch.
#[derive(Debug, Default)]
pub struct FrameGauges {
    places: [AtomicU32; 4],
    total: AtomicU32,
}

impl FrameGauges {
    /// Publishes `ledger`'s counts.
    #[inline]
    pub fn publish(&self, ledger: &Ledger) {
        self.total.store(ledger.total(), Ordering::Relaxed);
        for (gauge, &count) in self.places.iter().zip(&ledger.counts) {
            gauge.store(count, Ordering::Relaxed);
        }
    }

    /// The counts last published.
    pub fn read(&self) -> FrameCounts {
        let at = |p: Place| self.places[p as usize].load(Ordering::Relaxed);
        FrameCounts {
            total: self.total.load(Ordering::Relaxed),
            free: at(Place::Free),
            fill: at(Place::Fill),
            held: at(Place::Held),
            tx: at(Place::Tx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_keep_the_total() {
        let mut l = Ledger::new(4);
        l.moved(0, Place::Free, Place::Fill);
        l.moved(1, Place::Free, Place::Fill);
        l.moved(0, Place::Fill, Place::Held);
        l.moved(0, Place::Held, Place::Tx);
        assert_eq!(l.count(Place::Free), 2);
        assert_eq!(l.count(Place::Fill), 1);
        assert_eq!(l.count(Place::Tx), 1);
        l.check().unwrap();
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "frame 2 moved Held -> Free but it was Free")]
    fn double_free_is_caught() {
        let mut l = Ledger::new(4);
        l.moved(2, Place::Held, Place::Free);
    }
}
