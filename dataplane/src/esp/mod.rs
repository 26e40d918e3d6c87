//! ESP tunnel mode with AES-GCM (RFC 4303 with RFC 4106), sans-IO.
//!
//! What it does:
//! - [`Key`]: one AES-128-GCM or AES-256-GCM key with its 4-byte salt and its SPI, built from
//!   the bytes of an `rfc4106(gcm(aes))` key (the AES key followed by the salt).
//! - [`SaOut`] and [`seal`]: the outbound SA (a key and the sequence counter every worker shares)
//!   and the in-place encapsulation of one inner IPv4 packet into an ESP payload (header, IV,
//!   ciphertext, trailer, 16-byte ICV). The IV is the sequence number: unique per key, as
//!   RFC 4106 §3.1 allows, so no randomness is needed on the packet path.
//! - [`KeysIn`] and [`open`]: the inbound SAs of one peer (a few SPIs, so that old keys still
//!   open packets during a rekey's grace period), each with its [`ReplayWindow`], and the
//!   in-place check, decryption and decapsulation of one ESP packet.
//!
//! The per-packet functions ([`seal`], [`open`], [`SaOut::next_seq`] and the window's methods)
//! do not allocate, lock or read a clock.
//!
//! - [`PeerSas`]: what one peer's traffic is sealed and opened with, as the tables carry it.
//!
//! What it does not do: parse key files, negotiate or rotate SAs (the agent's key manager builds
//! [`PeerSas`] from its key file), build the outer IP header (the pipeline's stages 3 and 10),
//! extended sequence numbers (an SA stops at 2^32 - 1 packets), or inner packets other than
//! IPv4 (next header 4).

mod replay;

pub use replay::{REPLAY_WINDOW, ReplayWindow};

use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// ESP header (SPI 4 + sequence number 4) plus the 8-byte IV: the room [`seal`] needs before
/// the inner packet, and where [`open`]'s plaintext starts.
pub const HEADROOM: usize = 16;
/// The ICV (GCM tag) length: always 16 bytes here (RFC 4106's 16-octet ICV).
pub const ICV_LEN: usize = 16;
/// The most [`seal`] writes after the inner packet: 3 padding bytes, pad length, next header
/// and the ICV.
pub const TAILROOM_MAX: usize = 3 + 2 + ICV_LEN;
/// The most an ESP encapsulation adds to an inner packet (outer IP header not included).
pub const OVERHEAD_MAX: usize = HEADROOM + TAILROOM_MAX;
/// The most tunnel mode adds to an inner packet on the wire: the outer IPv4 header (20 bytes,
/// no options) and [`OVERHEAD_MAX`]. A pod whose MTU is its link's MTU minus this never sends a
/// packet too big to encapsulate.
pub const TUNNEL_OVERHEAD_MAX: usize = 20 + OVERHEAD_MAX;
/// The shortest ESP packet [`open`] accepts: header, IV, the smallest 4-byte-aligned
/// ciphertext holding the 2 trailer bytes, and the ICV.
pub const MIN_LEN: usize = HEADROOM + 4 + ICV_LEN;
/// The next-header value of a tunnelled IPv4 packet (IP protocol number 4, IP-in-IP).
pub const NEXT_HEADER_IPV4: u8 = 4;
/// How many SPIs one [`KeysIn`] holds: the current key and the old ones still accepted.
pub const KEYS_IN_MAX: usize = 4;
/// The last sequence number an SA may use: without extended sequence numbers the counter
/// must not wrap (RFC 4303 §3.3.3), so the SA is spent after this one.
pub const SEQ_MAX: u32 = u32::MAX;

/// Why a key was refused or a packet was not sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EspError {
    /// The ICV did not verify: wrong key, or a packet altered on the way.
    #[error("ESP ICV check failed")]
    AuthFailed,
    /// The sequence number was seen before or is older than the replay window.
    #[error("ESP sequence number replayed or too old")]
    Replay,
    /// No receiving key has the packet's SPI.
    #[error("unknown ESP SPI")]
    UnknownSpi,
    /// The packet is shorter than the smallest ESP packet.
    #[error("ESP packet truncated")]
    Truncated,
    /// An authentic packet whose trailer is wrong: padding not 1, 2, 3, …, a pad length longer
    /// than the payload, or a next header other than IPv4.
    #[error("ESP padding or next header invalid")]
    BadPadding,
    /// The outbound SA used its last sequence number and must be replaced.
    #[error("ESP sequence numbers exhausted")]
    SeqExhausted,
    /// The buffer lacks the headroom or tailroom the encapsulation needs.
    #[error("no room in the buffer for the ESP encapsulation")]
    NoRoom,
    /// The key material has the wrong length (the text says what was given).
    #[error("bad ESP key: {0}")]
    BadKey(String),
}

impl EspError {
    /// The kebab-case name of the drop reason, as counters and logs spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            EspError::AuthFailed => "esp-auth-failed",
            EspError::Replay => "esp-replay",
            EspError::UnknownSpi => "esp-unknown-spi",
            EspError::Truncated => "esp-truncated",
            EspError::BadPadding => "esp-bad-padding",
            EspError::SeqExhausted => "esp-seq-exhausted",
            EspError::NoRoom => "esp-no-room",
            EspError::BadKey(_) => "esp-bad-key",
        }
    }
}

/// One AES-GCM key of one SA, with its salt and SPI. Cloning copies the expanded key: each
/// SA of each peer holds its own.
#[derive(Clone)]
pub struct Key {
    spi: u32,
    aead: LessSafeKey,
    salt: [u8; 4],
}

impl core::fmt::Debug for Key {
    // Keying material (the salt included) stays out of logs: SPI and algorithm only.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Key")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("algorithm", &self.algorithm_name())
            .finish_non_exhaustive()
    }
}

impl Key {
    /// A key for `spi` from `key_and_salt`: 16 + 4 bytes (AES-128-GCM) or 32 + 4 bytes
    /// (AES-256-GCM), the AES key followed by the salt, as `rfc4106(gcm(aes))` keys are written.
    pub fn new(spi: u32, key_and_salt: &[u8]) -> Result<Key, EspError> {
        let (alg, key_len) = match key_and_salt.len() {
            20 => (&AES_128_GCM, 16),
            36 => (&AES_256_GCM, 32),
            n => {
                return Err(EspError::BadKey(format!(
                    "{n} bytes, want 20 (AES-128 key + salt) or 36 (AES-256 key + salt)"
                )));
            }
        };
        let (key, salt) = key_and_salt.split_at(key_len);
        let unbound = UnboundKey::new(alg, key)
            .map_err(|_| EspError::BadKey(format!("{key_len}-byte AES key refused")))?;
        let mut s = [0; 4];
        s.copy_from_slice(salt);
        Ok(Key {
            spi,
            aead: LessSafeKey::new(unbound),
            salt: s,
        })
    }

    /// The SPI this key belongs to.
    pub fn spi(&self) -> u32 {
        self.spi
    }

    /// `"AES-128-GCM"` or `"AES-256-GCM"`.
    pub fn algorithm_name(&self) -> &'static str {
        if *self.aead.algorithm() == AES_256_GCM {
            "AES-256-GCM"
        } else {
            "AES-128-GCM"
        }
    }

    /// The GCM nonce of one packet: salt ‖ IV (RFC 4106 §4).
    fn nonce(&self, iv: [u8; 8]) -> Nonce {
        let mut n = [0; 12];
        n[..4].copy_from_slice(&self.salt);
        n[4..].copy_from_slice(&iv);
        Nonce::assume_unique_for_key(n)
    }

    /// Encrypts `data` in place and returns the tag.
    fn seal_raw(&self, iv: [u8; 8], aad: &[u8], data: &mut [u8]) -> [u8; ICV_LEN] {
        let tag = self
            .aead
            .seal_in_place_separate_tag(self.nonce(iv), Aad::from(aad), data)
            // ring only fails past GCM's 64 GiB per-message limit, far beyond any packet.
            .expect("AES-GCM seal of a packet-sized buffer");
        let mut t = [0; ICV_LEN];
        t.copy_from_slice(tag.as_ref());
        t
    }

    /// Decrypts `data` (ciphertext followed by the tag) in place; `Ok` only if the tag verifies.
    fn open_raw(&self, iv: [u8; 8], aad: &[u8], data: &mut [u8]) -> Result<(), EspError> {
        self.aead
            .open_in_place(self.nonce(iv), Aad::from(aad), data)
            .map(|_| ())
            .map_err(|_| EspError::AuthFailed)
    }
}

/// An outbound SA: its key and the sequence counter every worker sealing for it shares.
#[derive(Debug)]
pub struct SaOut {
    key: Key,
    /// The last sequence number handed out (0: none yet). It only grows; past [`SEQ_MAX`] every
    /// call fails, and a u64 cannot be pushed to wrap by any number of calls a process makes.
    last: AtomicU64,
}

impl SaOut {
    /// A new SA whose first packet gets sequence number 1.
    pub fn new(key: Key) -> SaOut {
        SaOut::starting_after(key, 0)
    }

    /// An SA that already used the sequence numbers up to `last` (the next one is `last + 1`).
    pub fn starting_after(key: Key, last: u32) -> SaOut {
        SaOut {
            key,
            last: AtomicU64::new(u64::from(last)),
        }
    }

    /// The SA's key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Takes the next sequence number, or [`EspError::SeqExhausted`] once [`SEQ_MAX`] was used.
    pub fn next_seq(&self) -> Result<u32, EspError> {
        let seq = self.last.fetch_add(1, Ordering::Relaxed) + 1;
        u32::try_from(seq).map_err(|_| EspError::SeqExhausted)
    }
}

/// Trailer padding length for an inner packet of `inner_len` bytes: the payload plus the 2
/// trailer bytes end on a 4-byte boundary (RFC 4303 §2.4).
const fn pad_len(inner_len: usize) -> usize {
    (4 - (inner_len + 2) % 4) % 4
}

/// The length of the ESP packet (header to ICV) [`seal`] makes of an `inner_len`-byte packet.
pub const fn sealed_len(inner_len: usize) -> usize {
    HEADROOM + inner_len + pad_len(inner_len) + 2 + ICV_LEN
}

/// Seals the inner IPv4 packet at `buf[HEADROOM..HEADROOM + inner_len]` in place into the ESP
/// packet `buf[..n]`, and returns `n` (= [`sealed_len`]`(inner_len)`).
///
/// Buffer contract: `buf[..HEADROOM]` is free room for the ESP header and IV (whatever it holds
/// is overwritten), and `buf` extends at least to `sealed_len(inner_len)` for the trailer and
/// ICV; else [`EspError::NoRoom`], with `buf` untouched. The caller puts the outer IP header in
/// front of `buf`. [`EspError::SeqExhausted`] when the SA is spent.
pub fn seal(sa: &SaOut, buf: &mut [u8], inner_len: usize) -> Result<usize, EspError> {
    let total = sealed_len(inner_len);
    if buf.len() < total {
        return Err(EspError::NoRoom);
    }
    let seq = sa.next_seq()?;
    let mut aad = [0; 8];
    aad[..4].copy_from_slice(&sa.key.spi.to_be_bytes());
    aad[4..].copy_from_slice(&seq.to_be_bytes());
    let iv = u64::from(seq).to_be_bytes();
    buf[..8].copy_from_slice(&aad);
    buf[8..HEADROOM].copy_from_slice(&iv);
    let pad = pad_len(inner_len);
    let mut at = HEADROOM + inner_len;
    for (i, b) in buf[at..at + pad].iter_mut().enumerate() {
        // Padding bytes are 1, 2, 3, … (RFC 4303 §2.4), which the receiver checks.
        *b = i as u8 + 1;
    }
    at += pad;
    buf[at] = pad as u8;
    buf[at + 1] = NEXT_HEADER_IPV4;
    at += 2;
    let tag = sa.key.seal_raw(iv, &aad, &mut buf[HEADROOM..at]);
    buf[at..at + ICV_LEN].copy_from_slice(&tag);
    Ok(total)
}

/// What [`open`] found in an authentic ESP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The packet's SPI.
    pub spi: u32,
    /// The packet's sequence number (now marked seen in the SA's window).
    pub seq: u32,
    /// Where the decrypted inner IPv4 packet lies in the buffer given to [`open`].
    pub inner: Range<usize>,
}

/// One inbound SA: a key and its anti-replay window. Shared (`Arc`) so that a new table
/// revision keeps the window of a key it still holds: a rebuilt window would accept every
/// packet of the last 2048 again.
#[derive(Debug)]
pub struct SaIn {
    key: Key,
    window: ReplayWindow,
}

impl SaIn {
    /// An SA for `key` with a fresh window.
    pub fn new(key: Key) -> SaIn {
        SaIn {
            key,
            window: ReplayWindow::new(),
        }
    }

    /// The SA's key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The SA's anti-replay window.
    pub fn window(&self) -> &ReplayWindow {
        &self.window
    }
}

/// The inbound SAs of one peer: up to [`KEYS_IN_MAX`] keys (the current one and old ones
/// during a rekey's grace period), each with its own [`ReplayWindow`] (one per peer and SPI).
#[derive(Debug, Default, Clone)]
pub struct KeysIn {
    sas: [Option<Arc<SaIn>>; KEYS_IN_MAX],
}

impl KeysIn {
    /// No keys: every packet is [`EspError::UnknownSpi`].
    pub fn new() -> KeysIn {
        KeysIn::default()
    }

    /// Adds `key` with a fresh window, replacing a key of the same SPI (and its window);
    /// [`EspError::NoRoom`] when [`KEYS_IN_MAX`] other SPIs are there.
    pub fn insert(&mut self, key: Key) -> Result<(), EspError> {
        self.insert_shared(Arc::new(SaIn::new(key)))
    }

    /// Adds `sa` (its window as it stands), replacing an SA of the same SPI; [`EspError::NoRoom`]
    /// when [`KEYS_IN_MAX`] other SPIs are there.
    pub fn insert_shared(&mut self, sa: Arc<SaIn>) -> Result<(), EspError> {
        let spi = sa.key.spi;
        let slot = match self
            .sas
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.key.spi == spi))
        {
            Some(i) => i,
            None => self
                .sas
                .iter()
                .position(Option::is_none)
                .ok_or(EspError::NoRoom)?,
        };
        self.sas[slot] = Some(sa);
        Ok(())
    }

    /// Removes the key of `spi` (when its grace period is over); whether there was one.
    pub fn remove(&mut self, spi: u32) -> bool {
        match self
            .sas
            .iter_mut()
            .find(|s| s.as_ref().is_some_and(|s| s.key.spi == spi))
        {
            Some(s) => {
                *s = None;
                true
            }
            None => false,
        }
    }

    /// The key and window of `spi`.
    pub fn get(&self, spi: u32) -> Option<(&Key, &ReplayWindow)> {
        self.sas
            .iter()
            .flatten()
            .find(|s| s.key.spi == spi)
            .map(|s| (&s.key, &s.window))
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.sas.iter().flatten().count()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counters of the encrypted traffic with one peer, shared by every worker (relaxed atomic
/// adds: one per packet, on a line the SA's sequence counter or window already brings in).
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// Packets sealed for the peer.
    pub tx_packets: AtomicU64,
    /// Their bytes on the wire (outer IPv4 header to ICV).
    pub tx_bytes: AtomicU64,
    /// Packets from the peer that opened.
    pub rx_packets: AtomicU64,
    /// Their bytes on the wire (outer IPv4 header to ICV).
    pub rx_bytes: AtomicU64,
}

impl PeerCounters {
    /// Counts one packet of `bytes` sent (`tx`) or received.
    #[inline]
    pub fn count(&self, tx: bool, bytes: usize) {
        let (p, b) = if tx {
            (&self.tx_packets, &self.tx_bytes)
        } else {
            (&self.rx_packets, &self.rx_bytes)
        };
        p.fetch_add(1, Ordering::Relaxed);
        b.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// What the per-packet path needs to encrypt to and decrypt from one peer. Built by the agent's
/// key manager for each table revision, from SAs and counters it keeps across revisions, so a
/// rebuild neither restarts a sequence counter nor forgets a replay window.
#[derive(Debug, Default)]
pub struct PeerSas {
    /// The SA packets to the peer are sealed with: the current key. `None`: no valid key, and
    /// the peer's traffic is dropped as `no-key`.
    pub out: Option<Arc<SaOut>>,
    /// The SAs packets from the peer may open with: the current key and those in their grace
    /// period.
    pub inbound: KeysIn,
    /// Counters.
    pub counters: Arc<PeerCounters>,
}

/// Opens the ESP packet `esp` (SPI to ICV, outer IP header removed) in place.
///
/// In order: length ([`EspError::Truncated`]), SPI ([`EspError::UnknownSpi`]), the replay
/// window before any decryption ([`EspError::Replay`]), the ICV ([`EspError::AuthFailed`]),
/// then the window is updated (RFC 4303 §3.4.3: only after the ICV verified; a concurrent
/// worker that accepted the same packet first makes this one [`EspError::Replay`]), and last
/// the trailer ([`EspError::BadPadding`]). On success `esp[opened.inner]` is the inner packet;
/// on [`EspError::AuthFailed`] or later errors the payload bytes are garbage.
pub fn open(keys: &KeysIn, esp: &mut [u8]) -> Result<Opened, EspError> {
    if esp.len() < MIN_LEN {
        return Err(EspError::Truncated);
    }
    let mut aad = [0; 8];
    aad.copy_from_slice(&esp[..8]);
    let spi = u32::from_be_bytes([aad[0], aad[1], aad[2], aad[3]]);
    let seq = u32::from_be_bytes([aad[4], aad[5], aad[6], aad[7]]);
    let (key, window) = keys.get(spi).ok_or(EspError::UnknownSpi)?;
    if !window.check(seq) {
        return Err(EspError::Replay);
    }
    let mut iv = [0; 8];
    iv.copy_from_slice(&esp[8..HEADROOM]);
    key.open_raw(iv, &aad, &mut esp[HEADROOM..])?;
    if !window.mark(seq) {
        return Err(EspError::Replay);
    }
    let plain_end = esp.len() - ICV_LEN;
    let pad = usize::from(esp[plain_end - 2]);
    if esp[plain_end - 1] != NEXT_HEADER_IPV4 || HEADROOM + pad + 2 > plain_end {
        return Err(EspError::BadPadding);
    }
    let inner_end = plain_end - 2 - pad;
    let padding = &esp[inner_end..plain_end - 2];
    if padding
        .iter()
        .enumerate()
        .any(|(i, &b)| usize::from(b) != i + 1)
    {
        return Err(EspError::BadPadding);
    }
    Ok(Opened {
        spi,
        seq,
        inner: HEADROOM..inner_end,
    })
}

#[cfg(test)]
mod tests;
