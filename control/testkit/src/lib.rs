//! What the workspace's privileged tests share: whether a test that needs root (network
//! namespaces, XDP, AF_XDP) or another piece of the machine may run, and what happens when it
//! may not.
//!
//! Outside CI a test whose requirement is missing prints `SKIPPED <test>: <why>` past libtest's
//! output capture and returns, so a developer without root still runs everything else. Where
//! the environment says the privileged tests must run (`XYLEM_REQUIRE_PRIVILEGED` set, as the
//! test command does when it runs as root), a skip would count as a pass for a test that
//! proved nothing, so it fails instead, saying what was missing.
//!
//! It does not set anything up: each test file keeps its own namespaces, guards and helpers.

use std::io::Write as _;

/// The variable that turns a skip into a failure.
pub const REQUIRE_PRIVILEGED: &str = "XYLEM_REQUIRE_PRIVILEGED";

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether skips are failures here (see the crate documentation).
pub fn skips_fail() -> bool {
    std::env::var_os(REQUIRE_PRIVILEGED).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Says that `test` cannot run because of `reason`: prints it and returns, or panics where
/// skips are failures. Callers return right after it.
#[track_caller]
pub fn skip(test: &str, reason: &str) {
    assert!(
        !skips_fail(),
        "{test} cannot run: {reason}. {REQUIRE_PRIVILEGED} is set, so a skip is a failure \
         (the test command sets it when it runs as root)"
    );
    // Straight to stderr: libtest swallows `eprintln!` of a passing test.
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {reason}");
}

/// Whether `test` may run: true as root; otherwise [`skip`]s it and returns false.
#[track_caller]
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(test, "needs root (network namespaces, XDP, AF_XDP)");
    false
}
