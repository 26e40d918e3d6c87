//! The Service annotations Xylem reads: its own `lb.xylem.io/*` and Cilium's
//! `service.cilium.io/{global,shared,affinity}`. Each parser returns the offending annotation's
//! key with the reason, so the caller names `metadata.annotations.<key>`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::{CiliumAffinity, CiliumAnnotations, HealthCheck, HealthCheckKind};

/// Xylem's annotation prefix; an unknown key under it is rejected as a likely typo.
pub const XYLEM_PREFIX: &str = "lb.xylem.io/";
/// Backend weights: `"10.200.0.12=2,10.200.0.13=3"` (0-65535; default 1).
pub const ANNOTATION_WEIGHTS: &str = "lb.xylem.io/weights";
/// Backend addresses that take no new connections: `"10.200.0.12,10.200.0.13"`.
pub const ANNOTATION_MAINTENANCE: &str = "lb.xylem.io/maintenance";
/// The active health check: `tcp`, `http` (GET `/`, expect 200), `http:/path` (expect 200) or
/// `http:/path:status`.
pub const ANNOTATION_HEALTH_CHECK: &str = "lb.xylem.io/health-check";
/// Time between probes: `500ms`, `5s`, `1m`, or a number of seconds (default 5s).
pub const ANNOTATION_HEALTH_INTERVAL: &str = "lb.xylem.io/health-interval";
/// Probe timeout, same format, at most the interval (default 1s).
pub const ANNOTATION_HEALTH_TIMEOUT: &str = "lb.xylem.io/health-timeout";
/// Consecutive successes to bring a backend up, 1-100 (default 2).
pub const ANNOTATION_HEALTH_RISE: &str = "lb.xylem.io/health-rise";
/// Consecutive failures to take a backend down, 1-100 (default 3).
pub const ANNOTATION_HEALTH_FALL: &str = "lb.xylem.io/health-fall";
/// Cilium cluster mesh: the service is global (`true`/`false`).
pub const ANNOTATION_CILIUM_GLOBAL: &str = "service.cilium.io/global";
/// Cilium cluster mesh: this cluster shares its backends (`true`/`false`).
pub const ANNOTATION_CILIUM_SHARED: &str = "service.cilium.io/shared";
/// Cilium cluster mesh: `local`, `remote` or `none`.
pub const ANNOTATION_CILIUM_AFFINITY: &str = "service.cilium.io/affinity";

/// Default probe interval: 5 s, between Kubernetes' probe period (10 s) and HAProxy's `inter`
/// (2 s).
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 5_000;
/// Default probe timeout: 1 s, as Kubernetes' `timeoutSeconds`.
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 1_000;
/// Default rise: 2, as HAProxy.
pub const DEFAULT_HEALTH_RISE: u32 = 2;
/// Default fall: 3, as HAProxy and Kubernetes' `failureThreshold`.
pub const DEFAULT_HEALTH_FALL: u32 = 3;

const XYLEM_KEYS: &[&str] = &[
    ANNOTATION_WEIGHTS,
    ANNOTATION_MAINTENANCE,
    ANNOTATION_HEALTH_CHECK,
    ANNOTATION_HEALTH_INTERVAL,
    ANNOTATION_HEALTH_TIMEOUT,
    ANNOTATION_HEALTH_RISE,
    ANNOTATION_HEALTH_FALL,
];

/// `(annotation key, why)`.
pub(crate) type AnnErr = (&'static str, String);

/// Everything the annotations say.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub weights: BTreeMap<Ipv4Addr, u16>,
    pub maintenance: BTreeSet<Ipv4Addr>,
    pub health_check: Option<HealthCheck>,
    pub cilium: CiliumAnnotations,
}

/// Validates and parses the annotations Xylem reads; others are left alone.
pub(crate) fn parse(ann: &BTreeMap<String, String>) -> Result<Parsed, (String, String)> {
    for k in ann.keys() {
        if k.starts_with(XYLEM_PREFIX) && !XYLEM_KEYS.contains(&k.as_str()) {
            return Err((
                k.clone(),
                format!(
                    "unknown Xylem annotation: expected one of {}",
                    XYLEM_KEYS.join(", ")
                ),
            ));
        }
    }
    inner(ann).map_err(|(k, why)| (k.to_owned(), why))
}

fn inner(ann: &BTreeMap<String, String>) -> Result<Parsed, AnnErr> {
    let get = |k: &str| ann.get(k).map(|v| v.trim());
    let mut out = Parsed::default();
    if let Some(v) = get(ANNOTATION_WEIGHTS) {
        out.weights = weights(v).map_err(|why| (ANNOTATION_WEIGHTS, why))?;
    }
    if let Some(v) = get(ANNOTATION_MAINTENANCE) {
        out.maintenance = maintenance(v).map_err(|why| (ANNOTATION_MAINTENANCE, why))?;
    }
    out.health_check = health(&get)?;
    let boolean = |k: &'static str| -> Result<Option<bool>, AnnErr> {
        match get(k) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err((
                k,
                format!("{v:?} is not a boolean: write \"true\" or \"false\""),
            )),
        }
    };
    out.cilium.global = boolean(ANNOTATION_CILIUM_GLOBAL)?;
    out.cilium.shared = boolean(ANNOTATION_CILIUM_SHARED)?;
    out.cilium.affinity = match get(ANNOTATION_CILIUM_AFFINITY) {
        None => None,
        Some(v) => Some(match v.to_ascii_lowercase().as_str() {
            "local" => CiliumAffinity::Local,
            "remote" => CiliumAffinity::Remote,
            "none" => CiliumAffinity::None,
            _ => {
                return Err((
                    ANNOTATION_CILIUM_AFFINITY,
                    format!("{v:?}: expected local, remote or none"),
                ));
            }
        }),
    };
    Ok(out)
}

fn addr(s: &str) -> Result<Ipv4Addr, String> {
    s.parse().map_err(|_| {
        format!("{s:?} is not an IPv4 address (IPv6 is not supported yet); write like 10.200.0.12")
    })
}

fn items(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn weights(v: &str) -> Result<BTreeMap<Ipv4Addr, u16>, String> {
    let mut out = BTreeMap::new();
    for item in items(v) {
        let Some((a, w)) = item.split_once('=') else {
            return Err(format!(
                "{item:?} is not ADDRESS=WEIGHT; write like \"10.200.0.12=2,10.200.0.13=3\""
            ));
        };
        let ip = addr(a.trim())?;
        let w: u16 = w
            .trim()
            .parse()
            .map_err(|_| format!("weight {:?} of {ip} is not a number 0-65535", w.trim()))?;
        if out.insert(ip, w).is_some() {
            return Err(format!(
                "{ip} is listed twice; give each address one weight"
            ));
        }
    }
    Ok(out)
}

fn maintenance(v: &str) -> Result<BTreeSet<Ipv4Addr>, String> {
    let mut out = BTreeSet::new();
    for item in items(v) {
        let ip = addr(item)?;
        if !out.insert(ip) {
            return Err(format!("{ip} is listed twice"));
        }
    }
    Ok(out)
}

fn health<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<Option<HealthCheck>, AnnErr> {
    let Some(check) = get(ANNOTATION_HEALTH_CHECK) else {
        for k in [
            ANNOTATION_HEALTH_INTERVAL,
            ANNOTATION_HEALTH_TIMEOUT,
            ANNOTATION_HEALTH_RISE,
            ANNOTATION_HEALTH_FALL,
        ] {
            if get(k).is_some() {
                return Err((
                    k,
                    format!(
                        "has no effect without {ANNOTATION_HEALTH_CHECK}: add it (tcp or \
                         http:/path:status) or remove this annotation"
                    ),
                ));
            }
        }
        return Ok(None);
    };
    let kind = health_kind(check).map_err(|why| (ANNOTATION_HEALTH_CHECK, why))?;
    let dur = |k: &'static str, default: u64| -> Result<u64, AnnErr> {
        get(k).map_or(Ok(default), |v| duration_ms(v).map_err(|why| (k, why)))
    };
    let count = |k: &'static str, default: u32| -> Result<u32, AnnErr> {
        match get(k) {
            None => Ok(default),
            Some(v) => match v.parse::<u32>() {
                Ok(n @ 1..=100) => Ok(n),
                _ => Err((k, format!("{v:?}: expected a count 1-100"))),
            },
        }
    };
    let interval_ms = dur(ANNOTATION_HEALTH_INTERVAL, DEFAULT_HEALTH_INTERVAL_MS)?;
    let timeout_ms = dur(ANNOTATION_HEALTH_TIMEOUT, DEFAULT_HEALTH_TIMEOUT_MS)?;
    if timeout_ms > interval_ms {
        return Err((
            ANNOTATION_HEALTH_TIMEOUT,
            format!(
                "{timeout_ms}ms is longer than the interval ({interval_ms}ms); shorten it or \
                 lengthen {ANNOTATION_HEALTH_INTERVAL}"
            ),
        ));
    }
    Ok(Some(HealthCheck {
        kind,
        interval_ms,
        timeout_ms,
        rise: count(ANNOTATION_HEALTH_RISE, DEFAULT_HEALTH_RISE)?,
        fall: count(ANNOTATION_HEALTH_FALL, DEFAULT_HEALTH_FALL)?,
    }))
}

fn health_kind(v: &str) -> Result<HealthCheckKind, String> {
    const EXPECTED: &str = "expected tcp, http, http:/path or http:/path:status";
    if v == "tcp" {
        return Ok(HealthCheckKind::Tcp);
    }
    if v == "http" {
        return Ok(HealthCheckKind::Http {
            path: "/".into(),
            expect_status: 200,
        });
    }
    let Some(rest) = v.strip_prefix("http:") else {
        return Err(format!("{v:?}: {EXPECTED}"));
    };
    let (path, status) = match rest.rsplit_once(':') {
        Some((p, s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            match s.parse::<u16>() {
                Ok(n @ 100..=599) => (p, n),
                _ => return Err(format!("{v:?}: status {s} is not an HTTP status 100-599")),
            }
        }
        _ => (rest, 200),
    };
    if !path.starts_with('/') || path.chars().any(char::is_whitespace) {
        return Err(format!(
            "{v:?}: the path must start with / and hold no spaces; {EXPECTED}"
        ));
    }
    Ok(HealthCheckKind::Http {
        path: path.into(),
        expect_status: status,
    })
}

/// `500ms`, `5s`, `1m`, or a bare number of seconds; 1 ms to 1 hour.
fn duration_ms(v: &str) -> Result<u64, String> {
    let (num, mul) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000)
    } else {
        (v, 1_000)
    };
    match num.trim().parse::<u64>() {
        Ok(n) if n > 0 && n.saturating_mul(mul) <= 3_600_000 => Ok(n * mul),
        _ => Err(format!(
            "{v:?}: expected a duration from 1ms to 1h like 500ms, 5s or 1m"
        )),
    }
}
