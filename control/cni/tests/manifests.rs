//! The deployment under `docker/`: the Kubernetes manifests (`docker/k8s/*.yaml`), the image
//! (`docker/Dockerfile`) and the example conflist (`docker/cni/10-xylem.conflist`), checked
//! against each other and against the parsers the agent and the plugin use.
//!
//! The image cannot be built on the test machine (no Docker engine), so this is what stands
//! between a typo in a manifest and a cluster: every manifest is parsed (all documents of every
//! file), the objects are the expected ones, the DaemonSet mounts exactly what the agent and the
//! plugin use and at the paths the agent's configuration names, every image path a container
//! runs is one the Dockerfile copies in, the ConfigMap's configuration passes the agent's own
//! check, the Secret's key file the agent's key-file parser, and the conflist the plugin's own
//! parser, with an address range that leaves out the gateway, the host port and the lab's pods
//! (checked by hand and by the reference `host-local` plugin handing out the whole range).
//!
//! No root needed: nothing here touches the system beyond a temporary directory.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use xylem_api::config::{AgentConfig, Ipv4Cidr, PortKind, online_cpus};
use xylem_api::keyfile::KeyFile;
use xylem_cni::conf::ConfList;

/// The namespace every namespaced object lives in.
const NAMESPACE: &str = "xylem-system";
/// The host paths the DaemonSet mounts, and no other: the API socket's directory (shared with
/// xylem-cni on the host), the state directory, and the CNI directories install-cni writes.
const HOST_PATHS: [&str; 4] = [
    "/run/xylem",
    "/var/lib/xylem",
    "/opt/cni/bin",
    "/etc/cni/net.d",
];
/// The agent's capabilities, and no other.
const AGENT_CAPABILITIES: [&str; 5] = ["NET_ADMIN", "BPF", "PERFMON", "IPC_LOCK", "NET_RAW"];
/// The lab gives its pods `pod_cidr.nth(10 + i)`: `lab up` for up to 200 pods
/// (`xylem_lab::MAX_PODS`), `lab add-pod` for i below 240 (control/lab/src/pods.rs), so the
/// lab's pods can hold .10 to .249 of a node's /24.
const LAB_POD_FIRST: u32 = 10;
const LAB_POD_LAST: u32 = 10 + 240 - 1;
/// The lab's gateway and host port: `pod_cidr.nth(1)` and `pod_cidr.nth(254)`.
const LAB_GATEWAY: u32 = 1;
const LAB_HOST_PORT: u32 = 254;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// One document of a manifest file.
struct Doc {
    file: String,
    value: Yaml,
}

impl Doc {
    fn kind(&self) -> &str {
        str_at(&self.value, "kind")
    }
    fn name(&self) -> &str {
        str_at(&self.value, "metadata.name")
    }
}

/// Every document of every `docker/k8s/*.yaml` file, in file order (as `kubectl apply -f
/// docker/k8s/` applies them); empty documents left out.
fn manifests() -> Vec<Doc> {
    let dir = repo().join("docker/k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifest in {}", dir.display());
    let mut docs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for (i, de) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let value = Yaml::deserialize(de)
                .unwrap_or_else(|e| panic!("{file}: document {i} is not YAML: {e}"));
            if !value.is_null() {
                docs.push(Doc {
                    file: file.clone(),
                    value,
                });
            }
        }
    }
    docs
}

/// The one document of `kind` named `name`.
fn object<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Yaml {
    let found: Vec<&Doc> = (docs.iter())
        .filter(|d| d.kind() == kind && d.name() == name)
        .collect();
    match found.as_slice() {
        [d] => &d.value,
        [] => panic!("no {kind} {name} in docker/k8s"),
        more => panic!(
            "{kind} {name} is defined {} times (in {:?})",
            more.len(),
            more.iter().map(|d| &d.file).collect::<Vec<_>>()
        ),
    }
}

/// The value at a dotted path (`spec.template.spec`); a missing step fails naming the path.
fn at<'a>(v: &'a Yaml, path: &str) -> &'a Yaml {
    let mut cur = v;
    for step in path.split('.') {
        cur = cur
            .get(step)
            .unwrap_or_else(|| panic!("{path}: no {step:?} in {cur:?}"));
    }
    cur
}

fn str_at<'a>(v: &'a Yaml, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string: {:?}", at(v, path)))
}

fn seq<'a>(v: &'a Yaml, path: &str) -> &'a [Yaml] {
    at(v, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("{path} is not a list"))
}

fn strings(v: &Yaml, path: &str) -> Vec<String> {
    seq(v, path)
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("{path}: {s:?} is not a string"))
                .to_string()
        })
        .collect()
}

fn pod_spec(docs: &[Doc]) -> &Yaml {
    at(
        object(docs, "DaemonSet", "xylem-agent"),
        "spec.template.spec",
    )
}

/// The pod's containers, init containers first, by name.
fn containers(docs: &[Doc]) -> BTreeMap<String, &Yaml> {
    let spec = pod_spec(docs);
    let mut all = BTreeMap::new();
    for list in ["initContainers", "containers"] {
        for c in seq(spec, list) {
            let name = str_at(c, "name").to_string();
            assert!(
                all.insert(name.clone(), c).is_none(),
                "container {name} twice"
            );
        }
    }
    all
}

fn container<'a>(docs: &'a [Doc], name: &str) -> &'a Yaml {
    containers(docs)
        .remove(name)
        .unwrap_or_else(|| panic!("the DaemonSet has no container {name}"))
}

/// Where container `c` mounts volume `volume`.
fn mount_path<'a>(c: &'a Yaml, volume: &str) -> &'a str {
    let m = seq(c, "volumeMounts")
        .iter()
        .find(|m| str_at(m, "name") == volume)
        .unwrap_or_else(|| panic!("{} does not mount {volume}", str_at(c, "name")));
    str_at(m, "mountPath")
}

/// The DaemonSet's volume named `name`.
fn volume<'a>(docs: &'a [Doc], name: &str) -> &'a Yaml {
    seq(pod_spec(docs), "volumes")
        .iter()
        .find(|v| str_at(v, "name") == name)
        .unwrap_or_else(|| panic!("the DaemonSet has no volume {name}"))
}

/// The host path a volume name maps to, for the hostPath volumes.
fn host_volumes(docs: &[Doc]) -> BTreeMap<String, String> {
    seq(pod_spec(docs), "volumes")
        .iter()
        .filter_map(|v| {
            let hp = v.get("hostPath")?;
            Some((
                str_at(v, "name").to_string(),
                str_at(hp, "path").to_string(),
            ))
        })
        .collect()
}

/// The agent's configuration as the ConfigMap holds it.
fn agent_yaml(docs: &[Doc]) -> String {
    let data = at(object(docs, "ConfigMap", "xylem-agent-config"), "data");
    data.get("agent.yaml")
        .and_then(Yaml::as_str)
        .expect("the ConfigMap has no data key agent.yaml holding text")
        .to_string()
}

/// The configuration, deserialized as the agent's parser does (unknown fields refused), before
/// the checks that depend on the machine (see
/// `the_configmap_passes_the_agents_own_configuration_check`).
fn agent_config(docs: &[Doc]) -> AgentConfig {
    serde_norway::from_str(&agent_yaml(docs))
        .unwrap_or_else(|e| panic!("the ConfigMap's agent.yaml does not deserialize: {e}"))
}

/// The argument after `flag` in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    args.get(i + 1)
        .unwrap_or_else(|| panic!("{flag} without a value in {args:?}"))
}

/// A container's environment, `name → value`.
fn env(c: &Yaml) -> BTreeMap<String, String> {
    seq(c, "env")
        .iter()
        .map(|e| {
            (
                str_at(e, "name").to_string(),
                str_at(e, "value").to_string(),
            )
        })
        .collect()
}

#[test]
fn the_manifests_are_exactly_the_expected_objects() {
    let docs = manifests();
    let got: BTreeSet<(String, String, String, String)> = docs
        .iter()
        .map(|d| {
            let ns = d.value["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            (
                str_at(&d.value, "apiVersion").to_string(),
                d.kind().to_string(),
                d.name().to_string(),
                ns,
            )
        })
        .collect();
    let want: BTreeSet<(String, String, String, String)> = [
        ("v1", "Namespace", "xylem-system", ""),
        ("v1", "ServiceAccount", "xylem-agent", NAMESPACE),
        (
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            "xylem-agent",
            "",
        ),
        (
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            "xylem-agent",
            "",
        ),
        ("v1", "ConfigMap", "xylem-agent-config", NAMESPACE),
        ("v1", "Secret", "xylem-ipsec-keys", NAMESPACE),
        ("apps/v1", "DaemonSet", "xylem-agent", NAMESPACE),
    ]
    .iter()
    .map(|(a, k, n, ns)| (a.to_string(), k.to_string(), n.to_string(), ns.to_string()))
    .collect();
    assert_eq!(got, want, "docker/k8s holds other objects than expected");
    assert_eq!(docs.len(), want.len(), "an object is defined twice");
    // `kubectl apply -f docker/k8s/` goes by file name: the namespace comes first.
    assert_eq!(docs[0].kind(), "Namespace", "first file: {}", docs[0].file);
}

#[test]
fn the_agent_may_only_read_the_api() {
    let docs = manifests();
    let role = object(&docs, "ClusterRole", "xylem-agent");
    let mut granted = BTreeSet::new();
    for rule in seq(role, "rules") {
        let verbs: BTreeSet<String> = strings(rule, "verbs").into_iter().collect();
        let read: BTreeSet<String> = ["get", "list", "watch"].map(String::from).into();
        assert_eq!(
            verbs, read,
            "a rule grants other verbs than get, list, watch"
        );
        for group in strings(rule, "apiGroups") {
            for r in strings(rule, "resources") {
                granted.insert((group.clone(), r));
            }
        }
    }
    let want: BTreeSet<(String, String)> = [
        ("", "pods"),
        ("", "namespaces"),
        ("", "nodes"),
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("cilium.io", "ciliumnetworkpolicies"),
    ]
    .map(|(g, r)| (g.to_string(), r.to_string()))
    .into();
    assert_eq!(granted, want);
    let binding = object(&docs, "ClusterRoleBinding", "xylem-agent");
    assert_eq!(str_at(binding, "roleRef.kind"), "ClusterRole");
    assert_eq!(str_at(binding, "roleRef.name"), "xylem-agent");
    let subjects = seq(binding, "subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(str_at(&subjects[0], "kind"), "ServiceAccount");
    assert_eq!(str_at(&subjects[0], "name"), "xylem-agent");
    assert_eq!(str_at(&subjects[0], "namespace"), NAMESPACE);
    assert_eq!(str_at(pod_spec(&docs), "serviceAccountName"), "xylem-agent");
}

#[test]
fn the_daemonset_mounts_exactly_what_the_agent_and_the_plugin_use() {
    let docs = manifests();
    let spec = pod_spec(&docs);
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true), "hostNetwork");
    assert_ne!(spec["hostPID"].as_bool(), Some(true), "hostPID");
    assert_ne!(spec["hostIPC"].as_bool(), Some(true), "hostIPC");

    let hosts = host_volumes(&docs);
    let paths: BTreeSet<&str> = hosts.values().map(String::as_str).collect();
    assert_eq!(paths, BTreeSet::from(HOST_PATHS), "the hostPath volumes");
    assert_eq!(hosts.len(), HOST_PATHS.len(), "a host path mounted twice");
    // The agent mounts each hostPath it uses at the same path inside, so a path its
    // configuration names is the host's path too (xylem-cni, on the host, finds the socket
    // there). install-cni mounts the CNI directories under /host, checked below.
    for (c_name, c) in containers(&docs) {
        for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
            let name = str_at(m, "name");
            if let Some(host) = hosts.get(name)
                && c_name == "agent"
            {
                assert_eq!(str_at(m, "mountPath"), host, "{c_name} mounts {name}");
            }
        }
    }

    let cfg = agent_config(&docs);
    let agent = container(&docs, "agent");
    let path_of = |vol: &str| PathBuf::from(mount_path(agent, vol));
    let host_vol = |path: &str| {
        hosts
            .iter()
            .find(|(_, p)| *p == path)
            .map(|(n, _)| n.clone())
            .unwrap()
    };
    assert_eq!(
        cfg.api_socket.parent(),
        Some(path_of(&host_vol("/run/xylem")).as_path()),
        "api_socket {} is not in the /run/xylem mount",
        cfg.api_socket.display()
    );
    assert_eq!(cfg.state_dir, path_of(&host_vol("/var/lib/xylem")));

    // The configuration the agent is started with is the ConfigMap's agent.yaml.
    let command = strings(agent, "command");
    assert_eq!(command[0], "/usr/local/bin/xylem-agent");
    let config_path = Path::new(flag_value(&command, "--config"));
    let config_vol = volume(&docs, "config");
    assert_eq!(str_at(config_vol, "configMap.name"), "xylem-agent-config");
    let items = seq(config_vol, "configMap.items");
    assert_eq!(items.len(), 1);
    assert_eq!(str_at(&items[0], "key"), "agent.yaml");
    assert_eq!(
        config_path,
        path_of("config").join(str_at(&items[0], "path")),
        "--config is not the ConfigMap's file"
    );
    assert_eq!(
        agent["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| str_at(m, "name") == "config")
            .unwrap()["readOnly"]
            .as_bool(),
        Some(true)
    );

    // The key file the configuration names is the Secret's.
    let keys_vol = volume(&docs, "ipsec-keys");
    assert_eq!(str_at(keys_vol, "secret.secretName"), "xylem-ipsec-keys");
    let items = seq(keys_vol, "secret.items");
    assert_eq!(items.len(), 1);
    assert_eq!(str_at(&items[0], "key"), "keys");
    let enc = cfg.encryption.as_ref().expect("the configuration encrypts");
    assert_eq!(
        enc.key_file,
        path_of("ipsec-keys").join(str_at(&items[0], "path"))
    );

    // The probes ask the agent on the configured socket.
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let cmd = strings(agent, &format!("{probe}.exec.command"));
        assert_eq!(cmd[0], "/usr/local/bin/xylem", "{probe}");
        assert_eq!(
            Path::new(flag_value(&cmd, "--socket")),
            cfg.api_socket,
            "{probe}"
        );
        assert_eq!(cmd.last().map(String::as_str), Some("status"), "{probe}");
    }

    // install-cni writes the plugin and the conflist into the host's CNI directories.
    let install = container(&docs, "install-cni");
    let script = strings(install, "command").join(" ");
    let bin = mount_path(install, &host_vol("/opt/cni/bin"));
    let conf = mount_path(install, &host_vol("/etc/cni/net.d"));
    for target in [
        format!("{bin}/xylem-cni"),
        format!("{conf}/10-xylem.conflist"),
    ] {
        assert!(
            script.contains(&format!("{target}\n")) || script.contains(&format!("{target} ")),
            "install-cni does not write {target}: {script}"
        );
    }
    // The plugin reaches the agent at the socket the agent serves.
    let list = ConfList::parse(read("docker/cni/10-xylem.conflist").as_bytes())
        .unwrap_or_else(|e| panic!("the conflist does not parse: {e}"));
    assert_eq!(Path::new(&list.xylem.agent_socket), cfg.api_socket);
}

#[test]
fn every_container_is_unprivileged_with_only_its_capabilities() {
    let docs = manifests();
    let want: BTreeMap<&str, Vec<&str>> = [
        ("agent", AGENT_CAPABILITIES.to_vec()),
        ("host-port", vec!["NET_ADMIN"]),
        ("install-cni", vec![]),
    ]
    .into();
    let all = containers(&docs);
    assert_eq!(
        all.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        want.keys().copied().collect::<BTreeSet<_>>(),
        "the DaemonSet's containers"
    );
    for (name, c) in &all {
        let sc = at(c, "securityContext");
        assert_eq!(
            sc["privileged"].as_bool(),
            Some(false),
            "{name}: privileged"
        );
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{name}: allowPrivilegeEscalation"
        );
        assert_eq!(
            sc["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{name}: readOnlyRootFilesystem"
        );
        assert_eq!(strings(sc, "capabilities.drop"), ["ALL"], "{name}: drop");
        let added: BTreeSet<String> = sc["capabilities"]["add"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        let expected: BTreeSet<String> =
            want[name.as_str()].iter().map(|s| s.to_string()).collect();
        assert_eq!(added, expected, "{name}: capabilities added");
    }
}

#[test]
fn the_workers_get_dedicated_cores_and_the_host_port_matches_the_configuration() {
    let docs = manifests();
    let cfg = agent_config(&docs);
    assert_eq!(cfg.workers.cores, [2, 3], "workers.cores");
    assert_eq!(
        spelled(&cfg.workers.placement),
        "dedicated",
        "workers.placement"
    );
    // Guaranteed QoS: requests equal limits, CPU and memory, in every container.
    for (name, c) in containers(&docs) {
        let req = at(c, "resources.requests");
        let lim = at(c, "resources.limits");
        for r in ["cpu", "memory"] {
            assert!(!req[r].is_null(), "{name}: no {r} request");
            assert_eq!(req[r], lim[r], "{name}: {r} request and limit differ");
        }
    }
    // The agent's CPUs are whole (the static CPU manager gives exclusive CPUs only then): one
    // per worker and one for its other threads.
    let agent = container(&docs, "agent");
    let cpu = at(agent, "resources.limits.cpu");
    let cpus: u64 = match cpu {
        Yaml::String(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("cpu {s:?} is not whole")),
        Yaml::Number(n) => n.as_u64().expect("whole CPUs"),
        other => panic!("cpu is {other:?}"),
    };
    assert_eq!(cpus, cfg.workers.cores.len() as u64 + 1, "agent CPUs");

    // The host-port init container creates exactly the host port the configuration names.
    let host: Vec<_> = cfg
        .ports
        .iter()
        .filter(|p| p.kind == PortKind::Host)
        .collect();
    assert_eq!(host.len(), 1, "one host port");
    let host = host[0];
    let e = env(container(&docs, "host-port"));
    assert_eq!(e["HOST_DP_IF"], host.ifname);
    assert_eq!(e["HOST_IP"], host.ip.to_string());
    assert_eq!(e["HOST_MAC"], host.mac.to_string());
    assert_eq!(e["GATEWAY_IP"], cfg.gateway.ip.to_string());
    assert_eq!(e["POD_CIDR"], cfg.pod_cidr.to_string());
    assert_eq!(e["QUEUES"], cfg.workers.cores.len().to_string());
    assert!(
        e["HOST_IF"].len() <= 15 && e["HOST_IF"] != host.ifname,
        "HOST_IF {:?}",
        e["HOST_IF"]
    );
}

/// A configuration value as its YAML spells it (`dedicated`, `full`): the dataplane's types
/// are not this crate's to name.
fn spelled<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .unwrap()
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_image_holds_every_path_the_manifests_run() {
    let docs = manifests();
    let dockerfile = read("docker/Dockerfile");
    // The runtime stage: after the last FROM.
    let runtime = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, r)| r)
        .expect("a multi-stage Dockerfile");
    let mut copied = BTreeMap::new();
    for line in runtime.lines().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (src, dst) = (words[words.len() - 2], words[words.len() - 1]);
        let from_builder = words.iter().any(|w| w.starts_with("--from="));
        if !from_builder {
            assert!(
                repo().join(src).is_file(),
                "COPY {src}: no such file in the repository"
            );
        }
        copied.insert(dst.to_string(), (src.to_string(), from_builder));
    }
    for bin in ["xylem-agent", "xylem", "xylem-cni"] {
        let dst = format!("/usr/local/bin/{bin}");
        assert_eq!(
            copied.get(&dst),
            Some(&(format!("/out/{bin}"), true)),
            "{dst} is not copied from the builder"
        );
        assert!(
            dockerfile.contains(&format!("target/release/{bin} ")),
            "the builder does not copy out target/release/{bin}"
        );
    }
    assert_eq!(
        copied["/usr/local/share/xylem/10-xylem.conflist"].0,
        "docker/cni/10-xylem.conflist"
    );
    let builds: Vec<&str> = (dockerfile.lines())
        .filter(|l| l.contains("cargo build"))
        .collect();
    for p in ["xylem-agent", "xylem-cli", "xylem-cni"] {
        assert!(
            builds.iter().any(|b| b.contains(&format!("-p {p}"))),
            "{builds:?}: -p {p}"
        );
    }
    assert!(builds.iter().all(|b| b.contains("--release")), "{builds:?}");
    // The plugin is built alone, so feature unification with the agent links no AF_XDP into it.
    let cni = builds.iter().find(|b| b.contains("-p xylem-cni")).unwrap();
    assert!(
        !cni.contains("-p xylem-agent"),
        "{cni}: xylem-cni is built with the agent"
    );

    // Every image path a container runs or reads is one the runtime stage copies in.
    let mut used = BTreeSet::new();
    let mut images = BTreeSet::new();
    for (name, c) in containers(&docs) {
        images.insert(str_at(c, "image").to_string());
        let mut words = strings(c, "command");
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            if let Some(cmd) = c.get(probe) {
                words.extend(strings(cmd, "exec.command"));
            }
        }
        for w in words.iter().flat_map(|w| w.split_whitespace()) {
            if w.starts_with("/usr/local/") {
                used.insert((name.clone(), w.to_string()));
            }
        }
    }
    assert!(used.len() >= 5, "too few image paths found: {used:?}");
    for (name, path) in &used {
        assert!(
            copied.contains_key(path),
            "{name} uses {path}, which the Dockerfile does not copy into the image: {:?}",
            copied.keys()
        );
    }
    assert_eq!(
        images.len(),
        1,
        "every container runs the one image: {images:?}"
    );

    // host-port.sh runs `ip` and `ethtool`: the runtime stage installs them.
    let script = read("docker/host-port.sh");
    for (tool, package) in [("ip ", "iproute2"), ("ethtool ", "ethtool")] {
        assert!(script.contains(tool), "host-port.sh no longer runs {tool}");
        assert!(
            runtime.contains(&format!(" {package} ")) || runtime.contains(&format!(" {package}\n")),
            "the runtime stage does not install {package}"
        );
    }
}

#[test]
fn the_configmap_passes_the_agents_own_configuration_check() {
    let docs = manifests();
    let text = agent_yaml(&docs);
    let cfg = agent_config(&docs);
    assert_eq!(cfg.pod_cidr.to_string(), "10.200.0.0/24");
    assert_eq!(cfg.gateway.ip, Ipv4Addr::new(10, 200, 0, 1));
    assert_eq!(cfg.api_socket, Path::new("/run/xylem/agent.sock"));
    assert_eq!(cfg.state_dir, Path::new("/var/lib/xylem"));
    assert_eq!(spelled(&cfg.mode), "full");

    // `AgentConfig::parse` (what `xylem-agent --config` runs) deserializes and validates. Its
    // one check that depends on the machine is that the worker cores exist: a node for this
    // configuration has CPUs 2 and 3, a small test machine may not. There, the only complaint
    // must be that, and the configuration with cores this machine has must pass.
    let highest = *cfg.workers.cores.iter().max().unwrap();
    match AgentConfig::parse(&text) {
        Ok(parsed) => {
            assert!(highest < online_cpus());
            assert_eq!(parsed, cfg);
        }
        Err(xylem_api::Error::Config(e)) if highest >= online_cpus() => {
            let missing = cfg
                .workers
                .cores
                .iter()
                .position(|&c| c >= online_cpus())
                .unwrap();
            assert_eq!(e.field, format!("workers.cores[{missing}]"), "{e}");
            assert!(e.why.contains("does not exist"), "{e}");
            let mut here = cfg.clone();
            here.workers.cores = vec![0; cfg.workers.cores.len()];
            here.validate()
                .unwrap_or_else(|e| panic!("with cores this machine has: {e}"));
            let again = serde_norway::to_string(&here).unwrap();
            AgentConfig::parse(&again)
                .unwrap_or_else(|e| panic!("re-serialized with cores this machine has: {e}"));
        }
        Err(e) => panic!("the ConfigMap's agent.yaml fails the agent's check: {e}"),
    }
}

#[test]
fn the_secret_is_a_key_file_the_agent_reads() {
    let docs = manifests();
    let secret = object(&docs, "Secret", "xylem-ipsec-keys");
    assert_eq!(str_at(secret, "type"), "Opaque");
    let text = str_at(secret, "stringData.keys");
    let keys = KeyFile::parse(text)
        .unwrap_or_else(|e| panic!("the Secret's key file does not parse: {e}"));
    assert_eq!(keys.keys().len(), 1);
    assert_eq!(keys.current().id, 3);
    assert_eq!(
        keys.current().material.expose().len(),
        20,
        "AES-128 key + salt"
    );
    assert!(
        text.contains("EXAMPLE"),
        "the published key must say it is an example to replace"
    );
}

/// The addresses of the conflist's `ipam.ranges`, checked to be inside `subnet`.
fn range_addresses(ipam: &Json, subnet: Ipv4Cidr) -> BTreeSet<Ipv4Addr> {
    let mut all = BTreeSet::new();
    let sets = ipam["ranges"].as_array().expect("ipam.ranges is a list");
    assert_eq!(sets.len(), 1, "one range set (IPv4)");
    for r in sets[0].as_array().expect("a range set is a list") {
        assert_eq!(r["subnet"].as_str(), Some(subnet.to_string().as_str()));
        let ip = |k: &str| -> u32 {
            let s = r[k]
                .as_str()
                .unwrap_or_else(|| panic!("{r}: no {k}: name the range's ends"));
            u32::from(s.parse::<Ipv4Addr>().unwrap())
        };
        let (start, end) = (ip("rangeStart"), ip("rangeEnd"));
        assert!(start <= end, "{r}");
        for a in start..=end {
            let a = Ipv4Addr::from(a);
            assert!(subnet.contains(a), "{a} outside {subnet}");
            assert!(all.insert(a), "{a} in two ranges");
        }
    }
    all
}

/// What the conflist must never hand out in `subnet`: the network and broadcast addresses, the
/// gateway, the host port and every address the lab gives its own pods.
fn excluded(subnet: Ipv4Cidr) -> BTreeSet<Ipv4Addr> {
    let mut out: BTreeSet<Ipv4Addr> = [0, LAB_GATEWAY, LAB_HOST_PORT, 255]
        .into_iter()
        .map(|n| subnet.nth(n))
        .collect();
    out.extend((LAB_POD_FIRST..=LAB_POD_LAST).map(|n| subnet.nth(n)));
    out
}

#[test]
fn the_conflist_is_valid_cni_and_leaves_out_the_gateway_host_port_and_lab_pods() {
    let docs = manifests();
    let cfg = agent_config(&docs);
    let text = read("docker/cni/10-xylem.conflist");

    // As JSON, independently of the plugin's parser.
    let json: Json = serde_json::from_str(&text).expect("the conflist is JSON");
    assert_eq!(
        json["cniVersion"], "1.0.0",
        "Debian's host-local speaks up to 1.0.0"
    );
    assert_eq!(json["name"], "xylem");
    let plugins = json["plugins"].as_array().expect("plugins");
    assert_eq!(plugins.len(), 1);
    assert_eq!(plugins[0]["type"], "xylem-cni");
    let ipam = &plugins[0]["ipam"];
    assert_eq!(ipam["type"], "host-local");
    assert_eq!(ipam["dataDir"], "/var/lib/cni/networks");
    let addrs = range_addresses(ipam, cfg.pod_cidr);
    let reserved = excluded(cfg.pod_cidr);
    let bad: Vec<&Ipv4Addr> = addrs.intersection(&reserved).collect();
    assert!(
        bad.is_empty(),
        "the range hands out reserved addresses: {bad:?}"
    );
    assert!(!addrs.contains(&cfg.gateway.ip));
    for p in &cfg.ports {
        assert!(!addrs.contains(&p.ip), "{} is port {}'s", p.ip, p.ifname);
    }
    // Room for every pod port the agent is sized for, and no more addresses than that.
    assert!(
        addrs.len() <= cfg.workers.spare_ports as usize,
        "{} addresses, {} spare ports",
        addrs.len(),
        cfg.workers.spare_ports
    );
    assert_eq!(addrs.len(), 12, ".2-.9 and .250-.253");

    // As the plugin reads it.
    let list = ConfList::parse(text.as_bytes())
        .unwrap_or_else(|e| panic!("xylem-cni refuses the conflist: {e}"));
    assert_eq!(list.cni_version, "1.0.0");
    assert_eq!(list.name, "xylem");
    assert_eq!(list.plugin_types, ["xylem-cni"]);
    assert_eq!(list.xylem.agent_socket, "/run/xylem/agent.sock");
    assert_eq!(list.xylem.ipam_type.as_deref(), Some("host-local"));
    assert_eq!(
        list.xylem.labels,
        BTreeMap::from([("xylem.io/network".to_string(), "xylem".to_string())])
    );
}

/// A directory removed on drop, also when the test panics.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("xylem-cni-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The reference host-local plugin (containernetworking-plugins, which docker/bootstrap.sh
/// installs), run with the conflist's own `ipam` block: it hands out exactly the addresses
/// the range names, then refuses. Run as the CNI spec's protocol drives it; host-local only
/// writes its lease files (in a temporary `dataDir`), so no root and no namespace is needed.
#[test]
fn host_local_hands_out_exactly_the_conflists_range() {
    let plugin = Path::new("/usr/lib/cni/host-local");
    assert!(
        plugin.is_file(),
        "{} is missing: install containernetworking-plugins (docker/bootstrap.sh does)",
        plugin.display()
    );
    let docs = manifests();
    let cfg = agent_config(&docs);
    let list: Json = serde_json::from_str(&read("docker/cni/10-xylem.conflist")).unwrap();
    let dir = TempDir::new("host-local");
    let mut ipam = list["plugins"][0]["ipam"].clone();
    ipam["dataDir"] = Json::String(dir.0.join("leases").to_string_lossy().into_owned());
    let conf = serde_json::json!({
        "cniVersion": list["cniVersion"],
        "name": list["name"],
        "ipam": ipam,
    });
    let run = |command: &str, id: &str| -> Json {
        let mut child = Command::new(plugin)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", "/var/run/netns/xylem-manifests-test")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Json::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "host-local {command}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    };
    let want = range_addresses(&list["plugins"][0]["ipam"], cfg.pod_cidr);
    let mut got = BTreeSet::new();
    for i in 0..want.len() {
        let r = run("ADD", &format!("c{i}"));
        assert_eq!(r["cniVersion"], "1.0.0", "{r}");
        let ip = r["ips"][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("ADD {i}: {r}"));
        let ip: Ipv4Addr = ip.split_once('/').unwrap().0.parse().unwrap();
        assert!(got.insert(ip), "{ip} handed out twice");
    }
    assert_eq!(got, want, "host-local's leases");
    let full = run("ADD", "one-too-many");
    assert!(
        full["code"].is_number() && full["msg"].as_str().is_some_and(|m| m.contains("no IP")),
        "a full range is refused: {full}"
    );
    for i in 0..want.len() {
        run("DEL", &format!("c{i}"));
    }
    let left: Vec<_> = std::fs::read_dir(dir.0.join("leases/xylem"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<Ipv4Addr>().is_ok())
        .collect();
    assert!(left.is_empty(), "leases left after DEL: {left:?}");
}
