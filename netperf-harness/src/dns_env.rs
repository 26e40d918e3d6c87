//! The environments the `dns` subcommand measures: a `xylem lab` with a client pod and a
//! kube-dns pod running dnsmasq (and the setup's policy), or the kernel's veth path with
//! dnsmasq started in its server pod; and the conditions recorded with the results.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xylem_lab::process::{self, ChildGuard};

use crate::dns::Options;
use crate::dns_results::Setup;
use crate::dnsperf;
use crate::error::{Error, Result};
use crate::results::{PathKind, Placement};
use crate::sys;
use crate::topology::{self, KernelPath};
use crate::xylem::{self, DownGuard};

/// The name every query asks for; dnsmasq answers it from its own configuration.
pub const QUERY_NAME: &str = "a.domain.com";
/// The address dnsmasq answers for [`QUERY_NAME`]. No pod has it: the answer only has to be
/// an allowed one, so the inspected setup parses and learns it.
pub const ANSWER_IP: &str = "10.200.0.99";

/// The issue's policy: the client (`app: myService`) may send UDP 53 to kube-dns, with
/// `rules.dns` `*.domain.com`, and reach what those names resolve to on TCP 80.
pub fn inspected_policy() -> String {
    format!(
        "{}{}",
        full_policy("egress-domain-wildcard"),
        INSPECTED_TAIL
    )
}

const INSPECTED_TAIL: &str = "      rules:
        dns:
        - matchPattern: \"*.domain.com\"
  - toFQDNs:
    - matchPattern: \"*.domain.com\"
    toPorts:
    - ports:
      - port: '80'
        protocol: TCP
";

/// The baseline: the same UDP 53 egress rule without `rules.dns`, so queries take the policy
/// and conntrack path but are not parsed.
pub fn full_policy(name: &str) -> String {
    format!(
        "apiVersion: \"cilium.io/v2\"
kind: CiliumNetworkPolicy
metadata:
  name: \"{name}\"
spec:
  endpointSelector:
    matchLabels:
      app: myService
  egress:
  - toEndpoints:
    - matchLabels:
        'k8s:io.kubernetes.pod.namespace': kube-system
        k8s-app: kube-dns
    toPorts:
    - ports:
      - port: '53'
        protocol: UDP
"
    )
}

/// dnsmasq serving [`QUERY_NAME`] from `listen` only, pinned to `cpu`, without query logging
/// (which would cost more than the dataplane under load).
pub fn dnsmasq_args(listen: &str, cpu: usize) -> Vec<String> {
    let mut a: Vec<String> = vec!["taskset".into(), "-c".into(), cpu.to_string()];
    a.extend(
        [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            &format!("--listen-address={listen}"),
            "--port=53",
            "--user=root",
            "--pid-file=",
            &format!("--host-record={QUERY_NAME},{ANSWER_IP}"),
        ]
        .map(String::from),
    );
    a
}

/// The lab file: `client` first, then the DNS pod whose `run:` is dnsmasq on its own address.
pub fn lab_yaml(cpu: usize) -> String {
    format!(
        "# Written by netperf-harness dns: a client selected by the policies and a kube-dns pod running dnsmasq.\n\
         pods:\n  - {{name: client, labels: {{app: myService}}}}\n  \
         - {{name: dns, namespace: kube-system, labels: {{k8s-app: kube-dns}}, run: \"{}\"}}\n",
        dnsmasq_args("$POD_IP", cpu).join(" ")
    )
}

/// What every visit shares: options, the lab's name and the files written for it.
#[derive(Debug)]
pub struct Context {
    /// The run's options.
    pub opts: Options,
    /// Prefix of the kernel path's namespaces.
    pub prefix: String,
    /// `XYLEM_LAB` of every lab this run brings up.
    pub lab_name: String,
    /// dnsperf's data file.
    pub queries: PathBuf,
    lab_file: PathBuf,
    policy_full: PathBuf,
    policy_inspected: PathBuf,
}

fn write(path: &PathBuf, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })
}

impl Context {
    /// Writes the query file, the lab file and the policies into the output directory (kept
    /// there, so the run can be repeated by hand).
    pub fn new(opts: &Options, prefix: &str) -> Result<Context> {
        let dir = &opts.out;
        let ctx = Context {
            opts: opts.clone(),
            prefix: prefix.to_string(),
            lab_name: prefix.trim_end_matches('-').to_string(),
            queries: dir.join("queries.txt"),
            lab_file: dir.join("lab-dns.yaml"),
            policy_full: dir.join("policy-full.yaml"),
            policy_inspected: dir.join("policy-inspected.yaml"),
        };
        write(&ctx.queries, &format!("{QUERY_NAME} A\n"))?;
        write(&ctx.lab_file, &lab_yaml(opts.pod_cpu()))?;
        write(&ctx.policy_full, &full_policy("egress-dns-no-inspection"))?;
        write(&ctx.policy_inspected, &inspected_policy())?;
        Ok(ctx)
    }

    fn policy(&self, setup: Setup) -> Option<&PathBuf> {
        match setup {
            Setup::Full => Some(&self.policy_full),
            Setup::Inspected => Some(&self.policy_inspected),
            Setup::Passthrough | Setup::Veth => None,
        }
    }
}

/// A built setup: where dnsperf runs and which address it queries. Dropping it removes it.
#[derive(Debug)]
pub struct Env {
    /// The client pod's namespace.
    pub client_ns: String,
    /// The DNS pod's namespace.
    pub dns_ns: String,
    /// dnsmasq's address.
    pub server_ip: String,
    /// What the lab and the agent reported (`lab status`, trimmed `status`).
    pub status: Value,
    /// The `lab up` command line (Xylem setups).
    pub command: Option<String>,
    /// `xylem` and the lab's name, to ask the agent for its counters (Xylem setups).
    agent: Option<(PathBuf, String)>,
    /// The agent's process id (Xylem setups), for its threads' CPU time.
    agent_pid: Option<u64>,
    // Field order matters: dnsmasq stops before its namespace goes, the lab comes down last.
    _dnsmasq: Option<ChildGuard>,
    _kernel: Option<KernelPath>,
    _down: Option<DownGuard>,
}

impl Env {
    /// The counters that explain lost queries and show what the dataplane did, flattened:
    /// `drop:<reason>` and `dns:<counter>` (the agent's totals, Xylem setups only),
    /// `redirect:no_socket`, and `udp-client:<field>` / `udp-dns:<field>` (the pods' UDP MIB
    /// errors from /proc/net/snmp: a socket buffer overflowing loses a query too).
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let mut c = BTreeMap::new();
        for (role, ns) in [("client", &self.client_ns), ("dns", &self.dns_ns)] {
            let snmp = process::run(&["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]);
            for (k, v) in udp_errors(&snmp.unwrap_or_default()) {
                c.insert(format!("udp-{role}:{k}"), v);
            }
        }
        let Some((bin, lab)) = self.agent.as_ref() else {
            return c;
        };
        let bin = bin.to_string_lossy();
        let status = xylem::check(
            &[&bin, "status", "-o", "json"],
            lab,
            Duration::from_secs(30),
        )
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .unwrap_or(Value::Null);
        for (prefix, v) in [
            ("drop", &status["totals"]["drops"]),
            ("dns", &status["dns"]),
        ] {
            for (k, n) in counters(v) {
                c.insert(format!("{prefix}:{k}"), n);
            }
        }
        if let Some(n) = status["redirector"]["no_socket"].as_u64() {
            c.insert("redirect:no_socket".into(), n);
        }
        if let Some(pid) = self.agent_pid {
            for (name, ms) in thread_cpu_ms(pid) {
                c.insert(format!("agent-cpu-ms:{name}"), ms);
            }
        }
        c
    }
}

/// CPU time (user + system) of each of process `pid`'s threads, summed per thread name, ms:
/// shows how much the agent's threads besides the worker ran, and could have taken the
/// worker's or the pods' core.
fn thread_cpu_ms(pid: u64) -> BTreeMap<String, u64> {
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if let Some((name, ticks)) = stat_cpu(&stat) {
            *out.entry(name).or_default() += ticks * 1000 / hz;
        }
    }
    out
}

/// A thread's name and utime + stime (clock ticks) from its `/proc/.../stat` line.
fn stat_cpu(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    // After the name: state is field 3, utime field 14, stime field 15.
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// The error counters of the `Udp:` lines of /proc/net/snmp (a header line of names, then a
/// line of values).
pub fn udp_errors(snmp: &str) -> BTreeMap<String, u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return BTreeMap::new();
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter(|(k, _)| k.contains("Errors"))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// A JSON object of counters as a map (non-numbers skipped).
pub fn counters(v: &Value) -> BTreeMap<String, u64> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, n)| n.as_u64().map(|n| (k.clone(), n)))
                .collect()
        })
        .unwrap_or_default()
}

/// `after − before` per counter, keeping only those that grew.
pub fn grown(b: &BTreeMap<String, u64>, a: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    a.iter()
        .filter_map(|(k, n)| {
            let d = n.saturating_sub(b.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Waits until dnsmasq answers in its own namespace (no dataplane on the way).
fn wait_for_dns(ns: &str, ip: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let server = format!("@{ip}");
    loop {
        sys::check_interrupted()?;
        let args = [
            "ip", "netns", "exec", ns, "dig", &server, "+time=1", "+tries=1", QUERY_NAME,
        ];
        if let Ok(out) = process::run_timed(&args, &[], Duration::from_secs(5), sys::interrupted)
            && out.stdout.contains("status: NOERROR")
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Lab(format!(
                "dnsmasq at {ip} in {ns} never answered {QUERY_NAME} within 15 s: check that dnsmasq (Debian dnsmasq-base) runs, and read the DNS pod's run log in `xylem lab status`"
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pod(status: &Value, name: &str) -> Result<(String, String)> {
    let p = status["pods"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .ok_or_else(|| {
            Error::Lab(format!(
                "pod `{name}` missing from `xylem lab status -o json`: is the xylem binary older than the lab file format? Rebuild it"
            ))
        })?;
    let ns = p["netns"].as_str().unwrap_or_default().to_string();
    let ip = p["ip"].as_str().unwrap_or_default();
    let ip = ip.split('/').next().unwrap_or(ip).to_string();
    Ok((ns, ip))
}

/// The parts of `xylem status -o json` the report needs: each port's XDP mode and queues, each
/// worker's core.
fn trim_agent(agent: &Value) -> Value {
    let ports: Vec<Value> = agent["ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    json!({"ifname": p["ifname"], "endpoint": p["endpoint"], "xdp_mode": p["xdp_mode"], "queues": p["queues"]})
                })
                .collect()
        })
        .unwrap_or_default();
    let workers: Vec<Value> = agent["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| json!({"id": w["id"], "core": w["core"]}))
                .collect()
        })
        .unwrap_or_default();
    json!({"version": agent["version"], "ports": ports, "workers": workers})
}

fn up_xylem(setup: Setup, mode: &str, ctx: &Context) -> Result<Env> {
    let o = &ctx.opts;
    let lab = ctx.lab_name.as_str();
    let bin = o.xylem_bin.to_string_lossy().into_owned();
    let file = ctx.lab_file.to_string_lossy().into_owned();
    let (workers, batch) = (o.lab_worker_cores(), o.batch_size.to_string());
    let up = [
        bin.as_str(),
        "lab",
        "up",
        "-f",
        &file,
        "--placement",
        o.placement.name(),
        "--worker-cores",
        &workers,
        "--mode",
        mode,
        "--xdp-mode",
        &o.xdp_mode,
        "--batch-size",
        &batch,
    ];
    let down = DownGuard::new(&o.xylem_bin, lab);
    let long = Duration::from_secs(180);
    xylem::check(&up, lab, long)?;
    if let Some(policy) = ctx.policy(setup) {
        let p = policy.to_string_lossy();
        xylem::check(
            &[&bin, "policy", "import", &p],
            lab,
            Duration::from_secs(60),
        )?;
    }
    let text = xylem::check(&[&bin, "lab", "status", "-o", "json"], lab, long)?;
    let lab_status: Value = serde_json::from_str(&text).map_err(|e| {
        Error::Lab(format!(
            "`xylem lab status -o json` is not JSON ({e}): rebuild the xylem binary"
        ))
    })?;
    let (client_ns, _) = pod(&lab_status, "client")?;
    let (dns_ns, dns_ip) = pod(&lab_status, "dns")?;
    let agent = xylem::check(
        &[&bin, "status", "-o", "json"],
        lab,
        Duration::from_secs(30),
    )
    .ok()
    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    .map(|a| trim_agent(&a))
    .unwrap_or(Value::Null);
    wait_for_dns(&dns_ns, &dns_ip)?;
    Ok(Env {
        client_ns,
        dns_ns,
        server_ip: dns_ip,
        status: json!({"lab": lab_status, "agent": agent}),
        command: Some(format!("XYLEM_LAB={lab} {}", process::cmd_line(&up))),
        agent: Some((o.xylem_bin.clone(), lab.to_string())),
        agent_pid: lab_status["nodes"][0]["agent_pid"].as_u64(),
        _dnsmasq: None,
        _kernel: None,
        _down: Some(down),
    })
}

fn up_veth(ctx: &Context) -> Result<Env> {
    let cpu = ctx.opts.pod_cpu();
    let k = topology::build(PathKind::Veth, &ctx.prefix, &cpu.to_string())?;
    let (srv, ip) = (k.endpoints.server_ns.clone(), k.endpoints.server_ip.clone());
    let dm = dnsmasq_args(&ip, cpu);
    let mut args = vec!["ip", "netns", "exec", srv.as_str()];
    args.extend(dm.iter().map(String::as_str));
    let dnsmasq = process::spawn(&args)?;
    wait_for_dns(&srv, &ip)?;
    Ok(Env {
        client_ns: k.endpoints.client_ns.clone(),
        dns_ns: srv.clone(),
        server_ip: ip,
        status: json!({"kernel_path": "veth: pod veth → node namespace (ip_forward) → veth → pod", "dnsmasq": process::cmd_line(&args)}),
        command: None,
        agent: None,
        agent_pid: None,
        _dnsmasq: Some(dnsmasq),
        _kernel: Some(k),
        _down: None,
    })
}

/// Builds `setup` afresh.
pub fn up(setup: Setup, ctx: &Context) -> Result<Env> {
    match setup.mode() {
        Some(mode) => up_xylem(setup, mode, ctx),
        None => up_veth(ctx),
    }
    .map_err(|e| e.in_path(setup.name()))
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn first_line(args: &[&str]) -> Option<String> {
    process::run_timed(args, &[], Duration::from_secs(10), || false)
        .ok()
        .map(|o| format!("{}{}", o.stdout, o.stderr))
        .and_then(|t| t.lines().next().map(|l| l.trim().to_string()))
}

fn worker_text(placement: Placement) -> &'static str {
    match placement {
        Placement::Dedicated => {
            "dedicated: each worker busy-polls its AF_XDP rings on its own core"
        }
        Placement::Shared => {
            "shared: the worker runs on the pod CPU, polls for idle_spin_us after traffic, then blocks in epoll; SCHED_FIFO 1 while frames flow"
        }
    }
}

/// The machine, pinning, XDP and busy-poll settings, versions and commands; the labs'
/// statuses are added after the run by [`record_statuses`].
pub fn conditions(opts: &Options, ctx: &Context, harness_cores: &[usize], cpus: usize) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let hypervisor = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.contains(" hypervisor"));
    let help = process::run_timed(&["dnsperf", "-h"], &[], Duration::from_secs(10), || false)
        .map(|o| format!("{}{}", o.stdout, o.stderr))
        .unwrap_or_default();
    let cpu = opts.pod_cpu();
    let data = ctx.queries.to_string_lossy();
    let lat = dnsperf::args(
        "<dns-pod-ip>",
        &data,
        opts.latency_qps,
        opts.latency_s,
        1,
        10,
        true,
    );
    let step = dnsperf::args(
        "<dns-pod-ip>",
        &data,
        0,
        opts.step_s,
        opts.clients,
        opts.outstanding,
        false,
    );
    let step = process::cmd_line(&step).replace("-Q 0", "-Q <rate>");
    json!({
        "date": first_line(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "kernel": first_line(&["uname", "-r"]),
        "cpu_model": cpu_model,
        "cpus": cpus,
        "hypervisor": hypervisor,
        "isolated_cpus": read_trim("/sys/devices/system/cpu/isolated"),
        "loadavg_start": read_trim("/proc/loadavg"),
        "loadavg_end": null,
        "clocksource": read_trim("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        "cpufreq_governor": read_trim("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "dnsperf_version": dnsperf::version(&help),
        "dnsmasq_version": first_line(&["dnsmasq", "--version"]),
        "xylem_bin": opts.xylem_bin.display().to_string(),
        "pinning": {
            "dnsperf_cpu": cpu,
            "dnsmasq_cpu": cpu,
            "placement": opts.placement.name(),
            "worker_cores": opts.lab_worker_cores(),
            "harness_cores": sys::cpu_list(harness_cores),
            "veth": "kernel path: no worker; softirq runs on the CPU that sends (dnsperf's and dnsmasq's)",
        },
        "xdp": {
            "mode_requested": opts.xdp_mode,
            "mode_in_effect": null,
            "afxdp_bind": "copy (veth has no AF_XDP zero-copy)",
            "batch_size": opts.batch_size,
        },
        "busy_poll": {
            "net.core.busy_read": read_trim("/proc/sys/net/core/busy_read"),
            "net.core.busy_poll": read_trim("/proc/sys/net/core/busy_poll"),
            "worker": worker_text(opts.placement),
        },
        "method": {
            "setups": opts.setups.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "repeat": opts.repeat,
            "order": "for each repetition, visit every setup in turn (A B C D A B C D ...); each visit is a fresh lab (or veth path) and starts with 1 s of unrecorded dnsperf at the latency rate",
            "latency": format!("{} queries/s for {} s, 1 client, at most 10 outstanding, -v: every answered query's latency (1 µs resolution)", opts.latency_qps, opts.latency_s),
            "throughput": format!("{} pass(es) at the first visit(s) of each setup, -Q over {:?} for {} s each, {} clients, {} outstanding; clean = 0 lost and ≥ {:.0} % of -Q achieved; a pass stops after {} unclean steps", opts.passes, opts.rates, opts.step_s, opts.clients, opts.outstanding, dnsperf::CLEAN_SHARE * 100.0, dnsperf::UNCLEAN_STEPS_TO_STOP),
            "query": format!("{QUERY_NAME} A (allowed by rules.dns, answered {ANSWER_IP}; so the answer is inspected too)"),
            "lab_name": ctx.lab_name,
        },
        "commands": {
            "dnsperf_latency": format!("ip netns exec <client-pod> taskset -c {cpu} {}", process::cmd_line(&lat)),
            "dnsperf_step": format!("ip netns exec <client-pod> taskset -c {cpu} {step}"),
            "dnsmasq": dnsmasq_args("$POD_IP", cpu).join(" "),
            "lab_up": {},
            "policy_import": "xylem policy import policy-<setup>.yaml",
        },
        "files": {
            "lab": "lab-dns.yaml",
            "queries": "queries.txt",
            "policy_full": "policy-full.yaml",
            "policy_inspected": "policy-inspected.yaml",
        },
        "setups": {},
    })
}

/// Adds each setup's status and `lab up` command line, and the XDP modes the agents reported.
pub fn record_statuses(c: &mut Value, statuses: &[(Setup, Value)], commands: &[(Setup, String)]) {
    let mut modes: Vec<String> = Vec::new();
    for (setup, st) in statuses {
        c["setups"][setup.name()] = st.clone();
        for p in st["agent"]["ports"].as_array().into_iter().flatten() {
            if let Some(m) = p["xdp_mode"].as_str()
                && !modes.iter().any(|x| x == m)
            {
                modes.push(m.to_string());
            }
        }
    }
    for (setup, cmd) in commands {
        c["commands"]["lab_up"][setup.name()] = json!(cmd);
    }
    if !modes.is_empty() {
        c["xdp"]["mode_in_effect"] = json!(modes.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policies_parse_and_only_one_inspects() {
        let full = xylem_policy::parse_policies(&full_policy("x")).expect("full policy parses");
        let insp = xylem_policy::parse_policies(&inspected_policy()).expect("issue policy parses");
        assert_eq!((full.len(), insp.len()), (1, 1));
        assert!(!full_policy("x").contains("rules:"));
        assert!(inspected_policy().contains("matchPattern: \"*.domain.com\""));
    }

    #[test]
    fn the_lab_file_pins_dnsmasq_and_has_both_pods() {
        let y = lab_yaml(0);
        assert!(
            y.contains("{name: client, labels: {app: myService}}"),
            "{y}"
        );
        assert!(
            y.contains("namespace: kube-system, labels: {k8s-app: kube-dns}"),
            "{y}"
        );
        assert!(y.contains("run: \"taskset -c 0 dnsmasq "), "{y}");
        assert!(y.contains("--listen-address=$POD_IP"), "{y}");
        assert!(!y.contains("--log-queries"), "{y}");
    }

    #[test]
    fn statuses_give_the_xdp_mode_in_effect() {
        let mut c = json!({"xdp": {}, "setups": {}, "commands": {"lab_up": {}}});
        let st = json!({"agent": {"ports": [{"xdp_mode": "native"}, {"xdp_mode": "native"}]}});
        record_statuses(&mut c, &[(Setup::Full, st)], &[(Setup::Full, "up".into())]);
        assert_eq!(c["xdp"]["mode_in_effect"], "native");
        assert_eq!(c["commands"]["lab_up"]["full"], "up");
        assert!(c["setups"]["full"].is_object());
    }

    #[test]
    fn drop_counters_are_differenced() {
        let b = counters(&json!({"policy-denied": 2, "ring-full": 0, "x": "y"}));
        let a = counters(&json!({"policy-denied": 2, "ring-full": 7, "dns-malformed": 1}));
        let d = grown(&b, &a);
        assert_eq!(d.len(), 2);
        assert_eq!(d.get("ring-full"), Some(&7));
        assert_eq!(d.get("dns-malformed"), Some(&1));
        assert!(grown(&a, &a).is_empty());
    }

    #[test]
    fn udp_error_counters_come_from_snmp() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
                    Udp: 100 0 3 100 3 0 0 0 0\nUdpLite: InDatagrams\nUdpLite: 0\n";
        let u = udp_errors(snmp);
        assert_eq!(u.get("InErrors"), Some(&3));
        assert_eq!(u.get("RcvbufErrors"), Some(&3));
        assert!(!u.contains_key("InDatagrams"));
        assert!(udp_errors("").is_empty());
    }

    #[test]
    fn thread_cpu_comes_from_stat() {
        let line = "4242 (dns log) S 1 4242 4242 0 -1 4194560 500 0 0 0 17 5 0 0 20 0 9 0 100 0 0";
        assert_eq!(stat_cpu(line), Some(("dns log".to_string(), 22)));
        assert_eq!(stat_cpu("garbage"), None);
        let me = thread_cpu_ms(u64::from(std::process::id()));
        assert!(!me.is_empty(), "this test's own threads are listed");
    }

    #[test]
    fn agent_status_is_trimmed_to_ports_and_workers() {
        let a = json!({"version": "0.1", "ports": [{"ifname": "p1", "endpoint": "default/client", "xdp_mode": "generic", "queues": [0], "rx": 9}],
                       "workers": [{"id": 0, "core": 1, "stats": {}}]});
        let t = trim_agent(&a);
        assert_eq!(t["ports"][0]["xdp_mode"], "generic");
        assert!(t["ports"][0].get("rx").is_none());
        assert_eq!(t["workers"][0]["core"], 1);
    }
}
