//! `xylem lab`: the options and the pods of a lab, the demo, and the topology as people read it.

use crate::error::Error;
use crate::output::print_table;
use crate::output::{Format, print_json};
use crate::{Cli, LabCmd, UpArgs};
use xylem_api::Client;
use xylem_lab::{self as lab, Lab, LabFile, LabOptions, LabState};

pub(crate) fn options(a: &UpArgs) -> LabOptions {
    LabOptions {
        placement: a.placement,
        worker_cores: a.worker_cores.clone(),
        mode: a.mode,
        xdp_mode: a.xdp_mode,
        batch_size: a.batch_size,
        idle_spin_us: a.idle_spin_us,
        realtime: a.realtime,
        spare_ports: a.spare_ports,
    }
}

pub(crate) fn lab_file(a: &UpArgs) -> Result<LabFile, Error> {
    match &a.file {
        None => Ok(LabFile::default_pods()),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| {
                Error::File(xylem_api::FileError {
                    what: "reading the lab file",
                    path: p.clone(),
                    source,
                })
            })?;
            Ok(LabFile::parse(&text)?)
        }
    }
}

pub(crate) fn demo(cli: &Cli, a: &UpArgs) -> Result<(), Error> {
    let lab = Lab::new(&cli.lab)?;
    if lab.state()?.is_some() {
        return Err(Error::LabState(format!(
            "lab '{}' is already up: the demo builds its own; run `xylem lab down` first",
            cli.lab
        )));
    }
    let file = lab_file(a)?;
    let pods: usize = file.node_list().iter().map(|n| n.pods.len()).sum();
    if pods < 2 {
        return Err(Error::LabState(format!(
            "the demo sends traffic between two pods, and the lab file lists {pods}: list at \
             least two (or give no file for the default three)"
        )));
    }
    println!("== bringing the lab up");
    let st = lab.up(&file, &options(a))?;
    print_topology(&st);
    let result = demo_traffic(&lab, &st);
    println!("\n== bringing the lab down");
    let down = lab.down();
    result?;
    down?;
    println!("demo finished: lab removed");
    Ok(())
}

pub(crate) fn demo_traffic(lab: &Lab, st: &lab::LabState) -> Result<(), Error> {
    let (a, b) = match st.pods.as_slice() {
        [a, b, ..] => (a, b),
        _ => return Err(Error::LabState("the demo needs at least two pods".into())),
    };
    let node = &st.nodes[0];
    let b_ip = b.ip.to_string();
    let a_ip = a.ip.to_string();

    println!(
        "\n== ping {} -> {} ({b_ip}) through the dataplane",
        a.name, b.name
    );
    let out = lab::run(&[
        "ip", "netns", "exec", &a.netns, "ping", "-c", "5", "-i", "0.2", "-W", "2", &b_ip,
    ])?;
    print_ping_summary(&out);

    println!(
        "\n== ping host ({}) -> {} ({a_ip}) through the host port",
        node.host_ip, a.name
    );
    let out = lab::run(&[
        "ip",
        "netns",
        "exec",
        &node.netns,
        "ping",
        "-c",
        "5",
        "-i",
        "0.2",
        "-W",
        "2",
        &a_ip,
    ])?;
    print_ping_summary(&out);

    println!(
        "\n== netperf TCP_RR {} -> {} (5 s, 1-byte request/response)",
        a.name, b.name
    );
    lab::start_netserver(&b.netns)?;
    let out = lab::run(&[
        "ip",
        "netns",
        "exec",
        &a.netns,
        "netperf",
        "-4",
        "-H",
        &b_ip,
        "-t",
        "TCP_RR",
        "-l",
        "5",
        "--",
        "-r",
        "1,1",
        "-o",
        "MIN_LATENCY,P50_LATENCY,P90_LATENCY,P99_LATENCY,MAX_LATENCY,TRANSACTION_RATE",
    ])?;
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    if let [.., header, values] = lines.as_slice() {
        let h: Vec<&str> = header.split(',').collect();
        let v: Vec<&str> = values.split(',').collect();
        for (k, val) in h.iter().zip(v) {
            println!("  {k:<40} {val}");
        }
    } else {
        println!("{out}");
    }

    println!("\n== dataplane counters");
    let _ = lab;
    let client = Client::new(&node.api_socket);
    let status: xylem_api::Status = client.get("/v1/status")?;
    crate::agent_cmd::print_status(&status);
    Ok(())
}

pub(crate) fn print_ping_summary(out: &str) {
    for l in out.lines() {
        if l.contains("packets transmitted") || l.starts_with("rtt") {
            println!("  {l}");
        }
    }
}

/// Prints a lab's topology for people.
pub fn print_topology(st: &LabState) {
    for n in &st.nodes {
        println!(
            "node {} (netns {}): agent pid {} {}, api {}",
            n.name,
            n.netns,
            n.agent_pid.map_or("-".into(), |p| p.to_string()),
            if n.agent_running {
                "running"
            } else {
                "NOT RUNNING"
            },
            n.api_socket.display()
        );
        println!(
            "  pod CIDR {}  service CIDR {}  gateway {}  host port {} ({} <-> {})",
            n.pod_cidr,
            n.service_cidr,
            n.gateway,
            n.host_ip,
            lab::HOST_IF,
            lab::HOST_DP_IF
        );
        if let (Some(ip), Some(uplink)) = (n.node_ip, &n.underlay_if) {
            println!("  underlay {ip} on {uplink}");
        }
    }
    if let Some(u) = &st.underlay {
        println!("underlay: netns {}, bridge {}", u.netns, u.bridge);
    }
    if let Some(w) = &st.world {
        println!(
            "world (underlay router, netserver, TCP/UDP echo on port {}): netns {}, {}",
            lab::WORLD_ECHO_PORT,
            w.netns,
            w.ip
        );
    }
    if st.pods.is_empty() {
        println!(
            "no pods: the agents wait for them (`xylem lab add-pod NAME`, or a CNI plugin's ADD \
             in a node namespace)"
        );
        return;
    }
    let rows: Vec<Vec<String>> = st
        .pods
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.node.clone(),
                p.namespace.clone(),
                p.ip.to_string(),
                p.netns.clone(),
                p.interface.clone(),
                p.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                p.run_log
                    .as_ref()
                    .map_or("-".into(), |l| l.display().to_string()),
            ]
        })
        .collect();
    print_table(
        &[
            "POD",
            "NODE",
            "NAMESPACE",
            "IP",
            "NETNS",
            "PORT",
            "LABELS",
            "RUN LOG",
        ],
        &rows,
    );
    for p in st.pods.iter().filter(|p| p.run.is_some()) {
        println!(
            "  {} runs: {}",
            p.name,
            p.run.as_deref().unwrap_or_default()
        );
    }
}

/// `xylem lab …`.
pub(crate) fn run(cli: &Cli, cmd: &LabCmd) -> Result<(), Error> {
    let lab = Lab::new(&cli.lab)?;
    match cmd {
        LabCmd::Up(a) => {
            let st = lab.up(&lab_file(a)?, &options(a))?;
            print_topology(&st);
            Ok(())
        }
        LabCmd::Status { output } => {
            let st = lab.state()?.ok_or_else(|| {
                Error::LabState(format!("lab '{}' is not up: run `xylem lab up`", cli.lab))
            })?;
            match output {
                Format::Json => print_json(&st),
                Format::Table => print_topology(&st),
            }
            Ok(())
        }
        LabCmd::Exec { pod, cmd } => {
            let p = lab.pod(pod)?;
            use std::os::unix::process::CommandExt;
            let err = std::process::Command::new("ip")
                .args(["netns", "exec", &p.netns])
                .args(cmd)
                .exec();
            Err(Error::Command {
                command: format!("ip netns exec {} {}", p.netns, cmd.join(" ")),
                detail: err.to_string(),
            })
        }
        LabCmd::AddPod {
            name,
            node,
            namespace,
            labels,
            run,
        } => {
            let mut map = std::collections::BTreeMap::new();
            for l in labels {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| Error::config("--label", format!("'{l}' is not KEY=VALUE")))?;
                map.insert(k.to_string(), v.to_string());
            }
            let p = lab.add_pod_on(
                node.as_deref(),
                &lab::LabPod {
                    name: name.clone(),
                    namespace: namespace.clone(),
                    labels: map,
                    run: run.clone(),
                },
            )?;
            println!(
                "pod {}/{} at {} (netns {}, port {})",
                p.namespace, p.name, p.ip, p.netns, p.interface
            );
            if let (Some(pid), Some(log)) = (p.run_pid, &p.run_log) {
                println!("  running pid {pid}, output in {}", log.display());
            }
            Ok(())
        }
        LabCmd::DeletePod { name } => {
            let p = lab.delete_pod(name)?;
            println!(
                "pod {}/{} deleted (port {} removed)",
                p.namespace, p.name, p.interface
            );
            Ok(())
        }
        LabCmd::Down => {
            lab.down()?;
            println!("lab '{}' removed", cli.lab);
            Ok(())
        }
        LabCmd::Demo(a) => demo(cli, a),
    }
}
