//! The ESP key file, in Cilium's format: one key per line,
//!
//! ```text
//! # comments and empty lines are skipped
//! 3 rfc4106(gcm(aes)) 0x0102030405060708090a0b0c0d0e0f1011121314 128
//! ```
//!
//! that is `KEYID ALGORITHM HEXKEY ICV_BITS`: a key id from 1 to 15 (the SPI), AES-GCM as
//! RFC 4106 names it, the AES key followed by its 4-byte salt in hex (20 bytes for AES-128, 36
//! for AES-256; `0x` optional) and a 128-bit ICV. The last key is the current one, which the
//! agent sends with; the earlier ones are still accepted on receipt (a rotation adds a line).
//!
//! A pure parser: the agent reads and watches the file, and keeps the keys in use when a new
//! text does not parse. Key bytes never appear in `Debug` output or in errors, so neither logs
//! nor API answers can leak them.

use crate::Error;

/// The only algorithm accepted, as the file spells it.
pub const ALGORITHM: &str = "rfc4106(gcm(aes))";
/// The only ICV length accepted, in bits.
pub const ICV_BITS: u32 = 128;
/// The highest key id (Cilium's: key ids live in 4 bits of its marks).
pub const KEY_ID_MAX: u8 = 15;

/// What to write, for error messages.
const EXAMPLE: &str = "write `KEYID rfc4106(gcm(aes)) HEXKEY 128`, e.g. \
                       `1 rfc4106(gcm(aes)) 0x<40 hex digits> 128`";

/// Key material: an AES key and its salt. Its `Debug` says only how long it is.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// The bytes (the AES key, then the 4-byte salt): for building the SA only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// `"AES-128-GCM"` or `"AES-256-GCM"`, by length.
    pub fn algorithm(&self) -> &'static str {
        if self.0.len() == 36 {
            "AES-256-GCM"
        } else {
            "AES-128-GCM"
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// One key of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    /// The key id, 1 to 15: the SPI of its SAs.
    pub id: u8,
    /// The AES key and salt.
    pub material: Secret,
}

/// A parsed key file: its keys in file order, each id once; the last is the current one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFile {
    keys: Vec<KeyEntry>,
}

impl KeyFile {
    /// Every key, in file order (an id repeated with the same key counts once, where it was
    /// last written).
    pub fn keys(&self) -> &[KeyEntry] {
        &self.keys
    }

    /// The key to send with: the last line's.
    pub fn current(&self) -> &KeyEntry {
        // `parse` refuses a file without keys.
        &self.keys[self.keys.len() - 1]
    }

    /// Parses the text of a key file. Errors name the line (1-based; 0 for the whole file)
    /// and the field, and say what to write instead.
    pub fn parse(text: &str) -> Result<KeyFile, Error> {
        let mut keys: Vec<KeyEntry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let entry = parse_line(line, l)?;
            if let Some(pos) = keys.iter().position(|k| k.id == entry.id) {
                if keys[pos].material != entry.material {
                    return Err(bad(
                        line,
                        "keyid",
                        format!(
                            "key id {} is listed before with another key: give the new key \
                             another id (1 to {KEY_ID_MAX}) or remove the old line",
                            entry.id
                        ),
                    ));
                }
                keys.remove(pos);
            }
            keys.push(entry);
        }
        if keys.is_empty() {
            return Err(bad(
                0,
                "keys",
                format!("the key file has no key: {EXAMPLE}"),
            ));
        }
        Ok(KeyFile { keys })
    }
}

fn bad(line: usize, field: &'static str, why: impl Into<String>) -> Error {
    Error::KeyFile {
        line,
        field,
        why: why.into(),
    }
}

fn parse_line(line: usize, l: &str) -> Result<KeyEntry, Error> {
    let fields: Vec<&str> = l.split_whitespace().collect();
    let [id, alg, hex, icv] = fields[..] else {
        return Err(bad(
            line,
            "line",
            format!("has {} fields, want 4: {EXAMPLE}", fields.len()),
        ));
    };
    let id = match id.parse::<u8>() {
        Ok(n) if (1..=KEY_ID_MAX).contains(&n) => n,
        _ => {
            return Err(bad(
                line,
                "keyid",
                format!("{id:?} is not a key id: use 1 to {KEY_ID_MAX}"),
            ));
        }
    };
    if alg != ALGORITHM {
        return Err(bad(
            line,
            "algorithm",
            format!(
                "{alg:?} is not supported: write {ALGORITHM} (AES-GCM, the only algorithm; \
                 generate a key with `dd if=/dev/urandom count=20 bs=1 | xxd -p -c 64`)"
            ),
        ));
    }
    let material = parse_hex(line, hex)?;
    if icv != ICV_BITS.to_string() {
        return Err(bad(
            line,
            "icv",
            format!("{icv:?} bits is not supported: write {ICV_BITS} (a 16-byte ICV)"),
        ));
    }
    Ok(KeyEntry { id, material })
}

/// The key's bytes. Errors never quote the text (it is the key).
fn parse_hex(line: usize, hex: &str) -> Result<Secret, Error> {
    let h = hex
        .strip_prefix("0x")
        .or_else(|| hex.strip_prefix("0X"))
        .unwrap_or(hex);
    if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(
            line,
            "key",
            "is not hexadecimal: write the key as hex digits, `0x` optional",
        ));
    }
    if !h.len().is_multiple_of(2) {
        return Err(bad(
            line,
            "key",
            format!(
                "has an odd number of hex digits ({}): write whole bytes",
                h.len()
            ),
        ));
    }
    let bytes: Vec<u8> = (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap_or(0))
        .collect();
    if bytes.len() != 20 && bytes.len() != 36 {
        return Err(bad(
            line,
            "key",
            format!(
                "is {} bytes: write 20 (an AES-128 key and a 4-byte salt, 40 hex digits) or 36 \
                 (AES-256 and a salt, 72 hex digits)",
                bytes.len()
            ),
        ));
    }
    Ok(Secret(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "0102030405060708090a0b0c0d0e0f1011121314";
    const K2: &str = "a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4";

    #[test]
    fn the_last_line_is_current_and_comments_are_skipped() {
        let long = "ab".repeat(36);
        let text = format!(
            "# keys\n\n1 rfc4106(gcm(aes)) 0x{K1} 128\n  2 rfc4106(gcm(aes)) {long} 128  \n"
        );
        let f = KeyFile::parse(&text).unwrap();
        assert_eq!(f.keys().len(), 2);
        assert_eq!(f.current().id, 2);
        assert_eq!(f.current().material.algorithm(), "AES-256-GCM");
        assert_eq!(f.keys()[0].material.algorithm(), "AES-128-GCM");
        assert_eq!(f.keys()[0].material.expose()[0], 1);
    }

    #[test]
    fn the_same_id_with_the_same_key_counts_once_where_last_written() {
        let text = format!(
            "1 rfc4106(gcm(aes)) {K1} 128\n2 rfc4106(gcm(aes)) {K2} 128\n1 rfc4106(gcm(aes)) {K1} 128\n"
        );
        let f = KeyFile::parse(&text).unwrap();
        assert_eq!(f.keys().iter().map(|k| k.id).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(f.current().id, 1);
    }

    #[test]
    fn bad_lines_name_the_line_and_field_and_never_the_key() {
        let cases = [
            ("".to_string(), "line 0: keys"),
            ("# only a comment\n".to_string(), "line 0: keys"),
            (format!("1 cbc(aes) {K1} 128"), "line 1: algorithm"),
            (format!("1 rfc4106(gcm(aes)) {K1} 96"), "line 1: icv"),
            (format!("1 rfc4106(gcm(aes)) {K1} 64"), "line 1: icv"),
            (format!("0 rfc4106(gcm(aes)) {K1} 128"), "line 1: keyid"),
            (format!("16 rfc4106(gcm(aes)) {K1} 128"), "line 1: keyid"),
            (format!("x rfc4106(gcm(aes)) {K1} 128"), "line 1: keyid"),
            (format!("1 rfc4106(gcm(aes)) {K1}z 128"), "line 1: key"),
            (format!("1 rfc4106(gcm(aes)) {K1}0 128"), "line 1: key"),
            (format!("1 rfc4106(gcm(aes)) {K1}00 128"), "line 1: key"),
            (format!("1 rfc4106(gcm(aes)) {K1}"), "line 1: line"),
            (
                format!("\n1 rfc4106(gcm(aes)) {K1} 128\n1 rfc4106(gcm(aes)) {K2} 128"),
                "line 3: keyid",
            ),
        ];
        for (text, want) in cases {
            let e = KeyFile::parse(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains(K1) && !e.contains(K2), "key leaked: {e}");
            assert!(
                e.contains("write") || e.contains("use") || e.contains("give"),
                "{e}"
            );
        }
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let f = KeyFile::parse(&format!("1 rfc4106(gcm(aes)) {K1} 128")).unwrap();
        let d = format!("{f:?}");
        assert!(!d.contains("1, 2, 3") && !d.contains("[1, 2"), "{d}");
        assert!(d.contains("20 bytes"), "{d}");
    }
}
