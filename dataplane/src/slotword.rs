//! The state word of a slot in the lock-free expiring tables ([`crate::learned`],
//! [`crate::fragments`]): a 16-bit generation and a 48-bit expiry in units of 2^16 ns
//! (65.5 µs, rounded up), in one `u64`. One compare-and-swap on it claims a slot (the
//! "being claimed" expiry with the next generation); a reader that sees the same generation
//! before and after reading a slot's other words knows they belong to one record.

/// Nanoseconds → expiry units: `ns >> UNIT_SHIFT`.
pub(crate) const UNIT_SHIFT: u32 = 16;
/// The expiry bits of a state word.
pub(crate) const EXP_MASK: u64 = (1 << 48) - 1;
/// Expiry units of a slot being claimed.
pub(crate) const CLAIMING: u64 = EXP_MASK;
/// The latest expiry a record can have, in units.
pub(crate) const MAX_UNITS: u64 = EXP_MASK - 1;

/// The expiry units of `word`.
#[inline]
pub(crate) fn units(word: u64) -> u64 {
    word & EXP_MASK
}

/// The generation of `word`.
#[inline]
pub(crate) fn generation(word: u64) -> u64 {
    word >> 48
}

/// The state word of `generation` (modulo 2^16) and `units`.
#[inline]
pub(crate) fn word(generation: u64, units: u64) -> u64 {
    (generation & 0xffff) << 48 | units
}

/// Whether a slot whose state word is `word` holds a record live at `now_units`
/// (`now >> UNIT_SHIFT`).
#[inline]
pub(crate) fn live(word: u64, now_units: u64) -> bool {
    let u = units(word);
    u != CLAIMING && u > now_units
}
