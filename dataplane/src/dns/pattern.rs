//! DNS name selectors, as Cilium's `matchName` and `matchPattern`.
//!
//! A selector is normalized once, when it is built: lowercased and made fully qualified with a
//! trailing dot. In a pattern, `*` matches zero or more of `[-a-z0-9_]` within one label (it
//! never crosses a dot), and `*` alone matches every name, the root `.` included. Characters
//! outside `[-a-zA-Z0-9_.*]` are refused when the selector is built, as is `*` in a name.
//!
//! [`NameSelector::matches`] is the per-message test: it takes a name as the wire layer gives
//! it (`crate::wire::dns::Name`: lowercase, dotted, fully qualified, every byte outside
//! `[-a-z0-9_]` within a label escaped as `\DDD`), allocates nothing and runs in time linear in
//! the name for patterns with one `*` per label.

/// How a [`NameSelector`] compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SelectorKind {
    /// `matchName`: the name itself.
    Name,
    /// `matchPattern`: a pattern with `*`.
    Pattern,
}

/// A `matchName` or a `matchPattern`, normalized.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameSelector {
    kind: SelectorKind,
    /// Lowercase, with a trailing dot.
    text: Box<str>,
}

/// Lowercases `s` and adds the trailing dot a fully qualified name has (`""` becomes `"."`).
pub fn normalize(s: &str) -> String {
    let mut out = s.to_ascii_lowercase();
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

fn valid_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn check(s: &str, star: bool) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if let Some(c) = s
        .chars()
        .find(|&c| !(c.is_ascii() && (valid_label_byte(c as u8) || c == '.' || (star && c == '*'))))
    {
        let allowed = if star {
            "[-a-zA-Z0-9_.*]"
        } else {
            "[-a-zA-Z0-9_.]"
        };
        return Err(format!("{s:?} has {c:?}: only {allowed} may appear"));
    }
    if s != "." && (s.starts_with('.') || s.contains("..")) {
        return Err(format!("{s:?} has an empty label"));
    }
    // The limit is on the name without its optional trailing dot, which normalizing adds.
    if s.strip_suffix('.').unwrap_or(s).len() > 253 {
        return Err(format!(
            "{s:?} is longer than a DNS name can be (253 characters)"
        ));
    }
    Ok(())
}

impl NameSelector {
    /// A `matchName`; the error says what is wrong with `s`.
    pub fn name(s: &str) -> Result<Self, String> {
        if s.contains('*') {
            return Err(format!("{s:?} has '*': a wildcard belongs in matchPattern"));
        }
        check(s, false)?;
        Ok(Self {
            kind: SelectorKind::Name,
            text: normalize(s).into(),
        })
    }

    /// A `matchPattern`; the error says what is wrong with `s`.
    pub fn pattern(s: &str) -> Result<Self, String> {
        check(s, true)?;
        Ok(Self {
            kind: SelectorKind::Pattern,
            text: normalize(s).into(),
        })
    }

    /// Whether it is a `matchName` or a `matchPattern`.
    pub fn kind(&self) -> SelectorKind {
        self.kind
    }

    /// The normalized text (`a.domain.com.`, `*.domain.com.`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The field and text as a policy writes them (`matchPattern: *.domain.com.`).
    pub fn describe(&self) -> String {
        let field = match self.kind {
            SelectorKind::Name => "matchName",
            SelectorKind::Pattern => "matchPattern",
        };
        format!("{field}: {}", self.text)
    }

    /// Whether `name` (lowercase, dotted, fully qualified, as the wire layer gives it) is
    /// selected. Allocates nothing.
    pub fn matches(&self, name: &[u8]) -> bool {
        let pat = self.text.as_bytes();
        match self.kind {
            SelectorKind::Name => pat == name,
            SelectorKind::Pattern if pat == b"*." => true,
            SelectorKind::Pattern => {
                let mut p = pat.split(|&b| b == b'.');
                let mut n = name.split(|&b| b == b'.');
                loop {
                    match (p.next(), n.next()) {
                        (None, None) => return true,
                        (Some(pl), Some(nl)) if label_matches(pl, nl) => {}
                        _ => return false,
                    }
                }
            }
        }
    }
}

/// One label of a pattern against one label of a name: `*` matches any run of
/// `[-a-z0-9_]`. A name label with any other byte (an escape) matches no pattern label, since
/// pattern labels hold nothing else; within the alphabet the classic glob walk, which backs up
/// only to the last `*`, is exact.
fn label_matches(pat: &[u8], name: &[u8]) -> bool {
    if !name.iter().all(|&b| valid_label_byte(b)) {
        return false;
    }
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pat.len() && pat[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pat.len() && pat[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> NameSelector {
        NameSelector::pattern(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn name(s: &str) -> NameSelector {
        NameSelector::name(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn one_star_covers_one_label_only() {
        let p = pat("*.domain.com");
        assert_eq!(p.as_str(), "*.domain.com.");
        assert_eq!(p.kind(), SelectorKind::Pattern);
        for yes in [
            "a.domain.com.",
            "_x.domain.com.",
            "a-b.domain.com.",
            "0.domain.com.",
        ] {
            assert!(p.matches(yes.as_bytes()), "{yes}");
        }
        for no in [
            "domain.com.",
            "a.b.domain.com.",
            "a.domain.com",
            "a.domain.org.",
            "adomain.com.",
            ".",
        ] {
            assert!(!p.matches(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn star_alone_matches_every_name_and_the_root() {
        for p in [pat("*"), pat("*.")] {
            assert_eq!(p.as_str(), "*.");
            for n in [".", "com.", "a.b.c.d.example.com.", "a\\046b.com."] {
                assert!(p.matches(n.as_bytes()), "{n}");
            }
        }
    }

    #[test]
    fn root_and_trailing_dots() {
        let root = name(".");
        assert_eq!(root.as_str(), ".");
        assert!(root.matches(b"."));
        assert!(!root.matches(b"com."));
        assert!(pat(".").matches(b"."));
        assert!(!pat(".").matches(b"com."));
        let n = name("a.domain.com");
        assert_eq!(n.as_str(), "a.domain.com.");
        assert_eq!(n, name("a.domain.com."));
        assert!(n.matches(b"a.domain.com."));
        assert!(!n.matches(b"b.domain.com."));
        assert!(!n.matches(b"x.a.domain.com."));
        assert_eq!(n.describe(), "matchName: a.domain.com.");
        assert_eq!(pat("*.a.com").describe(), "matchPattern: *.a.com.");
    }

    #[test]
    fn case_is_folded_when_built() {
        let p = pat("*.Domain.COM");
        assert_eq!(p.as_str(), "*.domain.com.");
        assert!(p.matches(b"www.domain.com."));
        let n = name("A.Domain.COM");
        assert_eq!(n.as_str(), "a.domain.com.");
        assert!(n.matches(b"a.domain.com."));
        assert_eq!(n.kind(), SelectorKind::Name);
    }

    #[test]
    fn underscore_labels() {
        let n = name("_sip._tcp.example.com");
        assert!(n.matches(b"_sip._tcp.example.com."));
        let p = pat("_*._tcp.example.com");
        assert!(p.matches(b"_sip._tcp.example.com."));
        assert!(!p.matches(b"sip._tcp.example.com."));
        assert!(pat("*._tcp.example.com").matches(b"_sip._tcp.example.com."));
    }

    #[test]
    fn several_stars_and_partial_labels() {
        let p = pat("*.*.domain.com");
        assert!(p.matches(b"a.b.domain.com."));
        assert!(!p.matches(b"a.domain.com."));
        assert!(!p.matches(b"a.b.c.domain.com."));
        let p = pat("a*b.com");
        for yes in [
            "ab.com.",
            "axb.com.",
            "a-x_yb.com.",
            "abbb.com.",
            "abab.com.",
        ] {
            assert!(p.matches(yes.as_bytes()), "{yes}");
        }
        for no in ["a.com.", "b.com.", "axbx.com.", "xab.com.", "a.b.com."] {
            assert!(!p.matches(no.as_bytes()), "{no}");
        }
        let p = pat("*b*.com");
        for yes in ["b.com.", "abc.com.", "bb.com.", "xxbyy.com."] {
            assert!(p.matches(yes.as_bytes()), "{yes}");
        }
        for no in ["ac.com.", "a.b.com.", "com."] {
            assert!(!p.matches(no.as_bytes()), "{no}");
        }
        // Backing up to the last star only: the classic case where a naive walk fails.
        assert!(pat("*aab").matches(b"aaab."));
        assert!(pat("a*a*b").matches(b"aaaab."));
        assert!(!pat("a*a*b").matches(b"ab."));
    }

    #[test]
    fn escaped_bytes_never_match_a_pattern_label() {
        // A name label holding a dot (byte 46) or a space, as the wire layer writes it.
        for n in ["a\\046b.domain.com.", "a\\032b.domain.com."] {
            assert!(!pat("*.domain.com").matches(n.as_bytes()), "{n}");
            assert!(!pat("a*.domain.com").matches(n.as_bytes()), "{n}");
            assert!(!name("a.b.domain.com").matches(n.as_bytes()), "{n}");
        }
        // The escape itself is not a dot: the name has four labels, not five.
        assert!(!pat("*.*.domain.com").matches(b"a\\046b.domain.com."));
        assert!(pat("*.com").matches(b"ok.com."));
    }

    #[test]
    fn invalid_characters_are_named() {
        for (s, c) in [
            ("a/b.com", "'/'"),
            ("é.com", "'é'"),
            ("a b.com", "' '"),
            ("a\\b", "'\\\\'"),
        ] {
            for e in [NameSelector::name(s), NameSelector::pattern(s)] {
                let e = e.expect_err(s);
                assert!(e.contains(c), "{s}: {e}");
                assert!(e.contains("may appear"), "{s}: {e}");
            }
        }
        let e = NameSelector::name("*.domain.com").unwrap_err();
        assert!(e.contains("'*'") && e.contains("matchPattern"), "{e}");
        let e = NameSelector::pattern("a?.com").unwrap_err();
        assert!(e.contains("'?'") && e.contains("[-a-zA-Z0-9_.*]"), "{e}");
    }

    #[test]
    fn empty_names_and_labels_are_refused() {
        for s in ["", "a..com", ".a.com", "a.com..", ".."] {
            assert!(NameSelector::name(s).is_err(), "{s:?}");
            assert!(NameSelector::pattern(s).is_err(), "{s:?}");
        }
        assert!(NameSelector::name("").unwrap_err().contains("empty"));
        assert!(
            NameSelector::pattern("a..com")
                .unwrap_err()
                .contains("empty label")
        );
    }

    #[test]
    fn length_counts_without_the_trailing_dot() {
        let label = "a".repeat(63);
        let longest = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(longest.len(), 253);
        assert!(NameSelector::name(&longest).is_ok());
        assert!(NameSelector::name(&format!("{longest}.")).is_ok());
        let over = format!("{longest}c");
        assert!(NameSelector::name(&over).unwrap_err().contains("253"));
        assert!(NameSelector::pattern(&format!("{over}.")).is_err());
    }
}
