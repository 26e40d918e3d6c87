//! Pods: their namespaces and veths, and adding one to a running lab.

use std::net::Ipv4Addr;
use std::path::Path;

use crate::netns::{add_veth, node_port_up, read_mac, tx_offload_off};
use crate::process::run;
use crate::up::add_quiet_netns;
use crate::{Error, HOST_DP_IF, Lab, LabPod, PodState};

/// The prefix of the pods' dataplane interfaces in the node namespace (`xyp0`, `xyp1`…).
pub(crate) const POD_IF_PREFIX: &str = "xyp";

impl Lab {
    /// Adds a pod to a running lab's first node: see [`Lab::add_pod_on`].
    pub fn add_pod(&self, pod: &LabPod) -> Result<PodState, Error> {
        self.add_pod_on(None, pod)
    }

    /// Adds a pod to node `node` of a running lab (`None`: the first node): its namespace and
    /// veth, then its endpoint through that node's agent's API (`PUT /v1/endpoints/…`), which
    /// attaches the redirector and opens a socket on each worker, then a remote endpoint on
    /// every other node's agent. The agents keep them across restarts.
    pub fn add_pod_on(&self, node: Option<&str>, pod: &LabPod) -> Result<PodState, Error> {
        let mut st = self
            .state()?
            .filter(|st| st.nodes.iter().all(|n| n.agent_running))
            .ok_or_else(|| {
                Error::Lab(format!("lab '{}' is not up: run `xylem lab up`", self.name))
            })?;
        if st.pods.iter().any(|p| p.name == pod.name) {
            return Err(Error::Lab(format!(
                "lab '{}' already has a pod {}",
                self.name, pod.name
            )));
        }
        let node = match node {
            None => st.nodes[0].clone(),
            Some(name) => st
                .nodes
                .iter()
                .find(|n| n.name == name)
                .cloned()
                .ok_or_else(|| {
                    let names: Vec<&str> = st.nodes.iter().map(|n| n.name.as_str()).collect();
                    Error::config(
                        "--node",
                        format!(
                            "lab '{}' has no node {name}; its nodes: {}",
                            self.name,
                            names.join(", ")
                        ),
                    )
                })?,
        };
        // Interfaces are per node namespace; addresses per node pod CIDR.
        let (i, ip) = (0u32..240)
            .map(|i| (i, node.pod_cidr.nth(10 + i)))
            .find(|(i, ip)| {
                let ifname = format!("{POD_IF_PREFIX}{i}");
                !(st.pods.iter())
                    .filter(|p| p.node == node.name)
                    .any(|p| p.ip == *ip || p.interface == ifname)
            })
            .ok_or_else(|| Error::Lab("the lab's pod CIDR is full".into()))?;
        let pod_ns = format!("{}pod-{}", self.netns_prefix(), pod.name);
        let ifname = format!("{POD_IF_PREFIX}{i}");
        // As many queues as the host port has (one per worker).
        let queues = run(&[
            "ip",
            "netns",
            "exec",
            &node.netns,
            "ls",
            &format!("/sys/class/net/{HOST_DP_IF}/queues"),
        ])
        .map(|o| {
            o.split_whitespace()
                .filter(|q| q.starts_with("rx-"))
                .count()
                .max(1)
        })
        .unwrap_or(1)
        .to_string();
        make_pod(
            &node.netns,
            &pod_ns,
            &ifname,
            ip,
            node.gateway,
            &queues,
            node.pod_mtu,
        )?;
        let pod_state = PodState {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            labels: pod.labels.clone(),
            ip,
            netns: pod_ns.clone(),
            node: node.name.clone(),
            interface: ifname.clone(),
            run: None,
            run_log: None,
            run_pid: None,
            resolv_conf: None,
        };
        // Recorded before the API call, so `lab down` removes the namespace whatever happens.
        st.pods.push(pod_state);
        self.save(&st)?;
        // Every pod's, in case the new pod is the DNS server.
        crate::resolv::write_all(Path::new(crate::resolv::NETNS_ETC), &mut st.pods)?;
        self.save(&st)?;
        let pod_state = st.pods[st.pods.len() - 1].clone();
        let mac = read_mac(&pod_ns, "eth0")?;
        let req = xylem_api::EndpointRequest {
            ifname: ifname.clone(),
            ip: ip.to_string(),
            mac: mac.to_string(),
            labels: pod.labels.clone(),
            container_id: None,
            netns: None,
            cni_ifname: None,
        };
        xylem_api::Client::new(&node.api_socket).put_endpoint(&pod.namespace, &pod.name, &req)?;
        self.publish_remote_pod(&st, &pod_state)?;
        let Some(cmd) = &pod.run else {
            return Ok(pod_state);
        };
        let last = st.pods.len() - 1;
        self.start_run(&mut st.pods[last], cmd)?;
        self.save(&st)?;
        Ok(st.pods[last].clone())
    }

    /// Starts `cmd` in `pod`'s namespace through `sh -c`, in its own session (it outlives the
    /// command that started it, until `lab down` kills every process of the lab's namespaces),
    /// with `POD_NAME`, `POD_NAMESPACE` and `POD_IP` set and its output appended to
    /// `<lab dir>/pods/<name>.log`; records the command, its log and its pid in `pod`.
    pub(crate) fn start_run(&self, pod: &mut PodState, cmd: &str) -> Result<(), Error> {
        let log = self.dir().join("pods").join(format!("{}.log", pod.name));
        let env = [
            ("POD_NAME", pod.name.clone()),
            ("POD_NAMESPACE", pod.namespace.clone()),
            ("POD_IP", pod.ip.to_string()),
        ];
        let pid = crate::process::spawn_detached(&pod.netns, cmd, &env, &log)?;
        pod.run = Some(cmd.to_string());
        pod.run_log = Some(log);
        pod.run_pid = Some(pid);
        Ok(())
    }

    /// Deletes a pod from a running lab: its remote endpoint on the other nodes' agents, its
    /// endpoint through its node's agent's API (`DELETE /v1/endpoints/…`, which also removes
    /// its port from every worker), then its veth and its namespace.
    pub fn delete_pod(&self, name: &str) -> Result<PodState, Error> {
        let pod = self.pod(name)?;
        let mut st = self.state()?.ok_or_else(|| {
            Error::Lab(format!("lab '{}' is not up: run `xylem lab up`", self.name))
        })?;
        let node = st
            .nodes
            .iter()
            .find(|n| n.name == pod.node)
            .cloned()
            .ok_or_else(|| Error::Lab(format!("pod {name}'s node {} is gone", pod.node)))?;
        // The other nodes forget it first, so that no policy of theirs goes on selecting, by
        // its labels, an address about to be given to another pod.
        self.withdraw_remote_pod(&st, &pod)?;
        xylem_api::Client::new(&node.api_socket).delete_endpoint(&pod.namespace, &pod.name)?;
        // The veth goes first, and at once: a namespace is destroyed in the background, so its
        // interfaces (and the name of their peer here) could outlive `ip netns del` for a while
        // and the next pod could not take the name.
        run(&["ip", "-n", &node.netns, "link", "del", &pod.interface])?;
        crate::netns::remove(&pod.netns);
        crate::resolv::remove(Path::new(crate::resolv::NETNS_ETC), &pod.netns);
        st.pods.retain(|p| p.name != pod.name);
        self.save(&st)?;
        Ok(pod)
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> Result<PodState, Error> {
        let st = self.state()?.ok_or_else(|| {
            Error::Lab(format!("lab '{}' is not up: run `xylem lab up`", self.name))
        })?;
        st.pods
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| {
                Error::Lab(format!(
                    "no pod {name} in lab '{}'; pods: {}",
                    self.name,
                    st.pods
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }
}

/// Creates pod namespace `pod_ns` with `eth0` at `ip`/32 behind gateway `gateway`, and its veth
/// peer `ifname` in the node namespace, closed to the node's stack ([`node_port_up`]); both ends
/// get MTU `mtu` when one is given (encryption's room for the tunnel headers).
pub(crate) fn make_pod(
    node_ns: &str,
    pod_ns: &str,
    ifname: &str,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    queues: &str,
    mtu: Option<u32>,
) -> Result<(), Error> {
    add_quiet_netns(pod_ns)?;
    add_veth(node_ns, ifname, "eth0", Some(pod_ns), queues)?;
    if let Some(mtu) = mtu {
        let mtu = mtu.to_string();
        run(&["ip", "-n", node_ns, "link", "set", ifname, "mtu", &mtu])?;
        run(&["ip", "-n", pod_ns, "link", "set", "eth0", "mtu", &mtu])?;
    }
    let addr = format!("{ip}/32");
    run(&["ip", "-n", pod_ns, "addr", "add", &addr, "dev", "eth0"])?;
    tx_offload_off(pod_ns, "eth0")?;
    run(&["ip", "-n", pod_ns, "link", "set", "eth0", "up"])?;
    node_port_up(Some(node_ns), ifname)?;
    let gw = gateway.to_string();
    run(&[
        "ip", "-n", pod_ns, "route", "add", &gw, "dev", "eth0", "scope", "link",
    ])?;
    run(&[
        "ip", "-n", pod_ns, "route", "add", "default", "via", &gw, "dev", "eth0",
    ])?;
    Ok(())
}
